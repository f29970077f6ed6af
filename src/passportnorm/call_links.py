"""Links between layers seen in the real calls of one forward, where a graph trace does not reach.

A pre-norm transformer block computes ``x + f(norm(x))``: the norm reads the residual stream,
which no single layer writes, so it has no producer; its bits can live in its *consumer*, the
first Linear or self-attention that reads its output (norm.py). And a model torch.fx cannot trace
(Hugging Face ``transformers`` models, data-dependent control flow) still runs: a forward hook on
every candidate records what each layer received and returned (capture.py), and a link is
accepted only where those tensors show it, value for value:

- a norm's producer is the one producer whose output *is* the norm's input;
- a norm's consumer is the first layer, in call order after the norm, whose input is the
  norm's output as it is, with its tokens rearranged (Swin's windows), some tokens selected (a
  class token) or averaged over the tokens (a pooled head): each keeps the channel axis last
  and every channel whole, so the consumer's column ``j`` reads norm channel ``j`` alone.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import torch
from torch import Tensor, nn

from .capture import Capture
from .norm import SUPPORTED_CONSUMERS, SUPPORTED_PRODUCERS, lever_weight, reparametrized_weight_reason

__all__ = ["called_producer", "first_consumer", "how_read"]


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
    if seen.shape == out.shape and torch.equal(seen, out):
        return "as it is"
    channels = out.shape[-1]
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
    """A Linear with ``channels`` inputs, or a self-attention of that width with a fused q/k/v
    projection called on one input (q = k = v)."""
    if isinstance(module, nn.MultiheadAttention):
        return (
            module.embed_dim == channels
            and isinstance(module.in_proj_weight, Tensor)
            and record.one_input.get(path, False)
        )
    return (
        isinstance(module, SUPPORTED_CONSUMERS)
        and lever_weight(module).shape[1] == channels
        and reparametrized_weight_reason(module) is None
    )


def first_consumer(
    norm_path: str,
    channels: int,
    record: Capture,
    modules: Mapping[str, nn.Module],
    taken: Collection[str] = (),
) -> tuple[str, str] | None:
    """(path, how it reads) of the first consumer called after ``norm_path`` that reads its output,
    passing over the layers in ``taken`` (already another norm's lever)."""
    out = record.outputs.get(norm_path)
    if out is None or norm_path not in record.order:
        return None
    for path in record.order[record.order.index(norm_path) + 1 :]:
        module = modules[path]
        seen = record.inputs.get(path)
        if path in taken or seen is None or not _reads_channels(module, channels, record, path):
            continue
        how = how_read(out, seen)
        if how is not None:
            return path, how
    return None


def called_producer(norm_path: str, record: Capture, modules: Mapping[str, nn.Module]) -> str | None:
    """The one producer whose recorded output equals the norm's recorded input, or None."""
    seen = record.inputs.get(norm_path)
    if seen is None:
        return None
    found = [
        path
        for path in record.order
        if isinstance(modules[path], SUPPORTED_PRODUCERS)
        and (out := record.outputs.get(path)) is not None
        and out.shape == seen.shape
        and torch.equal(out, seen)
    ]
    return found[0] if len(found) == 1 else None
