"""Align a suspect model's channels to the owner's released model before reading bits.

Permuting, sign-flipping or rescaling channels leaves a network's function unchanged but moves
what channel i of a producer computes, so a verifier reading bit i from channel i reads noise.
Walking the key's layers in forward order, each suspect producer's output channels are matched
to the reference's by a Hungarian assignment on the absolute cosine similarity of their filters
(over input channels already aligned upstream); a channel is negated back where its filter points
the other way and its norm's gain is negative (the trace a free flip leaves, see
``_undone_flips``), and the scale comes from the filters' norms. The inverse transform is then
applied exactly as the obfuscation would have been: producer rows, the norm's parameters and
statistics, and the one consumer's input channels, so the aligned model computes what the
suspect computes.

Soundness: a signature bit is the sign of ``g_i = <W_i, d_i>``, one linear functional of filter
``i`` fixed by the key's passport. If the matching looked at that direction, it would pick for
each reference channel the suspect filter (and sign) that agrees with the owner's bit, and an
independent model would "match" far beyond chance (86.8% of 1184 bits in an issue-15 run).
So every similarity here is computed on the filters with the passport directions projected out:
the choice never sees the coordinate the bits are read from. And the aligned model is used only
when the match is one that real copies reach (``VerdictRule.min_alignment_confidence``; the
measured separation is in docs/SECURITY.md); otherwise the suspect is read as it stands.

A permutation, unlike a flip, leaves no trace of who made it: a claimant can permute a public
model's channels so that its responses spell the claimant's bits, and aligning the public model
to that "release" then reads them (``attack spell``). So the layers whose producer's rows or
input columns the alignment permuted are reported in ``rearranged`` and their bits are not
counted (verify.py): the claim rests on the layers no permutation touched. (Charging the orders
instead would change nothing there: a layer of n channels carries n bits and log2(n!) > n for
n >= 4.) A pre-norm transformer's residual stream is one order of width D under every norm's
bits at once: those layers are reported in ``stream_rearranged`` and counted, with the
signature's p-value charged D! (``stream_search_log2``), the union bound over every order a
claimant could have chosen (DESIGN.md 3b).
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from .channels import PER_CHANNEL_NORMS, chains_and_trace_error, permute_consumer_inputs
from .consumer_channels import column_directions, columns, cosine, norm_readers, scale_keeps_function
from .device import model_device
from .errors import OwnerKeyError
from .head_mixing import find_heads, inverse, mixing_keeps_function, mixing_to
from .norm import Layer, along, producer_responses
from .pairing import Pair, find_pairs
from .residual_stream import Stream, find_stream, permutation_keeps_function, stream_channels
from .stream_rotation import rotation_keeps_function, rotation_to

if TYPE_CHECKING:
    from .key import OwnerKey

__all__ = ["align_to_reference", "pairs_to_align", "passport_directions", "without_directions"]

# a stream order matched this poorly is tried as a rotation too (a permuted copy matches at 1.00)
ROTATION_BELOW = 0.9
# heads whose k rows and output columns match the reference's this poorly are tried as mixed, and a
# mixing found is undone only where it fits above UNMIX_ABOVE (mixed copy 1.00, independent about 0.01)
MIXED_BELOW = 0.9
UNMIX_ABOVE = 0.5


def _rows(weight: torch.Tensor) -> torch.Tensor:
    return weight.detach().reshape(weight.shape[0], -1).double().cpu()


def passport_directions(producer: Layer, passports: list[torch.Tensor], channels: int) -> torch.Tensor:
    """``(C, n, P)``: for each output channel, the filter directions the passports read (``g_i = <W_i,
    d_i>``)."""
    probe = copy.deepcopy(producer).cpu().double()
    directions = []
    with torch.enable_grad():  # g is linear in W: its gradient row by row is the direction d_i
        weight = producer.weight.detach().double().cpu().clone().requires_grad_(True)
        for passport in passports:
            response = producer_responses(probe, weight, passport.detach().double().cpu(), channels)
            (grad,) = torch.autograd.grad(response.sum(), weight)
            directions.append(grad.reshape(channels, -1))
    return torch.stack(directions, dim=2)


def without_directions(rows: torch.Tensor, directions: torch.Tensor | None) -> torch.Tensor:
    """Each row with its passport directions projected out: what is left carries no signature bit."""
    if directions is None:
        return rows
    basis, _ = torch.linalg.qr(directions)  # (C, n, P), orthonormal columns per channel
    return rows - torch.einsum("cnp,cp->cn", basis, torch.einsum("cnp,cn->cp", basis, rows))


def pairs_to_align(reference: nn.Module, key: OwnerKey, example_input: Any = None) -> list[Pair]:
    """Every producer/norm pair of the reference when an example input lets us find them (an
    obfuscator may scramble unprotected layers too), else the key's producer layers. Only producer
    pairs: their output channels are what a permutation, flip or rescale moves; a consumer's norm
    reads a residual stream no single pair owns (aligned as a whole, ``_align_stream``)."""
    keyed = [k for k in key.layers if k.role == "producer"]
    pairs = [Pair(k.norm, k.producer, k.norm_type, k.producer_type, k.channels) for k in keyed]
    if example_input is not None:
        found = find_pairs(reference, example_input.to(model_device(reference))).producer_pairs
        if {p.norm for p in pairs} <= {p.norm for p in found}:
            pairs = found
    return pairs


def _undone_flips(matched: torch.Tensor, norm: Layer, order: torch.Tensor) -> torch.Tensor:
    """Per reference channel, -1 where the alignment negates the matched suspect channel back: only
    where the filters point opposite ways *and* the suspect's norm gain is negative.

    A free sign flip at a per-channel norm must negate the norm's gain with the filter, so a flip
    leaves a negative gain behind, and trained gains start at 1 and stay positive in practice
    (docs/SECURITY.md, threat-model table: the owner's obfuscated copies read every counted bit).
    Undoing every opposite-pointing
    filter instead would be symmetric: a claimant could flip a public model's filters to spell
    their own bits and the alignment would flip the public model to match (issue 33). This way a
    thief's flips are undone and a claimant's flips of someone else's model are not."""
    weight = getattr(norm, "weight", None)
    if weight is None:  # no gain to carry a flip: negating a filter would change the function
        return torch.ones_like(matched)
    negative_gain = weight.detach().double().cpu()[order.cpu()] < 0
    return torch.where((matched < 0) & negative_gain, -1.0, 1.0)


def _align_consumer_channels(
    model: nn.Module, reference: nn.Module, key: OwnerKey, example_input: Any, report: dict[str, Any]
) -> None:
    """Undo gain folds and flips at the key's consumer layers (consumer_channels.py): each channel's
    column is matched to the reference's with the passport directions projected out, rescaled back,
    and negated back only where it points away *and* the norm's gain is negative (the flip's
    trace, as for producers). Without an example input the norm's other readers are unknown, so
    the columns are left as they are (``report["consumers_left"]``)."""
    modules, ref_modules = dict(model.named_modules()), dict(reference.named_modules())
    report.setdefault("consumers_left", [])
    for layer in (k for k in key.layers if k.role == "consumer"):
        if example_input is None or layer.producer not in modules or layer.producer not in ref_modules:
            report["consumers_left"].append(layer.norm)
            continue
        parts = key.layer_tensors(layer.norm)
        passports = [parts["passport_gamma"], parts["passport_beta"]]
        directions = column_directions(ref_modules[layer.producer], passports, layer.channels)
        ours, theirs = columns(modules[layer.producer]), columns(ref_modules[layer.producer])
        if ours.shape != theirs.shape or ours.shape[1] <= directions.shape[2]:
            report["consumers_left"].append(layer.norm)
            continue
        matched = cosine(without_directions(ours, directions), without_directions(theirs, directions))
        norm = modules[layer.norm]
        sign = _undone_flips(matched, norm, torch.arange(layer.channels))
        scale = ours.norm(dim=1) / theirs.norm(dim=1).clamp_min(1e-12)
        example = example_input.to(model_device(model))
        readers = [modules[p] for p in norm_readers(model, example, layer.norm)]
        factor = (sign / scale).to(model_device(model))
        if modules[layer.producer] not in readers or not scale_keeps_function(
            model, example, norm, readers, factor
        ):
            report["consumers_left"].append(layer.norm)
            continue
        report["flipped"] += int((sign < 0).sum())
        report["confidence"][layer.norm] = float(matched.abs().mean())


def _best_order(similarity: torch.Tensor) -> torch.Tensor:
    """The Hungarian assignment on ``similarity`` (suspect channel, reference channel), as the
    order in which reference channel ``j`` takes suspect channel ``order[j]``."""
    rows, cols = linear_sum_assignment(-similarity.numpy())
    order = torch.empty(similarity.shape[1], dtype=torch.long)
    order[torch.as_tensor(cols)] = torch.as_tensor(rows)
    return order


def _align_stream(
    model: nn.Module, reference: nn.Module, example_input: Any, report: dict[str, Any]
) -> set[str]:
    """Undo a residual-stream permutation (residual_stream.py): stream channels are matched to the
    reference's by a Hungarian assignment on the mean absolute cosine of every slice the stream
    runs along (writer rows, embedding columns, reader columns: a fold or flip of a reader's
    column changes neither), and the suspect is permuted back where that keeps its function.
    Answers the readers and writers it rearranged: their bits count only after a charge of
    log2(width!) bits, the orders it chose among (``stream_search_log2``; DESIGN.md 3b)."""
    if example_input is None:
        return set()
    stream, _ = find_stream(reference, example_input.to(model_device(reference)))
    if stream is None or any(path not in dict(model.named_modules()) for path in stream.readers):
        return set()
    ours, theirs = stream_channels(model, stream), stream_channels(reference, stream)
    if not ours or any(a.shape != b.shape for (_, a), (_, b) in zip(ours, theirs)):
        return set()
    attention = {path for heads in find_heads(reference) for path in (heads.lever, heads.out)}
    order, confidence = max(
        (_stream_order(ours, theirs, skip) for skip in (set(), attention)),
        key=lambda found: found[1],
    )
    report["confidence"]["residual stream"] = confidence
    if torch.equal(order, torch.arange(stream.width)):
        return set()
    example = example_input.to(model_device(model))
    if confidence < ROTATION_BELOW and _rotated_back(model, reference, stream, example, confidence, report):
        return set()
    if not permutation_keeps_function(model, example, stream, order.to(model_device(model))):
        return set()
    report["permuted"] += 1
    report["stream_permuted"] = stream.width
    report["stream_search_log2"] = math.lgamma(stream.width + 1) / math.log(2)
    return set(stream.readers) | set(stream.writers)


def _stream_order(
    ours: list[tuple[str, torch.Tensor]], theirs: list[tuple[str, torch.Tensor]], skip: set[str]
) -> tuple[torch.Tensor, float]:
    """The stream order on the mean absolute cosine of the slices not written or read by a path
    in ``skip`` (a mixing of heads turns the attention's: head_mixing.py), and its confidence."""
    cosines = [
        (F.normalize(a, dim=1) @ F.normalize(b, dim=1).T).abs()
        for (what, a), (_, b) in zip(ours, theirs)
        if what.rsplit(" ", 1)[0] not in skip
    ]
    if not cosines:
        return torch.arange(ours[0][1].shape[0]), 0.0
    similarity = torch.stack(cosines).mean(dim=0)  # (suspect channel, reference channel)
    order = _best_order(similarity)
    return order, float(similarity[order, torch.arange(similarity.shape[1])].mean())


def _rotated_back(
    model: nn.Module, reference: nn.Module, stream: Stream, example: Any, than: float, report: dict[str, Any]
) -> bool:
    """Undo a rotation of the stream (stream_rotation.py) where it fits the writers better than any
    order does (``than``) and keeps the function. Its layers join ``rearranged``: a rotation is a
    continuous choice, so no bit it put back can count (``report["rotated_levers"]``)."""
    found = rotation_to(model, reference, stream)
    if found is None or found[1] <= than:
        return False
    rotation, fit = found
    if not rotation_keeps_function(model, example, stream, rotation):
        return False
    report["confidence"]["residual stream"] = fit
    report["stream_rotated"] = stream.width
    report["rotated_levers"] = sorted(set(stream.readers) | set(stream.writers))
    return True


def _unmix_heads(model: nn.Module, reference: nn.Module, example_input: Any, report: dict[str, Any]) -> None:
    """Undo a mixing of attention heads (head_mixing.py) where no mixing fits worse than
    ``MIXED_BELOW`` and the mixing found fits better than ``UNMIX_ABOVE`` and keeps the function.
    Those levers join ``rearranged``: a mixing is a continuous choice, so no bit it put back can
    count (``report["unmixed_levers"]``)."""
    if example_input is None:
        return
    example = example_input.to(model_device(model))
    for heads in find_heads(reference):
        found = mixing_to(model, reference, heads)
        if (
            found is None
            or found.unmixed_fit >= MIXED_BELOW
            or found.fit <= max(UNMIX_ABOVE, found.unmixed_fit)
        ):
            continue
        if mixing_keeps_function(model, example, heads, inverse(found.mixing)):
            report["confidence"][f"{heads.lever} heads"] = found.fit
            report.setdefault("unmixed_levers", []).append(heads.lever)


def _take_reference_bias(producer: Layer, reference_producer: Layer, norm: Layer) -> None:
    """A producer's bias is no evidence, and a norm's running mean absorbs any change of it: the
    aligned copy takes the reference's bias and its norm's mean moves by as much, which computes
    the same. Folding a norm into its producer (obfuscate.fold_norm) moves the norm's shift into
    that bias, where the passport-aware forward (the key's statistics) would otherwise read it."""
    mean = getattr(norm, "running_mean", None)
    if producer.bias is None or reference_producer.bias is None or mean is None:
        return
    if not isinstance(norm, PER_CHANNEL_NORMS):
        return
    delta = (reference_producer.bias - producer.bias).to(mean.dtype)
    producer.bias.copy_(reference_producer.bias)
    mean.add_(delta)


@torch.no_grad()
def align_to_reference(
    suspect: nn.Module,
    reference: nn.Module,
    key: OwnerKey,
    example_input: Any = None,
    exclude_passport_directions: bool = True,
) -> tuple[nn.Module, dict[str, Any]]:
    """A copy of ``suspect`` whose channels line up with ``reference``'s, and per-layer match
    confidence (mean absolute cosine of the matched filters outside the passport directions,
    1.0 = identical; ``lowest_confidence`` is the smallest over layers).

    With ``example_input`` every producer/norm pair of the reference is aligned, protected or not
    (an obfuscator may also scramble the unprotected layers that feed protected ones); without
    it, the key's layers only. ``exclude_passport_directions=False`` matches on whole filters and
    negates every opposite-pointing one, the unsound matching of earlier versions (kept so
    benchmarks can show what it did)."""
    model = copy.deepcopy(suspect).eval()
    modules, ref_modules = dict(model.named_modules()), dict(reference.named_modules())
    pairs = pairs_to_align(reference, key, example_input)
    for pair in pairs:
        for path in (pair.norm, pair.producer):
            if path not in modules or path not in ref_modules:
                raise OwnerKeyError(
                    f"cannot align: module {path!r} is missing from the suspect or the reference"
                )
    found_chains, trace_error = chains_and_trace_error(model, pairs)
    chains = {chain.pair.norm: chain for chain in found_chains}
    keyed = {layer.norm for layer in key.layers}
    report: dict[str, Any] = {
        "confidence": {},
        "permuted": 0,
        "flipped": 0,
        "trace_error": trace_error,
        "passport_directions_excluded": exclude_passport_directions,
        "too_narrow": [],
    }
    rows_moved, inputs_moved = set(), set()
    for pair in pairs:
        producer, norm = modules[pair.producer], modules[pair.norm]
        ours, theirs = _rows(producer.weight), _rows(ref_modules[pair.producer].weight)
        if ours.shape != theirs.shape:
            raise OwnerKeyError(
                f"cannot align {pair.producer!r}: the suspect's weights are {tuple(ours.shape)}, the "
                f"reference's {tuple(theirs.shape)} (after removing the channels narrow.py can prove "
                "function-free or split); the reference must be the owner's release of this model"
            )
        directions = None
        if pair.norm in keyed and exclude_passport_directions:
            parts = key.layer_tensors(pair.norm)
            directions = passport_directions(
                ref_modules[pair.producer], [parts["passport_gamma"], parts["passport_beta"]], pair.channels
            )
            if ours.shape[1] <= directions.shape[2]:  # nothing outside the passport directions to match on
                report["too_narrow"].append(pair.norm)
                continue
        cosine = (
            F.normalize(without_directions(ours, directions), dim=1)
            @ F.normalize(without_directions(theirs, directions), dim=1).T
        )  # (suspect channel, reference channel)
        if pair.norm in chains:
            order = _best_order(cosine.abs())
        else:
            order = torch.arange(pair.channels)
        matched = cosine[order, torch.arange(pair.channels)]
        per_channel = isinstance(norm, PER_CHANNEL_NORMS)
        if not per_channel:
            sign = torch.ones(pair.channels, dtype=torch.float64)
        elif exclude_passport_directions:
            sign = _undone_flips(matched, norm, order)
        else:  # the unsound matching of earlier versions: every opposite-pointing filter negated
            sign = torch.where(matched < 0, -1.0, 1.0)
        scale = (
            (ours[order].norm(dim=1) / theirs.norm(dim=1).clamp_min(1e-12))
            if per_channel
            else torch.ones_like(sign)
        )
        device = producer.weight.device
        order, sign, scale = order.to(device), sign.to(device), scale.to(device)
        factor = (sign / scale).to(producer.weight.dtype)
        producer.weight.copy_(producer.weight[order] * along(factor, producer.weight.dim()))
        if producer.bias is not None:
            producer.bias.copy_(producer.bias[order] * factor)
        if norm.weight is not None:
            norm.weight.copy_(norm.weight[order] * sign.to(norm.weight.dtype))
            norm.bias.copy_(norm.bias[order])
        if getattr(norm, "running_mean", None) is not None:
            norm.running_mean.copy_(norm.running_mean[order] * factor.to(norm.running_mean.dtype))
            norm.running_var.copy_(norm.running_var[order] / scale.pow(2).to(norm.running_var.dtype))
        _take_reference_bias(producer, ref_modules[pair.producer], norm)
        if pair.norm in chains and not torch.equal(order.cpu(), torch.arange(pair.channels)):
            permute_consumer_inputs(modules[chains[pair.norm].consumer], chains[pair.norm], order)
            report["permuted"] += 1
            rows_moved.add(pair.norm)
            inputs_moved.add(chains[pair.norm].consumer)
        report["flipped"] += int((sign < 0).sum())
        report["confidence"][pair.norm] = float(matched.abs().mean())
    stream_moved = _align_stream(model, reference, example_input, report)
    _unmix_heads(model, reference, example_input, report)
    _align_consumer_channels(model, reference, key, example_input, report)
    report["lowest_confidence"] = min(report["confidence"].values(), default=0.0)
    norm_of = {pair.producer: pair.norm for pair in pairs}
    # a consumer's bits read its columns through every row: permuted rows or columns both move them
    reader_of = {k.producer: k.norm for k in key.layers if k.role == "consumer"}
    moved_levers = inputs_moved | {pair.producer for pair in pairs if pair.norm in rows_moved}
    continuous = set(report.get("rotated_levers", [])) | set(report.get("unmixed_levers", []))
    rotated = {k.norm for k in key.layers if k.producer in continuous}
    report["rearranged"] = sorted(
        rows_moved
        | {norm_of[path] for path in inputs_moved if path in norm_of}
        | {reader_of[path] for path in moved_levers if path in reader_of}
        | rotated
    )
    # one order moved every stream lever at once: their bits count together, charged once (verify.py)
    lever_of = {k.producer: k.norm for k in key.layers if k.role in ("consumer", "writer")}
    report["stream_rearranged"] = sorted(
        {lever_of[path] for path in stream_moved if path in lever_of} - set(report["rearranged"])
    )
    return model, report
