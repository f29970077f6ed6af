"""Rotating a pre-norm transformer's residual stream, and finding a rotation back.

A norm without gain or bias commutes with more than a permutation: ``RMSNorm(x Q) = RMSNorm(x) Q``
for any orthogonal ``Q`` (it divides by the length, which ``Q`` keeps), and ``LayerNorm(x Q) =
LayerNorm(x) Q`` for an orthogonal ``Q`` that maps the all-ones direction to itself (the mean is
then kept too). Any norm becomes such a norm by folding its gain into its readers' columns (the
function stays), as SliceGPT does before it rotates; a norm's bias is a vector on the stream and
rotates with it. Then every
tensor the stream runs along is multiplied by ``Q`` on that axis (writer rows, embeddings, the
position table, reader columns) and the model computes what it computed. A consumer's bit reads
its column ``j``, which after a rotation mixes every channel: the thief loses nothing, the owner's
bits are gone in key order.

Undoing it: every writer slice of the suspect is the reference's rotated by one ``Q``, so the
orthogonal Procrustes solution on the stacked writer slices finds it (``rotation_to``); reader
columns are left out of the match, since the fold rescaled them. A rotation is a continuous
choice: a claimant could pick one that makes a public model spell any bits, so no union bound
charges it, and the bits of every layer a rotation put back are not counted (align.py).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .capture import call_model, frozen_eval, same_output
from .consumer_channels import norm_readers, scale_channels
from .norm import is_hand_written_rmsnorm, lever_weight
from .residual_stream import Stream, stream_channels, stream_tensors

__all__ = [
    "fold_stream_norms",
    "random_rotation",
    "rotatable",
    "rotate_stream",
    "rotation_keeps_function",
    "rotation_to",
]


def _fixes_ones(norm: nn.Module) -> bool | None:
    """True for a LayerNorm (its rotation must keep the mean), False for an RMSNorm, None else."""
    if isinstance(norm, nn.LayerNorm):
        return True
    if isinstance(norm, getattr(nn, "RMSNorm", ())) or is_hand_written_rmsnorm(norm):
        return False
    return None


def rotatable(model: nn.Module, stream: Stream) -> tuple[bool | None, str]:
    """(whether its rotation must keep the all-ones direction, "") or (None, why it cannot rotate)."""
    modules, parameters = dict(model.named_modules()), dict(model.named_parameters())
    kinds = {_fixes_ones(modules[path]) for path in stream.norms}
    if None in kinds:
        return None, "a stream norm is neither LayerNorm nor RMSNorm: no rotation is known to commute with it"
    if any(parameters[name].dim() == 1 for name in stream.free):
        return None, "a per-channel layer scale multiplies the writes: a rotation would not commute with it"
    return (True in kinds), ""


@torch.no_grad()
def fold_stream_norms(model: nn.Module, stream: Stream, example_input: Any) -> bool:
    """Fold every stream norm's gain into its readers' columns (its bias, divided by the gain, stays
    and rotates with the stream), so that each norm's gain is 1; False (nothing changed) where the
    output then differs: a norm's output reaches more than its readers."""
    modules = dict(model.named_modules())
    plan = []
    for path in stream.norms:
        norm, readers = modules[path], [modules[r] for r in norm_readers(model, example_input, path)]
        if not readers:
            return False
        if getattr(norm, "weight", None) is not None:
            plan.append((norm, readers, norm.weight.detach().clone()))
    tensors = [t for norm, readers, _ in plan for t in _fold_touches(norm, readers)]
    saved = [t.detach().clone() for t in tensors]
    with frozen_eval(model):
        before = call_model(model, example_input)
        for norm, readers, gain in plan:
            scale_channels(norm, readers, gain)  # gain 1, bias b / w, columns * w
        after = call_model(model, example_input)
    if same_output(before, after):
        return True
    for tensor, old in zip(tensors, saved):  # put back bit for bit
        tensor.copy_(old)
    return False


def _fold_touches(norm: nn.Module, readers: list[nn.Module]) -> list[Tensor]:
    """What :func:`scale_channels` writes: the norm's gain and bias, the readers' weights."""
    own = [t for t in (norm.weight, getattr(norm, "bias", None)) if isinstance(t, Tensor)]
    return own + [lever_weight(r) for r in readers]


def random_rotation(width: int, generator: torch.Generator, keep_ones: bool) -> Tensor:
    """A random orthogonal ``(width, width)`` matrix (float64); with ``keep_ones`` one that maps
    the all-ones direction to itself (what a LayerNorm's mean needs)."""
    if not keep_ones:
        q, r = torch.linalg.qr(torch.randn(width, width, generator=generator, dtype=torch.float64))
        return q * torch.sign(torch.diagonal(r))
    inner = random_rotation(width - 1, generator, keep_ones=False)
    basis, _ = torch.linalg.qr(
        torch.cat(
            [
                torch.ones(width, 1, dtype=torch.float64),
                torch.eye(width, dtype=torch.float64)[:, : width - 1],
            ],
            1,
        )
    )  # first column +-ones / sqrt(width), the rest its orthogonal complement
    block = torch.block_diag(torch.ones(1, 1, dtype=torch.float64), inner)
    return basis @ block @ basis.T


def _rotated_tensors(model: nn.Module, stream: Stream) -> list[tuple[str, Tensor, int]]:
    """Every tensor the stream runs along except the norms' gains (folded to 1, they stay; a
    norm's bias is added to the normalised stream and rotates with it)."""
    modules = dict(model.named_modules())
    own = {
        id(modules[path].weight)
        for path in stream.norms
        if getattr(modules[path], "weight", None) is not None
    }
    return [(what, t, axis) for what, t, axis in stream_tensors(model, stream) if id(t) not in own]


@torch.no_grad()
def rotate_stream(model: nn.Module, stream: Stream, rotation: Tensor) -> None:
    """The stream ``x`` becomes ``x @ rotation`` everywhere (folded norms assumed)."""
    for _, tensor, axis in _rotated_tensors(model, stream):
        moved = tensor.movedim(axis, -1)
        tensor.copy_((moved.double() @ rotation.to(tensor.device)).to(tensor.dtype).movedim(-1, axis))


@torch.no_grad()
def rotation_keeps_function(model: nn.Module, example_input: Any, stream: Stream, rotation: Tensor) -> bool:
    """Rotate the stream by ``rotation``; keep it and answer True where the output on
    ``example_input`` stays the same (to 1e-4 of its scale), else rotate it back and answer False."""
    with frozen_eval(model):
        before = call_model(model, example_input)
        rotate_stream(model, stream, rotation)
        after = call_model(model, example_input)
    if same_output(before, after):
        return True
    rotate_stream(model, stream, rotation.T)
    return False


def rotation_to(model: nn.Module, reference: nn.Module, stream: Stream) -> tuple[Tensor, float] | None:
    """The rotation ``O`` with ``model``'s writer slices ~ ``reference``'s rotated by ``O``
    (orthogonal Procrustes on the stacked slices), and the fit: the mean cosine of each channel's
    slice against the rotated reference's (1.0 for a rotated copy). Readers are left out: folds
    rescale their columns. None where the two do not have the same slices. A channel-major slice
    ``V`` becomes ``Q^T V`` when the stream becomes ``x Q``, so for a copy rotated by ``Q`` this
    answers ``Q^T``, and ``rotate_stream(model, stream, answer)`` puts the copy back."""
    ours = [v for what, v in stream_channels(model, stream) if not what.endswith(" columns")]
    theirs = [v for what, v in stream_channels(reference, stream) if not what.endswith(" columns")]
    if not ours or len(ours) != len(theirs) or any(a.shape != b.shape for a, b in zip(ours, theirs)):
        return None
    suspect, original = torch.cat(ours, dim=1), torch.cat(theirs, dim=1)  # (width, n) channel-major
    u, _, vh = torch.linalg.svd(suspect @ original.T)
    rotation = u @ vh  # suspect ~ rotation @ original
    fit = F.cosine_similarity(rotation @ original, suspect, dim=1).mean()
    return rotation, float(fit)
