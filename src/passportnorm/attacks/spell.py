"""Spelling by rearrangement: a false claimant rearranges a public model to spell a key of their own.

Threat model: the claimant has a public model (anyone's release, or an unprotected checkpoint),
no data. They protect a copy (their own passports and hash-bound bits), then rearrange it the ways
that leave the function exactly as it is, so that the signs of the responses spell their bits:
``flip`` negates each wrong channel with its norm's gain (free at per-channel norms), ``permute``
reorders the channels of every producer whose output one consumer reads so that a filter whose
response has the bit's sign sits at each position. They publish the rearranged copy as their
release, name no ancestor, and ask a verifier to read the public model through it
(``verify --reference``). A flip leaves a negative gain behind, which the alignment refuses to
undo (align.py); a permutation leaves no trace, so it is undone and the claimant's bits are read:
what stops the claim is that channels feeding residual additions cannot move alone. ``stream``
reorders a pre-norm transformer's residual stream as a whole (residual_stream.py), in the order
under which the public model spells the claimant's key best: bit c of every stream norm reads the
channel at place c, so reading the model under each cyclic shift of the stream scores every
(place, channel) pair and a Hungarian assignment picks the order. What stops that claim is the
log2(width!) charge on the bits an alignment of the stream puts back (verify.py).
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from ..channels import flip_channels, norm_tensors, permutable_chains, permute_consumer_inputs
from ..errors import ConfigError
from ..key import OwnerKey, attach_key, extract_key
from ..pairing import find_pairs
from ..protect import protect, protected_layers, strip
from ..residual_stream import find_stream, permutation_keeps_function
from ..verify import VerdictRule, verify
from .registry import AttackContext, AttackResult, Option, register_attack

__all__ = ["spell_by_rearranging"]

MODES = ("flip", "permute", "stream")
THREAT_MODEL = (
    "false claimant: a public model, no data. Action: protect a copy with their own key, then flip or "
    "permute its channels or its residual stream (function unchanged) so the responses spell their bits; "
    "publish that as their release, name no ancestor. Claim: the public model, read through their "
    "release (verify --reference)."
)


def spell_by_rearranging(
    public: nn.Module, example: torch.Tensor, mode: str, signature: str = "(c) Mallory", seed: int = 7
) -> tuple[nn.Module, OwnerKey]:
    """The claimant's release (``public`` rearranged, the same function) and key."""
    if mode not in MODES:
        raise ConfigError(f"unknown spelling mode {mode!r}; choose {', '.join(MODES)}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        claimant = protect(copy.deepcopy(public).eval(), example, signature=signature, seed=seed)
    if mode == "stream":
        release, key = strip(claimant).eval(), extract_key(claimant)
        _permute_stream_to_spell(release, key, example)
        return release, key
    (_flip_to_spell if mode == "flip" else _permute_to_spell)(claimant, example)
    return strip(claimant).eval(), extract_key(claimant)


@torch.no_grad()
def _flip_to_spell(claimant: nn.Module, example: torch.Tensor) -> None:
    for branch in protected_layers(claimant).values():
        g = branch.passport_responses()[0].detach()
        flip_channels(
            branch.producer, branch.norm, torch.where(branch.signature.to(g.dtype) * g < 0, -1.0, 1.0)
        )


@torch.no_grad()
def _permute_to_spell(claimant: nn.Module, example: torch.Tensor) -> None:
    """Layer by layer in forward order (a consumer's columns move with its producer's rows), each
    movable producer gets the order that puts a filter of the bit's sign at each position."""
    plain = strip(copy.deepcopy(claimant))
    chains = {c.pair.norm: c for c in permutable_chains(plain, find_pairs(plain, example).pairs)}
    modules = dict(claimant.named_modules())
    for path, branch in protected_layers(claimant).items():
        if path not in chains:
            continue
        g = branch.passport_responses()[0].detach()
        pools = {1: [i for i in range(len(g)) if g[i] > 0], -1: [i for i in range(len(g)) if g[i] <= 0]}
        order = torch.tensor(
            [(pools[int(bit)] or pools[-int(bit)]).pop(0) for bit in branch.signature.tolist()]
        )
        branch.producer.weight.copy_(branch.producer.weight[order])
        if branch.producer.bias is not None:
            branch.producer.bias.copy_(branch.producer.bias[order])
        for tensor in norm_tensors(branch.norm):
            tensor.copy_(tensor[order])
        permute_consumer_inputs(modules[chains[path].consumer], chains[path], order)


@torch.no_grad()
def _permute_stream_to_spell(release: nn.Module, key: OwnerKey, example: torch.Tensor) -> None:
    """Reorder ``release``'s residual stream (in place) so that it spells ``key`` best; nothing
    where it has no stream."""
    stream, _ = find_stream(release, example)
    if stream is None:
        return
    width, places = stream.width, torch.arange(stream.width)
    score = torch.zeros(width, width)  # (place, stream channel put there): matching bits over the norms
    for shift in range(width):
        order = (places + shift) % width
        moved = copy.deepcopy(release)
        if not permutation_keeps_function(moved, example, stream, order):
            return
        for path, branch in protected_layers(attach_key(moved, key)).items():
            if path in stream.norms and len(branch.signature) == width:
                score[places, order] += (branch.extracted_bits().cpu() == branch.signature.cpu()).float()
    rows, cols = linear_sum_assignment(-score.numpy())
    best = torch.as_tensor(cols)[torch.argsort(torch.as_tensor(rows))]
    permutation_keeps_function(release, example, stream, best)


def spell_rows(
    public: nn.Module, example: torch.Tensor, modes: list[str], data: Any, rule: VerdictRule
) -> tuple[list[dict[str, Any]], nn.Module, OwnerKey]:
    """One row per mode: the claimant's bits read in the public model through their release."""
    rows, release, key = [], public, None
    for mode in modes:
        release, key = spell_by_rearranging(public, example, mode)
        through = verify(public, key, data=data, rule=rule, reference=release)
        alone = verify(public, key, data=data, rule=rule)
        rows.append(
            {
                "mode": mode,
                "claimant_release_detection": verify(release, key, rule=rule).signature_detection,
                "read_through_release": through.signature_detection,
                "matches": through.signature_matches,
                "needed": through.required_matches,
                "flips_undone": (through.alignment or {}).get("flipped"),
                "layers_permuted_back": (through.alignment or {}).get("permuted"),
                "stream_permuted_back": (through.alignment or {}).get("stream_permuted"),
                "bits_charged_log2": round(through.signature_search_log2, 1),
                "verified_through_release": through.verified,
                "verified_as_is": alone.verified,
            }
        )
    assert key is not None
    return rows, release, key


@register_attack(
    "spell",
    "a false claimant rearranges the released model (flips, permutations) to spell a key of their own",
    options=(Option("modes", "which rearrangements, comma-separated", default=list(MODES), listed=True),),
)
def run_spell(context: AttackContext) -> AttackResult:
    modes = context.settings["modes"]
    unknown = [mode for mode in modes if mode not in MODES]
    if unknown:
        raise ConfigError(f"--modes {unknown[0]!r} is not one of {', '.join(MODES)}")
    rows, release, key = spell_rows(context.released, context.example, modes, context.data.test, context.rule)
    return AttackResult(
        "spell",
        THREAT_MODEL,
        rows,
        model=release,
        model_is=f"the claimant's release ({modes[-1]})",
        forged_key=key,
    )
