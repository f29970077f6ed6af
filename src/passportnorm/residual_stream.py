"""The residual stream of a pre-norm transformer, found in one forward, and its channel permutation.

A pre-norm transformer computes ``x_0 = embed(input)``, ``x_(i+1) = x_i + W_i h_i``, and every
norm reads some ``x_i``. Reordering the stream's channels by one permutation everywhere at once
leaves the function unchanged: the rows (and biases) of every writer ``W_i`` and of the first
writers (token and position embeddings, a patch convolution, a class token, a layer scale), the
gain and bias of every norm reading the stream (LayerNorm and RMSNorm statistics are sums over
all channels, blind to their order), and the input columns of every layer reading a norm's
output. It moves what stream channel ``j`` carries in every block at once, so a verifier reading
a consumer's bit ``j`` from column ``j`` reads another channel's.

Everything is found from the real calls (capture.py), not from the model's code: the stream norms
are the norms paired with a consumer, of the width most of them share; between two of them, in
call order, the stream changes by the output of one Linear (``x + W h``, or ``x + s * W h`` with a
per-channel layer scale ``s``), or of two (a parallel block). A permutation is kept only where the
output on the example stays the same; a stream that is not one (post-norm blocks, Swin's stages
of several widths) or that something outside the weights pins (a fixed sin-cos position table
added to the tokens: SmallViT) is reported with the reason and left alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .capture import Capture, call_model, capture, frozen_eval, same_output
from .consumer_channels import norm_readers
from .norm import SUPPORTED_NORMS, consumer_kinds, lever_weight
from .pairing import find_pairs

__all__ = ["Stream", "find_stream", "permutation_keeps_function", "stream_channels", "stream_tensors"]

_OWN_WEIGHTS = (nn.Linear, nn.modules.conv._ConvNd, nn.Embedding, nn.MultiheadAttention)


@dataclass(frozen=True)
class Stream:
    """The layers one residual stream of ``width`` channels touches, by module path (``free``:
    parameter names with the stream on their last axis: positions, a class token, layer scales)."""

    width: int
    norms: tuple[str, ...]
    writers: tuple[str, ...]
    readers: tuple[str, ...]
    free: tuple[str, ...]


def _misfit(delta: Tensor, out: Tensor) -> float:
    """How far ``delta`` is from ``out`` times its best factor per channel (channels last): a write
    of ``out`` to the stream, through a layer scale or not, misses by rounding only."""
    flat_delta, flat_out = delta.reshape(-1, delta.shape[-1]), out.reshape(-1, out.shape[-1])
    scale = (flat_delta * flat_out).sum(0) / flat_out.pow(2).sum(0).clamp_min(1e-30)
    return float((flat_out * scale - flat_delta).abs().amax())


def _writes_between(
    before: Tensor, after: Tensor, candidates: list[str], record: Capture
) -> list[str] | None:
    """The one Linear (or the two, in a parallel block) whose output the stream gained from
    ``before`` to ``after``; [] when it did not change; None when no write explains it. The
    tolerance is the stream's rounding: a layer scale of 1e-5 (CaiT) writes far below the stream."""
    if before.shape != after.shape:
        return None
    delta = after - before
    if torch.equal(after, before):
        return []
    tolerance = 1e-5 * float(torch.maximum(before.abs().amax(), after.abs().amax()))
    outs = {p: record.outputs[p] for p in candidates if p in record.outputs}
    shaped = [p for p, out in outs.items() if out.shape == delta.shape]
    options = [[p] for p in shaped] + [[a, b] for i, a in enumerate(shaped) for b in shaped[i + 1 :]]
    fits = [(_misfit(delta, torch.stack([outs[p] for p in option]).sum(0)), option) for option in options]
    # a token-mixing MLP (Mixer) writes with tokens and channels swapped: the same weights for every
    # channel, so it commutes with any order of the channels and has nothing to permute
    fits += [
        (_misfit(delta, out.transpose(-1, -2)), [])
        for out in outs.values()
        if out.dim() >= 2 and out.transpose(-1, -2).shape == delta.shape
    ]
    best = min(fits, default=None, key=lambda fit: fit[0])
    return best[1] if best is not None and best[0] <= tolerance else None


def _linear_kinds() -> tuple[type[nn.Module], ...]:
    return tuple(k for k in consumer_kinds() if k is not nn.MultiheadAttention)


def _first_writers(
    modules: Mapping[str, nn.Module], record: Capture, first_norm: str, width: int
) -> list[str]:
    """What writes ``x_0``: embeddings of the stream's width and layers with that many outputs,
    called before the first stream norm."""
    found = []
    for path in record.order[: record.order.index(first_norm)]:
        module = modules[path]
        if isinstance(module, nn.Embedding) and module.embedding_dim == width:
            found.append(path)
        elif isinstance(module, nn.modules.conv._ConvNd) and module.out_channels == width:
            found.append(path)
        elif isinstance(module, _linear_kinds()) and lever_weight(module).shape[0] == width:
            found.append(path)
    return found


def _free_parameters(model: nn.Module, width: int, norms: list[str]) -> list[str]:
    """Parameters held by a module with no weight of its own kind (a ViT's position table and class
    token, a block's layer scale) whose last axis is the stream's width."""
    names = []
    for path, module in model.named_modules():
        if path in norms or isinstance(module, _OWN_WEIGHTS + SUPPORTED_NORMS + consumer_kinds()):
            continue
        for name, parameter in module.named_parameters(recurse=False):
            if parameter.dim() >= 1 and parameter.shape[-1] == width:
                names.append(f"{path}.{name}" if path else name)
    return names


def find_stream(model: nn.Module, example_input: Any) -> tuple[Stream | None, str]:
    """The model's residual stream and "", or None and why there is none to permute."""
    modules = dict(model.named_modules())
    consumers = [p for p in find_pairs(model, example_input).pairs if p.role in ("consumer", "writer")]
    if not consumers:
        return None, "no norm reads a residual stream (no norm is paired with a consumer)"
    widths = [p.channels for p in consumers]
    width = max(set(widths), key=widths.count)
    linears = [p for p, m in modules.items() if p and isinstance(m, _OWN_WEIGHTS + consumer_kinds())]
    record = capture(model, example_input, [p.norm for p in consumers] + linears)
    norms = [p for p in record.order if p in {c.norm for c in consumers if c.channels == width}]
    writers: list[str] = []
    for before, after in zip(norms, norms[1:]):
        between = record.order[record.order.index(before) + 1 : record.order.index(after)]
        written = _writes_between(
            record.inputs[before], record.inputs[after], [p for p in between if p in linears], record
        )
        if written is None:
            return None, (
                f"from {before!r} to {after!r} the stream changes by more than one Linear's write "
                "(a post-norm block, or a stage that changes the width)"
            )
        writers += written
    writers = _first_writers(modules, record, norms[0], width) + writers
    readers = sorted(
        {r for n in norms for r in norm_readers(model, example_input, n)}, key=record.order.index
    )
    stream = Stream(
        width, tuple(norms), tuple(writers), tuple(readers), tuple(_free_parameters(model, width, norms))
    )
    return stream, ""


def _rows_of(module: nn.Module) -> list[tuple[Tensor, int]]:
    """A writer's output channels: its weight's rows (a Conv1D stores them as columns), its
    bias, an embedding's columns."""
    if isinstance(module, nn.Embedding):
        return [(module.weight, 1)]
    if isinstance(module, nn.MultiheadAttention):
        module = module.out_proj
    weight = lever_weight(module)
    bias = getattr(module, "bias", None)
    return [(weight, 0)] + ([(bias, 0)] if isinstance(bias, Tensor) else [])


def stream_tensors(model: nn.Module, stream: Stream) -> list[tuple[str, Tensor, int]]:
    """(what, tensor, axis) for every tensor the stream's order runs along, each once (a head
    tied to the token embedding is one tensor)."""
    modules, parameters = dict(model.named_modules()), dict(model.named_parameters())
    found: list[tuple[str, Tensor, int]] = []
    for path in stream.writers:
        found += [(f"{path} rows", t, axis) for t, axis in _rows_of(modules[path])]
    for path in stream.norms:
        norm = modules[path]
        found += [
            (f"{path} {n}", t, 0)
            for n in ("weight", "bias")
            if isinstance(t := getattr(norm, n, None), Tensor)
        ]
    found += [(f"{path} columns", lever_weight(modules[path]), 1) for path in stream.readers]
    found += [(name, parameters[name], parameters[name].dim() - 1) for name in stream.free]
    seen, unique = set(), []
    for what, tensor, axis in found:
        place = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tensor.stride(axis))
        if place not in seen:
            seen.add(place)
            unique.append((what, tensor, axis))
    return unique


def stream_channels(model: nn.Module, stream: Stream) -> list[tuple[str, Tensor]]:
    """For matching: each multi-valued tensor as ``(width, n)`` slices, one per stream channel,
    float64 on CPU (a norm's gain says one number per channel, too little to match on)."""
    slices = []
    for what, tensor, axis in stream_tensors(model, stream):
        values = tensor.detach().movedim(axis, 0).reshape(stream.width, -1)
        if values.shape[1] >= 2:
            slices.append((what, values.double().cpu()))
    return slices


@torch.no_grad()
def _permute(model: nn.Module, stream: Stream, order: Tensor) -> None:
    """Channel ``j`` of the stream becomes the old channel ``order[j]``, everywhere."""
    for _, tensor, axis in stream_tensors(model, stream):
        tensor.copy_(tensor.index_select(axis, order.to(tensor.device)))


@torch.no_grad()
def permutation_keeps_function(model: nn.Module, example_input: Any, stream: Stream, order: Tensor) -> bool:
    """Permute the stream by ``order``; keep it and answer True where the output on
    ``example_input`` stays the same (to 1e-4 of its scale), else undo it and answer False."""
    with frozen_eval(model):
        before = call_model(model, example_input)
        _permute(model, stream, order)
        after = call_model(model, example_input)
        if same_output(before, after):
            return True
        _permute(model, stream, torch.argsort(order))
    return False
