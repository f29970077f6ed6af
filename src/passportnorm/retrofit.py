"""Retrofit: protecting a model that is already trained, in a short fine-tune.

``protect`` builds each branch with a random MLP and fresh statistics, and the signature bits
still have to be trained into the weights; on a trained model, at a fine-tuning learning rate,
neither happens in 2 epochs (measured on ResNet18 x0.25 / mnist5k: 10% passport-aware accuracy
and 97% of the bits; docs/RESULTS.md, "Retrofit"). So :func:`retrofit` first gives every bit its
sign without changing the model's function (:func:`embed_signature`: filters rescaled with their
channel's statistics, a sign flip included), then starts each branch as the trained norm
(:func:`warm_start`): statistics copied, and the MLP's output layer solved in closed form so that
``MLP(g) = weight`` and ``MLP(b) = bias``. Both branches then answer exactly as the trained
model, and the fine-tune (``schedule="interleave"``, one step per batch) has only the trigger
set and the margins left to train. The signs live in ``g`` (producer weights times passports),
not in the MLP, so the warm start fixes no bit and reveals nothing the key does not.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_leaves

from .aware_statistics import needs_aware_statistics
from .capture import call_model, frozen_eval
from .norm import producer_responses
from .protect import protected_layers

__all__ = [
    "describe_retrofit",
    "embed_signature",
    "move_filters",
    "rescale_filters",
    "retrofit",
    "warm_start",
]

LARGEST_SCALE = 16.0  # at most this factor on a filter: fp16 and per-tensor quantization keep their range
OUTPUT_TOLERANCE = 1e-4  # relative output change a rescaling may leave (float rounding; none in exact math)


def retrofit(model: nn.Module, example: Any) -> dict[str, Any]:
    """Prepare a freshly protected, already trained model for a short fine-tune: the signature
    embedded in its weights, then every branch started as its trained norm. Returns what the
    embedding did and the largest affine gap the warm start left."""
    embedded = embed_signature(model, example)
    gaps = warm_start(model)
    return embedded | {"largest_affine_gap": max(gaps.values(), default=0.0)}


def describe_retrofit(prepared: dict[str, Any]) -> str:
    """One line for the log: how the signature went in, and what it cost the function."""
    moved = prepared["moved_layers"]
    return (
        f"retrofit: signature embedded in the trained weights ({prepared['rescaled_layers']} layers "
        f"rescaled, {prepared['flipped_filters']} filters flipped, largest scale {prepared['largest_scale']:.3g}"
        + (f"; {moved} layers moved, largest change {prepared['largest_weight_change']:.3g}" if moved else "")
        + f"; output change {prepared['output_change']:.2g}), branches started as its norms"
    )


def embed_signature(
    model: nn.Module, example: Any, headroom: float = 2.0, largest_scale: float = LARGEST_SCALE
) -> dict[str, Any]:
    """Give every response ``g`` the sign its bit asks for, and room beyond zero, without changing
    what the model computes on ``example`` (up to rounding); returns what it did.

    Where the norm normalizes each channel on its own (BatchNorm, InstanceNorm), a filter and its
    channel's statistics can be scaled together at no cost to the function: ``W_c -> s W_c``
    (bias too), running mean ``s mu``, running variance ``s^2 (var + eps) - eps`` and, for a
    negative ``s``, the norm's weight negated. ``g_c`` scales with ``s``, so a wrong sign is
    flipped for free and a short response grown towards ``headroom`` margins, by at most
    ``largest_scale`` (a larger weight is harmless to the function but not to fp16 and
    per-tensor quantization); the fine-tune's sign loss takes what is still short. Other norms
    (GroupNorm, LayerNorm mix channels) get the least move along the response's gradient
    (:func:`move_filters`), which does cost accuracy. A layer whose rescaling changes the model's
    output on ``example`` (another consumer of the producer's output, say) is moved instead.
    """
    layers = protected_layers(model)
    reference = _outputs(model, example)
    scaled = {path: rescale_filters(branch, headroom, largest_scale) for path, branch in layers.items()}
    scaled = {path: scales for path, scales in scaled.items() if scales is not None}
    if scaled and not _same(_outputs(model, example), reference):
        scaled = _keep_function_preserving(model, example, reference, scaled)
    moved = {path: move_filters(branch, headroom) for path, branch in layers.items() if path not in scaled}
    return {
        "rescaled_layers": len(scaled),
        "moved_layers": len(moved),
        "largest_scale": max((float(s.abs().max()) for s in scaled.values()), default=1.0),
        "flipped_filters": sum(int((s < 0).sum()) for s in scaled.values()),
        "largest_weight_change": max(moved.values(), default=0.0),
        "output_change": _change(_outputs(model, example), reference),
    }


def rescale_filters(branch: Any, headroom: float, largest_scale: float) -> Tensor | None:
    """Scale each filter of ``branch``'s producer (and its channel's statistics) so that ``g_c`` has
    its bit's sign and, within ``largest_scale``, ``headroom`` margins; the scales, or None where the
    norm does not normalize channel by channel (nothing is changed then)."""
    norm, producer = branch.norm, branch.producer
    if not (needs_aware_statistics(norm) and getattr(norm, "weight", None) is not None):
        return None
    g = branch.passport_responses()[0].detach()
    wanted = (headroom * branch.margin / g.abs().clamp_min(1e-12)).clamp(1.0, largest_scale)
    scales = torch.where(branch.signature.to(g.dtype) * g > 0, wanted, -wanted)
    _scale_channels(norm, producer, scales)
    return scales


@torch.no_grad()
def _scale_channels(norm: nn.Module, producer: nn.Module, scales: Tensor) -> None:
    producer.weight.mul_(scales.reshape(-1, *([1] * (producer.weight.dim() - 1))))
    if producer.bias is not None:
        producer.bias.mul_(scales)
    norm.running_mean.mul_(scales)
    norm.running_var.add_(norm.eps).mul_(scales * scales).sub_(norm.eps)  # var + eps scales by s^2
    norm.weight.mul_(scales.sign())


def _keep_function_preserving(
    model: nn.Module, example: Any, reference: list[Tensor], scaled: dict[str, Tensor]
) -> dict[str, Tensor]:
    """Undo every rescaling, then redo them one at a time, keeping those that leave the output as it was."""
    layers = protected_layers(model)
    for path, scales in scaled.items():
        _scale_channels(layers[path].norm, layers[path].producer, 1.0 / scales)
    kept = {}
    for path, scales in scaled.items():
        _scale_channels(layers[path].norm, layers[path].producer, scales)
        if _same(_outputs(model, example), reference):
            kept[path] = scales
        else:
            _scale_channels(layers[path].norm, layers[path].producer, 1.0 / scales)
    return kept


def _outputs(model: nn.Module, example: Any) -> list[Tensor]:
    """The model's output tensors on ``example`` (eval, no grad): what a rescaling must not change."""
    with frozen_eval(model):
        output = call_model(model, example)
    return [leaf for leaf in tree_leaves(output) if isinstance(leaf, Tensor)]


def _change(outputs: list[Tensor], reference: list[Tensor]) -> float:
    """The largest difference between two outputs, relative to the reference's largest value."""
    return max(
        (float((a - b).abs().max() / b.abs().max().clamp_min(1e-12)) for a, b in zip(outputs, reference)),
        default=0.0,
    )


def _same(outputs: list[Tensor], reference: list[Tensor]) -> bool:
    return len(outputs) == len(reference) and _change(outputs, reference) <= OUTPUT_TOLERANCE


@torch.no_grad()
def move_filters(branch: Any, headroom: float) -> float:
    """Move the filters whose bit is wrong or short the least distance that puts ``g_c`` ``headroom``
    margins beyond zero; returns the change's norm relative to the weights'.

    ``g_c`` is linear in filter ``c`` alone, so the smallest change is a step along its gradient
    ``J_c``: ``W_c += (t_c - g_c) J_c / |J_c|^2``, the step the sign loss takes, sized to finish at
    once. Room beyond the margin matters: mirroring a wrong sign instead (the least move) lost 4
    of 1184 bits to the fine-tune that followed, on ResNet18 x0.25 / mnist5k.
    """
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
    return float(change.norm() / weight.norm().clamp_min(1e-12))


@torch.no_grad()
def warm_start(model: nn.Module) -> dict[str, float]:
    """Start every passport-aware branch of ``model`` as its trained norm; returns, per layer, the
    largest gap left between the branch's affine and the norm's (0 up to rounding where the MLP's
    hidden width is 2 or more). The solved output layer can carry a gain of ~100 (small ``g``,
    norm weights near 1); shared evenly by both layers, it no longer makes a from-scratch
    learning rate diverge (ResNet18 x0.25 on digits at 0.05 did)."""
    gaps = {}
    for path, branch in protected_layers(model).items():
        norm = branch.norm
        hidden = branch.mlp[1](branch.mlp[0](branch.passport_responses()))  # (2, H): g and b, hidden
        target = torch.stack([norm.weight, norm.bias])  # (2, C): what the released norm applies
        # minimum-norm W2 with hidden @ W2.T = target: the smallest output layer that reproduces the norm
        solution = torch.linalg.pinv(hidden.double()) @ target.double()
        branch.mlp[2].weight.copy_(solution.T.to(branch.mlp[2].weight.dtype))
        _balance(branch.mlp[0].weight, branch.mlp[2].weight)
        for name, value in branch.branch_norm.tensors().items():
            value.copy_(getattr(norm, name))
        gaps[path] = float((branch.mlp(branch.passport_responses()) - target).abs().max())
    return gaps


def _balance(first: Tensor, second: Tensor) -> None:
    """Move gain from the second bias-free layer to the first (LeakyReLU between is positively
    homogeneous, so the MLP's function is unchanged) until both have the same norm."""
    factor = (second.norm() / first.norm().clamp_min(1e-12)).sqrt()
    first.mul_(factor)
    second.div_(factor)
