"""Retrofit: protecting a model that is already trained, in a short fine-tune.

``protect`` builds each branch with a random MLP and fresh statistics, and the signature bits
still have to be trained into the weights; on a trained model, at a fine-tuning learning rate,
neither happens in 2 epochs (measured on ResNet18 x0.25 / mnist5k: 10% passport-aware accuracy
and 97% of the bits; docs/RESULTS.md, "Retrofit"). So :func:`retrofit` first moves each
producer's filters the least distance that sets every bit (:func:`embed_signature`), then starts
each branch as the trained norm (:func:`warm_start`): statistics copied, and the MLP's output
layer solved in closed form so that ``MLP(g) = weight`` and ``MLP(b) = bias``. The fine-tune
(``schedule="interleave"``, one step per batch) then only repairs what the move cost the task.
The signs live in ``g`` (producer weights times passports), not in the MLP, so the warm start
fixes no bit and reveals nothing the key does not.
"""

from __future__ import annotations

import torch
from torch import nn

from .norm import producer_responses
from .protect import protected_layers

__all__ = ["embed_signature", "retrofit", "warm_start"]


def retrofit(model: nn.Module) -> dict[str, float]:
    """Prepare a freshly protected, already trained model for a short fine-tune: the signature
    embedded in its weights, then every branch started as its trained norm. Returns the largest
    relative weight change and the largest affine gap left."""
    moved = embed_signature(model)
    gaps = warm_start(model)
    return {
        "largest_weight_change": max(moved.values(), default=0.0),
        "largest_affine_gap": max(gaps.values(), default=0.0),
    }


@torch.no_grad()
def embed_signature(model: nn.Module, headroom: float = 2.0) -> dict[str, float]:
    """Give every response ``g`` the sign its bit asks for, ``headroom`` times the sign loss's margin
    beyond zero, by the least change to the producer's filters; returns, per layer, the change's
    norm relative to the weights'.

    ``g_c`` is linear in filter ``c`` alone, so the smallest change is a step along its gradient
    ``J_c``: ``W_c += (t_c - g_c) J_c / |J_c|^2``, the step the sign loss takes, sized to finish at
    once; responses already beyond the target stay as they are. Room beyond the margin matters:
    mirroring a wrong sign instead (the least move) lost 4 of 1184 bits to the fine-tune that
    followed, on ResNet18 x0.25 / mnist5k. The fine-tune repairs what the move costs the task.
    """
    moved = {}
    for path, branch in protected_layers(model).items():
        weight = branch.producer.weight
        with torch.enable_grad():
            probe = weight.detach().clone().requires_grad_(True)
            g = producer_responses(branch.producer, probe, branch.passport_gamma, branch.channels)[0]
            (jacobian,) = torch.autograd.grad(g.sum(), probe)  # row c: dg_c/dW_c (g_c reads filter c alone)
        g = g.detach()
        signature = branch.signature.to(g.dtype)
        least = branch.margin * headroom
        target = signature * g.abs().clamp_min(least)
        short = signature * g < least  # bits wrong, or right by less than the target
        rows = jacobian.reshape(len(g), -1)
        step = torch.where(short, (target - g) / rows.pow(2).sum(dim=1).clamp_min(1e-12), torch.zeros_like(g))
        change = step.reshape(-1, *([1] * (weight.dim() - 1))) * jacobian
        weight.add_(change)
        moved[path] = float(change.norm() / weight.norm().clamp_min(1e-12))
    return moved


@torch.no_grad()
def warm_start(model: nn.Module) -> dict[str, float]:
    """Start every passport-aware branch of ``model`` as its trained norm; returns, per layer, the
    largest gap left between the branch's affine and the norm's (0 up to rounding where the MLP's
    hidden width is 2 or more)."""
    gaps = {}
    for path, branch in protected_layers(model).items():
        norm = branch.norm
        hidden = branch.mlp[1](branch.mlp[0](branch.passport_responses()))  # (2, H): g and b, hidden
        target = torch.stack([norm.weight, norm.bias])  # (2, C): what the released norm applies
        # minimum-norm W2 with hidden @ W2.T = target: the smallest output layer that reproduces the norm
        solution = torch.linalg.pinv(hidden.double()) @ target.double()
        branch.mlp[2].weight.copy_(solution.T.to(branch.mlp[2].weight.dtype))
        for name, value in branch.branch_norm.tensors().items():
            value.copy_(getattr(norm, name))
        gaps[path] = float((branch.mlp(branch.passport_responses()) - target).abs().max())
    return gaps
