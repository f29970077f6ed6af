"""Retrofit: protecting a model that is already trained, in a short fine-tune.

``protect`` builds each branch with a random MLP and fresh statistics, and the signature bits
still have to be trained into the weights; on a trained model, at a fine-tuning learning rate,
neither happens in 2 epochs (measured on ResNet18 x0.25 / mnist5k: 10% passport-aware accuracy
and 97% of the bits; docs/RESULTS.md, "Retrofit"). So :func:`retrofit` first gives every bit its
sign (:func:`embed_signature`: the least move of each filter that gives its response the sign
and some room; never a function-preserving flip, which would put the proof in the ancestor too),
then starts each branch as the trained norm
(:func:`warm_start`): statistics copied, and the MLP's output layer solved in closed form so that
``MLP(g) = weight`` and ``MLP(b) = bias``. The fine-tune (``schedule="interleave"``, one step per
batch) then only repairs what the moves cost the task and trains the trigger set. The signs live
in ``g`` (producer weights times passports), not in the MLP, so the warm start fixes no bit and
reveals nothing the key does not.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_leaves

from .capture import call_model, frozen_eval
from .norm import along, has_bias
from .protect import protected_layers

__all__ = [
    "describe_retrofit",
    "embed_signature",
    "move_filters",
    "retrofit",
    "warm_start",
]


def retrofit(model: nn.Module, example: Any) -> dict[str, Any]:
    """Prepare a freshly protected, already trained model for a short fine-tune: the signature
    embedded in its weights, then every branch started as its trained norm. Returns what the
    embedding did and the largest affine gap the warm start left."""
    embedded = embed_signature(model, example)
    gaps = warm_start(model)
    return embedded | {"largest_affine_gap": max(gaps.values(), default=0.0)}


def describe_retrofit(prepared: dict[str, Any]) -> str:
    """One line for the log: how the signature went in, and what it cost the function."""
    return (
        f"retrofit: signature embedded in the trained weights ({prepared['moved_layers']} layers moved "
        f"by at most {prepared['largest_weight_change']:.3g} of their norm; output change "
        f"{prepared['output_change']:.2g}), branches started as its norms"
    )


def embed_signature(model: nn.Module, example: Any, headroom: float = 2.0) -> dict[str, Any]:
    """Give every response ``g`` the sign its bit asks for, ``headroom`` margins beyond zero, by the
    least move of each filter along its gradient (:func:`move_filters`); returns what it did.

    Only moves, never a function-preserving change: a claim on a retrofitted model must rest on
    changes to the weights that no such transform can make, or the public model it started from
    would carry the proof too. Negating a wrong filter with its channel (free at BatchNorm) was the
    earlier recipe: verification's alignment undoes exactly those flips, so the ancestor and every
    stranger's fine-tune of it verified with the retrofit key (docs/SECURITY.md, "Retrofit"). The
    moves cost nothing measurable after the fine-tune (docs/RESULTS.md, "Retrofit"). Growing short
    responses by scaling filters up, also free, is left out for the same reason (and magnitude
    pruning then took bits from 40% of the weights removed instead of 80%).
    """
    layers = protected_layers(model)
    reference = _outputs(model, example)
    moved = {path: move_filters(branch, headroom) for path, branch in layers.items()}
    moved = {path: change for path, change in moved.items() if change > 0}
    return {
        "moved_layers": len(moved),
        "largest_weight_change": max(moved.values(), default=0.0),
        "output_change": _change(_outputs(model, example), reference),
    }


def _outputs(model: nn.Module, example: Any) -> list[Tensor]:
    """The model's output tensors on ``example`` (eval, no grad): what the moves change."""
    with frozen_eval(model):
        output = call_model(model, example)
    return [leaf for leaf in tree_leaves(output) if isinstance(leaf, Tensor)]


def _change(outputs: list[Tensor], reference: list[Tensor]) -> float:
    """The largest difference between two outputs, relative to the reference's largest value."""
    return max(
        (float((a - b).abs().max() / b.abs().max().clamp_min(1e-12)) for a, b in zip(outputs, reference)),
        default=0.0,
    )


@torch.no_grad()
def move_filters(branch: Any, headroom: float) -> float:
    """Move the filters whose bit is wrong or short the least distance that puts ``g_c`` ``headroom``
    margins beyond zero; returns the change's norm relative to the weights'.

    ``g_c`` is linear in filter ``c`` alone (a producer's row, a consumer's column: the slice of the
    lever's weight that reads or writes channel ``c``), so the smallest change is a step along its gradient
    ``J_c``: ``W_c += (t_c - g_c) J_c / |J_c|^2``, the step the sign loss takes, sized to finish at
    once. Room beyond the margin matters: stopping at the margin lost 4 of 1184 bits to the
    fine-tune that followed, on ResNet18 x0.25 / mnist5k. The move lies in the passport
    directions alone, which verification's alignment never matches on (align.py).
    """
    weight, dim = branch.lever_weight, branch.lever_channel_dim
    with torch.enable_grad():
        probe = weight.detach().clone().requires_grad_(True)
        g = branch.responses_with(probe, branch.passport_gamma)[0]
        (jacobian,) = torch.autograd.grad(g.sum(), probe)  # slice c: dg_c/dW_c (g_c reads filter c alone)
    g = g.detach()
    signature = branch.signature.to(g.dtype)
    least = branch.margin * headroom
    target = signature * g.abs().clamp_min(least)
    short = signature * g < least  # bits wrong, or right by less than the target
    rows = jacobian.movedim(dim, 0).reshape(len(g), -1)
    step = torch.where(short, (target - g) / rows.pow(2).sum(dim=1).clamp_min(1e-12), torch.zeros_like(g))
    change = along(step, weight.dim(), dim) * jacobian
    weight.add_(change)
    return float(change.norm() / weight.norm().clamp_min(1e-12))


@torch.no_grad()
def warm_start(model: nn.Module) -> dict[str, float]:
    """Start every passport-aware branch of ``model`` as its trained norm; returns, per layer, the
    largest gap left between the branch's affine and the norm's (0 up to rounding where the MLP's
    hidden width is 2 or more)."""
    gaps = {}
    for path, branch in protected_layers(model).items():
        norm = branch.norm
        bias = norm.bias if has_bias(norm) and norm.bias is not None else torch.zeros_like(norm.weight)
        gaps[path] = branch.fit_affine(norm.weight, bias)
        branch.branch_norm.copy_from(norm)
    return gaps
