"""Per-channel moves at a norm whose bits live in its consumer: gain folding and sign flips.

A norm's output channel ``j`` is ``w_j n_j + b_j``; its readers (the consumer and any other layer
that reads the same output: q, k and v of one block) see it only through their weight column
``j``. Dividing ``w_j`` and ``b_j`` by ``f_j`` and multiplying every reader's column ``j`` by
``f_j`` leaves the function unchanged (``f_j = w_j`` folds the gain into the readers). With
``f_j > 0`` the consumer's ``g_j`` keeps its sign; with ``f_j < 0`` it flips, and the norm's gain
turns negative: the trace the undoing looks for (align.py's rule for producer pairs, applied to
columns). A residual-stream permutation is not among these moves: it would have to rearrange every
writer of the stream at once, and the bits of any layer it rearranged could not count anyway
(docs/DESIGN.md section 3a).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .call_links import how_read
from .capture import call_model, capture, frozen_eval, same_output
from .norm import Layer, consumer_kinds, consumer_responses, lever_weight

__all__ = ["column_directions", "columns", "cosine", "norm_readers", "scale_channels", "scale_keeps_function"]


def norm_readers(model: nn.Module, example_input: Any, norm_path: str) -> list[str]:
    """The layers whose input is ``norm_path``'s output channel for channel (as it is, or with tokens
    rearranged, selected or averaged: each carries a per-channel scale through), in call order."""
    modules = dict(model.named_modules())
    candidates = [p for p, m in modules.items() if p and p != norm_path and isinstance(m, consumer_kinds())]
    record = capture(model, example_input, [norm_path, *candidates])
    out = record.outputs.get(norm_path)
    if out is None:
        return []
    seen = {p: record.inputs[p] for p in record.order if p in candidates and p in record.inputs}
    return [p for p, x in seen.items() if (x.shape == out.shape and torch.equal(x, out)) or how_read(out, x)]


def _along_columns(factor: Tensor, weight: Tensor) -> Tensor:
    return factor.to(weight).reshape(1, -1, *([1] * (weight.dim() - 2)))


@torch.no_grad()
def scale_channels(norm: Layer, readers: list[Layer], factor: Tensor) -> None:
    """Divide the norm's gain and bias by ``factor`` per channel and multiply each reader's input
    columns by it: the same function where the readers are all that read the norm."""
    norm.weight.div_(factor.to(norm.weight))
    if getattr(norm, "bias", None) is not None:
        norm.bias.div_(factor.to(norm.bias))
    for reader in readers:
        weight = lever_weight(reader)
        weight.mul_(_along_columns(factor, weight))


@torch.no_grad()
def scale_keeps_function(
    model: nn.Module, example_input: Any, norm: Layer, readers: list[Layer], factor: Tensor
) -> bool:
    """Apply :func:`scale_channels`; keep it and answer True where the output on ``example_input``
    stays the same (to 1e-4 of its scale), else undo it and answer False (a post-norm block's norm
    also feeds the residual sum; Gemma's ``1 + w`` gain does not divide)."""
    tensors = [norm.weight, getattr(norm, "bias", None), *(lever_weight(r) for r in readers)]
    saved = [t.detach().clone() if t is not None else None for t in tensors]
    with frozen_eval(model):
        before = call_model(model, example_input)
        scale_channels(norm, readers, factor)
        after = call_model(model, example_input)
        if same_output(before, after):
            return True
        for tensor, old in zip(tensors, saved):  # put back bit for bit
            if tensor is not None and old is not None:
                tensor.copy_(old)
    return False


def columns(consumer: Layer) -> Tensor:
    """``(C, ...)``: the consumer's weight column by column (the slices its ``g_j`` reads), float64 on CPU."""
    weight = lever_weight(consumer).detach()
    return weight.movedim(1, 0).reshape(weight.shape[1], -1).double().cpu()


def column_directions(consumer: Layer, passports: list[Tensor], channels: int) -> Tensor:
    """``(C, n, K)``: for each channel, the directions in its column that the passports read
    (``g_j = <W[:, j], d_j>``), from the gradient of the linear responses."""
    directions = []
    weight = lever_weight(consumer).detach().double().cpu().clone()
    probe = copy.deepcopy(consumer).cpu().double()
    for passport in passports:
        with torch.enable_grad():
            trial = weight.clone().requires_grad_(True)
            response = consumer_responses(probe, trial, passport.detach().double().cpu(), channels)
            (grad,) = torch.autograd.grad(response.sum(), trial)
        directions.append(grad.movedim(1, 0).reshape(channels, -1))
    return torch.stack(directions, dim=2)


def cosine(ours: Tensor, theirs: Tensor) -> Tensor:
    """Per channel: the cosine of two sets of columns."""
    return (F.normalize(ours, dim=1) * F.normalize(theirs, dim=1)).sum(dim=1)
