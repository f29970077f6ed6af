"""Links between layers seen in the real calls of one forward, where a graph trace does not reach.

A pre-norm transformer block computes ``x + f(norm(x))``: the norm reads the residual stream,
which no single layer writes, so it has no producer; its bits can live in its *consumer*, the
first Linear or self-attention that reads its output (norm.py). And a model torch.fx cannot trace
(Hugging Face ``transformers`` models, data-dependent control flow) still runs: a forward hook on
every candidate records what each layer received and returned (capture.py), and a link is
accepted only where those tensors show it, value for value:

- a norm's producer is the one producer whose output *is* the norm's input (a Linear's tokens may
  be rearranged or cut on the way, as Swin V2 merges its attention windows back);
- a norm's consumer is the first layer (a Linear, a self-attention, a one-group convolution), in
  call order after the norm, whose input is the norm's output as it is, with its tokens
  rearranged (Swin's windows), some tokens selected (a class token) or averaged over the tokens
  (a pooled head): each keeps every channel whole, so the consumer's column ``j`` reads norm
  channel ``j`` alone;
- a norm with neither has a *writer*: the last Linear whose output, added to an earlier norm's
  input, is the norm's input (the residual stream's latest write);
- a Linear whose weight its parent passes to ``F.linear`` (torchvision's Swin) counts as called.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import torch
from torch import Tensor, nn

from .capture import Capture
from .norm import (
    SUPPORTED_PRODUCERS,
    consumer_conv_reason,
    consumer_kinds,
    lever_weight,
    reparametrized_weight_reason,
)

__all__ = ["called_producer", "first_consumer", "how_read", "stream_writer"]


def _rows(x: Tensor, channels: int) -> Tensor:
    return x.detach().reshape(-1, channels).cpu()


def _every_row_in(seen: Tensor, out: Tensor) -> bool:
    """Whether each row of ``seen`` (channels last) is, bit for bit, a row of ``out``."""
    channels = out.shape[-1]
    known = {row.numpy().tobytes() for row in _rows(out, channels)}
    return all(row.numpy().tobytes() in known for row in _rows(seen, channels))


def how_read(out: Tensor, seen: Tensor) -> str | None:
    """How a layer's input ``seen`` holds a norm's output ``out`` with the channels on the last axis
    of both, one to one; None when it does not (a mix of channels, another tensor)."""
    if out.dim() < 2 or seen.dim() < 1 or seen.shape[-1] != out.shape[-1] or seen.dtype != out.dtype:
        return None
    channels = out.shape[-1]
    if seen.numel() == out.numel() and torch.equal(seen.reshape(-1, channels), out.reshape(-1, channels)):
        return "as it is"  # or flattened: (B, 1, 1, C) read as (B, C)
    if seen.numel() == out.numel():
        ours, theirs = (_rows(x, channels).T.sort(dim=1).values for x in (out, seen))
        return "tokens rearranged" if torch.equal(ours, theirs) else None
    if seen.dim() >= 2 and seen.shape[0] == out.shape[0] and seen.numel() < out.numel():
        if _every_row_in(seen, out):
            return "tokens selected"
        if out.dim() >= 3 and seen.dim() == 2:  # tokens, or a (H, W) grid, pooled
            mean = out.reshape(out.shape[0], -1, channels).mean(dim=1)
            if torch.allclose(seen, mean, rtol=1e-4, atol=1e-6 * float(out.abs().amax())):
                return "mean over tokens"
    return None


def _reads_channels(module: nn.Module, channels: int, record: Capture, path: str) -> bool:
    """A Linear or a convolution with ``channels`` inputs, or a self-attention of that width with a
    fused q/k/v projection called on one input (q = k = v)."""
    if isinstance(module, nn.MultiheadAttention):
        return (
            module.embed_dim == channels
            and isinstance(module.in_proj_weight, Tensor)
            and record.one_input.get(path, False)
        )
    return (
        isinstance(module, consumer_kinds())
        and lever_weight(module).shape[1] == channels
        and reparametrized_weight_reason(module) is None
        and consumer_conv_reason(module) is None
    )


def _read_by(module: nn.Module, out: Tensor, seen: Tensor) -> str | None:
    """How ``module`` reads the norm output ``out`` (channels last) in its input ``seen``: a
    convolution reads its channels on axis 1, and only the whole map as it is."""
    if isinstance(module, nn.modules.conv._ConvNd):
        whole = seen.dim() == out.dim() and how_read(out, seen.movedim(1, -1)) == "as it is"
        return "as it is" if whole else None
    return how_read(out, seen)


def first_consumer(
    norm_path: str,
    channel_dim: int,
    record: Capture,
    modules: Mapping[str, nn.Module],
    taken: Collection[str] = (),
) -> tuple[str, str] | None:
    """(path, how it reads) of the first consumer called after ``norm_path`` that reads its output
    (channels on ``channel_dim``), passing over the layers in ``taken`` (already another norm's
    lever)."""
    out = record.outputs.get(norm_path)
    if out is None or norm_path not in record.order:
        return None
    out = out.movedim(channel_dim, -1)
    for path in record.order[record.order.index(norm_path) + 1 :]:
        module = modules[path]
        seen = record.inputs.get(path)
        if path in taken or seen is None or not _reads_channels(module, out.shape[-1], record, path):
            continue
        how = _read_by(module, out, seen)
        if how is not None:
            return path, how
    return None


def _producer_read(out: Tensor, seen: Tensor) -> str | None:
    """How a norm's input ``seen`` holds a Linear's output ``out`` token by token, channels last."""
    if out.dim() < 2 or seen.dim() < 2 or out.shape[-1] != seen.shape[-1] or out.dtype != seen.dtype:
        return None
    how = how_read(out, seen)
    if how in ("as it is", "tokens rearranged"):
        return how
    if seen.numel() < out.numel() and _every_row_in(seen, out):
        return "tokens selected"
    return None


def stream_writer(
    norm_path: str, record: Capture, modules: Mapping[str, nn.Module], taken: Collection[str] = ()
) -> str | None:
    """The last Linear called before ``norm_path`` whose output, added to the input or output of an
    earlier norm, gives this norm's input: ``x_i = x_(i-1) + W h`` (the residual stream of a pre- or
    post-norm block, drop-path and dropout being the identity in eval), or None. Its rows write
    channel ``j`` of what the norm reads, one to one (Mixer's token-mixing norm, whose reader mixes
    the tokens of every channel alike and so has no column per channel)."""
    seen = record.inputs.get(norm_path)
    if seen is None or norm_path not in record.order:
        return None
    before = record.order[: record.order.index(norm_path)]
    norms = [p for p in before if not isinstance(modules[p], SUPPORTED_PRODUCERS + consumer_kinds())]
    streams = [t for p in norms for t in (record.inputs.get(p), record.outputs.get(p)) if t is not None]
    for path in reversed(before):
        out = record.outputs.get(path)
        if (
            path in taken
            or not isinstance(modules[path], nn.Linear)
            or out is None
            or out.shape != seen.shape
        ):
            continue
        if reparametrized_weight_reason(modules[path]) is not None:
            continue
        rest, atol = seen - out, 1e-5 * float(seen.abs().amax())
        if any(s.shape == seen.shape and torch.allclose(rest, s, rtol=1e-4, atol=atol) for s in streams):
            return path
    return None


def called_producer(
    norm_path: str, record: Capture, modules: Mapping[str, nn.Module]
) -> tuple[str, str] | None:
    """(path, how) of the one producer whose recorded output is the norm's recorded input, as it is
    or (a Linear, channels last) with its tokens rearranged or some selected (Swin V2's attention
    output, windows merged back and their padding cut); None when there is not exactly one."""
    seen = record.inputs.get(norm_path)
    if seen is None:
        return None
    found = []
    for path in record.order:
        module, out = modules[path], record.outputs.get(path)
        if not isinstance(module, SUPPORTED_PRODUCERS) or out is None or out.numel() < seen.numel():
            continue
        how = _producer_read(out, seen) if isinstance(module, nn.Linear) else None
        if how is None and out.shape == seen.shape and torch.equal(out, seen):
            how = "as it is"
        if how is not None:
            found.append((path, how))
    return found[0] if len(found) == 1 else None
