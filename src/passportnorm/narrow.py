"""Undo structural obfuscation: bring a widened suspect back to the reference's widths.

A thief can add channels that change nothing (Yan et al., USENIX Security 2023; attacks/dummy.py):
channels the one consumer never reads (its weights on them are zero), and split copies (two
channels computing positively proportional outputs, the consumer's weights divided between
them). Where a suspect's producer has more output channels than the reference's, and its norm's
channels reach one consumer (channels.py), this removes exactly those two kinds and nothing else:

- a channel whose consumer weights are all zero, or whose norm outputs exactly zero (a filter
  and affine zeroed by fine-pruning; activations map 0 to 0), is dropped (layers are narrowed
  last to first, so
  a channel read only by the next layer's dummies is dropped once they are), never more than the
  surplus over the reference's width: a pruned model has unread channels of its own;
- two channels of a per-channel norm whose effective maps ``gamma * (W x + b - mean) / sigma +
  beta`` are positively proportional (``c > 0``; sign flips and rescaling leave the map as it is)
  are merged: the consumer's weights of the second, times ``c``, are added to the first's. This
  is exact for ``c = 1`` under any activation and for any ``c > 0`` under positively homogeneous
  ones (ReLU, pooling), which is where a split with ``c != 1`` preserves the function at all;
- a channel that received such merges and whose merged consumer weights then cancel (below 1e-3 of
  the largest weight merged in, since rescaling moves a copy's map by the norm's eps: a group of
  copies whose reads sum to zero, DeepEclipse's cancelling neurons, attacks/eclipse.py) is dropped
  like an unread one, within the same surplus.

Nothing here looks at the passports, so the choice cannot favour the owner's bits. Layers that
are still wider afterwards are left for align.py to refuse, with the counts in its message.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from .align import pairs_to_align
from .channels import (
    PER_CHANNEL_NORMS,
    Chain,
    chains_and_trace_error,
    consumer_columns,
    resize_module,
    set_consumer_columns,
)
from .norm import Layer

if TYPE_CHECKING:
    from .key import OwnerKey

__all__ = ["narrow_to_reference"]

_CANCELLED = (
    1e-3  # merged reads this small against their parts: a cancelling group (rescaling moves a copy by eps)
)
_SAME_MAP = 1.0 - 1e-6  # cosine of two effective maps that are one map (float64 rounding allows no less)


@torch.no_grad()
def narrow_to_reference(
    suspect: nn.Module, reference: nn.Module, key: OwnerKey, example_input: Any = None
) -> tuple[nn.Module, dict[str, dict[str, Any]]]:
    """``suspect`` (a copy, when anything changes) with dummy channels dropped and split ones merged
    where it is wider than ``reference``, and per norm what was done; the function is unchanged."""
    modules, ref_modules = dict(suspect.named_modules()), dict(reference.named_modules())
    wider = []
    for pair in pairs_to_align(reference, key, example_input):
        ours, theirs = modules.get(pair.producer), ref_modules.get(pair.producer)
        if ours is not None and theirs is not None and ours.weight.shape[0] > theirs.weight.shape[0]:
            wider.append(replace(pair, channels=int(ours.weight.shape[0])))
    if not wider:
        return suspect, {}
    model = copy.deepcopy(suspect).eval()
    modules = dict(model.named_modules())
    chains, trace_error = chains_and_trace_error(model, wider)
    by_norm = {chain.pair.norm: chain for chain in chains}
    report = {}
    for pair in reversed(
        wider
    ):  # last layer first: a dummy read only by later dummies is dead once they are gone
        if pair.norm not in by_norm:
            why = trace_error or "its channels do not reach exactly one consumer"
            report[pair.norm] = {
                "from": pair.channels,
                "to": pair.channels,
                "dummy": 0,
                "merged": 0,
                "not_narrowed": why,
            }
            continue
        report[pair.norm] = _narrow(
            modules, by_norm[pair.norm], int(ref_modules[pair.producer].weight.shape[0])
        )
    return model, dict(reversed(report.items()))


def _narrow(modules: dict[str, Layer], chain: Chain, target: int) -> dict[str, Any]:
    """Merge split channels, then drop channels no consumer reads, never below ``target`` channels."""
    producer, norm, consumer = modules[chain.pair.producer], modules[chain.pair.norm], modules[chain.consumer]
    channels = chain.pair.channels
    columns = consumer_columns(consumer, chain, channels).double().clone()
    reach = columns.abs().amax(dim=(0, 2))
    dead = reach <= 1e-12 * reach.max().clamp_min(1e-300)
    keep, merged, surplus = torch.ones(channels, dtype=torch.bool), 0, channels - target
    parts, received = reach.clone(), torch.zeros(channels, dtype=torch.bool)  # what merges brought in
    maps = _effective_maps(producer, norm)
    if maps is not None:
        dead |= maps.abs().amax(dim=1) == 0  # the norm outputs exactly zero whatever the input
        unit = F.normalize(maps, dim=1)
        same = (unit @ unit.T) >= _SAME_MAP
        constant = (
            maps[:, :-1].abs().amax(dim=1) == 0
        )  # a zeroed filter: equal up to scale is no evidence of a split
        candidates = ~dead & ~constant
        for j in candidates.nonzero().flatten().tolist():
            earlier = (same[j, :j] & keep[:j] & candidates[:j]).nonzero().flatten()
            if earlier.numel() and merged < surplus:
                i = int(earlier[0])
                ratio = maps[j].norm() / maps[i].norm()
                columns[:, i] += columns[:, j] * ratio
                parts[i], received[i] = torch.maximum(parts[i], reach[j] * ratio), True
                keep[j] = False
                merged += 1
    cancelled = received & keep & ~dead & (columns.abs().amax(dim=(0, 2)) <= _CANCELLED * parts)
    dead |= cancelled
    # which unread channels were the owner's cannot be told from the function: the surplus goes, in order
    unread = dead.nonzero().flatten()[: surplus - merged]
    keep[unread] = False
    dummies = int(unread.numel())
    index = keep.nonzero().flatten()
    resize_module(producer, {n: t.detach()[index] for n, t in producer.named_parameters(recurse=False)})
    resize_module(
        norm,
        {
            n: t.detach()[index]
            for n, t in [*norm.named_parameters(recurse=False), *norm.named_buffers(recurse=False)]
            if t.dim() == 1
        },
    )
    set_consumer_columns(consumer, columns[:, index].to(consumer.weight.dtype), chain.flattened)
    cancelled_dropped = int(cancelled[unread].sum())
    return {
        "from": channels,
        "to": int(index.numel()),
        "dummy": dummies - cancelled_dropped,
        "merged": merged,
        "cancelled": cancelled_dropped,
    }


def _effective_maps(producer: Layer, norm: Layer) -> torch.Tensor | None:
    """Each channel's ``gamma * (W x + b - mean) / sigma + beta`` as one row ``[W_eff, b_eff]``;
    None where the norm's statistics are not per channel and fixed (then nothing is merged)."""
    mean, var = getattr(norm, "running_mean", None), getattr(norm, "running_var", None)
    if not isinstance(norm, PER_CHANNEL_NORMS) or mean is None or var is None:
        return None
    weight = producer.weight.detach().double().reshape(producer.weight.shape[0], -1)
    bias = (
        producer.bias.detach().double()
        if producer.bias is not None
        else torch.zeros(weight.shape[0]).double()
    )
    sigma = (var.double() + norm.eps).sqrt()
    gamma = norm.weight.detach().double() if norm.weight is not None else torch.ones_like(sigma)
    beta = norm.bias.detach().double() if norm.bias is not None else torch.zeros_like(sigma)
    scale = gamma / sigma
    return torch.cat([weight * scale[:, None], (beta + scale * (bias - mean.double()))[:, None]], dim=1)
