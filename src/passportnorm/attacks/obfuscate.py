"""Function-preserving obfuscation: permute, sign-flip and rescale channels of the released model.

Threat model: the attacker has the released weights and the architecture, no data and no key.
Each transform leaves the released function unchanged (up to float rounding, and the norm's
``eps`` for rescaling) but moves or flips what each channel's passport response reads, so a
verification that reads bit i from channel i sees something else.

- permute: for a producer whose norm output reaches exactly one Conv (groups 1) or Linear through
  channel-wise ops only (activations, pooling, dropout, flatten), reorder the producer's output
  channels, the norm's parameters and statistics, and the consumer's input channels alike;
- flip: negate a channel's producer weights and bias, and its norm weight and running mean
  (BatchNorm, InstanceNorm: per-channel statistics make this exact);
- rescale: multiply a channel's producer weights and bias by a > 0, its running mean by a and its
  running variance by a^2.

At a norm read by consumers (pre-norm transformers) the flip and rescale act on the norm's gain
and bias and on every reader's column instead (consumer_channels.py: the gain folded into the
readers). With ``permute`` the residual stream of a pre-norm transformer is also permuted, one order
in every block at once (residual_stream.py); with ``rotate`` its norms' gains are folded into their
readers and the stream is rotated by a random orthogonal matrix (stream_rotation.py). With ``mix``
every attention head's q/k and v/output dimensions are mixed by random invertible matrices
(head_mixing.py); ``fold`` folds batch norms into their producers. The variant ``lfea (all)``
does everything but the rotation at once: on a ReLU network the function-preserving linear maps are
folds, permutations and positive scales (and sign flips at a norm), so that is LFEA's attack there;
in a transformer the head mixing adds its general invertible maps.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..channels import PER_CHANNEL_NORMS, flip_channels, permutable_chains, permute_chain
from ..consumer_channels import norm_readers, scale_keeps_function
from ..data.triggers import TriggerSet
from ..errors import ConfigError
from ..evaluation import accuracy
from ..head_mixing import find_heads, mixing_keeps_function, random_mixing
from ..key import OwnerKey
from ..norm import Layer, along, lever_weight
from ..pairing import find_pairs
from ..residual_stream import find_stream, permutation_keeps_function
from ..stream_rotation import fold_stream_norms, random_rotation, rotatable, rotation_keeps_function
from ..verify import VerdictRule, verify
from .registry import AttackContext, AttackResult, register_attack

THREAT_MODEL = (
    "attacker: released weights and architecture; no data, no key. Action: function-preserving "
    "channel {what}. Owner: verifies the obfuscated model with the key, reading channels in key order, "
    "and again after aligning it to the owner's release (verify --reference)."
)


@torch.no_grad()
def obfuscate(
    released: nn.Module,
    example_input: torch.Tensor,
    permute: bool = True,
    flip: float = 0.5,
    rescale: tuple[float, float] | None = (0.5, 2.0),
    seed: int = 0,
    rotate: bool = False,
    fold: bool = False,
    mix: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """A function-preserving obfuscated copy of ``released`` and what was changed where; ``rotate``
    folds the stream norms' gains into their readers and rotates a pre-norm transformer's residual
    stream by a random orthogonal matrix (stream_rotation.py); ``fold`` folds every batch norm
    into its producer first (``fold_norm``); ``mix`` mixes every attention head's q/k and v/output
    dimensions by random invertible matrices (head_mixing.py)."""
    if not 0.0 <= flip <= 1.0:
        raise ConfigError(f"flip share {flip} must be in [0, 1]")
    if rescale is not None and not 0 < rescale[0] <= rescale[1]:
        raise ConfigError(f"rescale range {rescale} must be positive and ordered")
    model = copy.deepcopy(released).eval()
    modules = dict(model.named_modules())
    pairs = find_pairs(model, example_input).producer_pairs  # a residual stream is not one pair's
    gen = torch.Generator().manual_seed(seed)
    changed: dict[str, Any] = {
        "permuted": [],
        "flipped": {},
        "rescaled": [],
        "folded": [],
        "mixed": [],
        "skipped": {},
    }
    for pair in pairs if fold else []:
        if fold_norm(modules[pair.producer], modules[pair.norm]):
            changed["folded"].append(pair.norm)
    for pair in pairs:
        producer, norm = modules[pair.producer], modules[pair.norm]
        if not isinstance(norm, PER_CHANNEL_NORMS):
            changed["skipped"][pair.norm] = (
                f"{type(norm).__name__} mixes channels in its statistics: flip/rescale would change the "
                "function"
            )
            continue
        channels = pair.channels
        if flip > 0:
            chosen = torch.rand(channels, generator=gen) < flip
            flip_channels(producer, norm, torch.where(chosen, -1.0, 1.0))
            changed["flipped"][pair.norm] = int(chosen.sum())
        if rescale is not None:
            low, high = rescale
            scale = low * (high / low) ** torch.rand(channels, generator=gen)  # log-uniform
            producer.weight.mul_(along(scale, producer.weight.dim()).to(producer.weight))
            if producer.bias is not None:
                producer.bias.mul_(scale.to(producer.bias))
            mean, var = getattr(norm, "running_mean", None), getattr(norm, "running_var", None)
            if mean is not None and var is not None:
                mean.mul_(scale.to(mean))
                var.mul_(scale.pow(2).to(var))
            changed["rescaled"].append(pair.norm)
    _fold_and_flip_consumer_channels(model, example_input, flip, rescale, gen, changed)
    if permute:
        for chain in permutable_chains(model, pairs):
            permute_chain(modules, chain, torch.randperm(chain.pair.channels, generator=gen))
            changed["permuted"].append(chain.pair.norm)
        _permute_residual_stream(model, example_input, gen, changed)
    if rotate:
        _rotate_residual_stream(model, example_input, gen, changed)
    if mix:
        _mix_attention_heads(model, example_input, gen, changed)
    return model, changed


def _mix_attention_heads(
    model: nn.Module, example_input: torch.Tensor, gen: torch.Generator, changed: dict[str, Any]
) -> None:
    """Every attention of a known layout: each head's q/k and v/output dimensions mixed by random
    invertible matrices (head_mixing.py), kept only where the function stays the same."""
    found = find_heads(model)
    if not found:
        changed["skipped"]["attention heads"] = "no attention with a fused q/k/v projection of a known layout"
    for heads in found:
        size = lever_weight(dict(model.named_modules())[heads.out]).shape[1] // heads.heads
        mixing = [(random_mixing(size, gen), random_mixing(size, gen)) for _ in range(heads.heads)]
        if mixing_keeps_function(model, example_input, heads, mixing):
            changed["mixed"].append(heads.lever)
        else:
            changed["skipped"][heads.lever] = (
                "mixing its heads changes the output (rotary positions, a q/k norm, or another layout)"
            )


@torch.no_grad()
def fold_norm(producer: Layer, norm: Layer) -> bool:
    """Fold an eval-mode batch norm into its producer, as inference compilers do (DeepEclipse's
    norm folding): the producer's rows scaled by gain / std, the norm left with zero mean, unit
    spread and gain 1, the shift in the producer's bias where it has one, else in the norm's. The
    function stays; False (nothing changed) where the norm keeps no statistics or no affine."""
    mean, var = getattr(norm, "running_mean", None), getattr(norm, "running_var", None)
    if not isinstance(norm, PER_CHANNEL_NORMS) or mean is None or var is None or norm.weight is None:
        return False
    factor = norm.weight / (var + norm.eps).sqrt()
    bias = producer.bias if producer.bias is not None else torch.zeros_like(mean)
    shift = (bias - mean) * factor + norm.bias
    producer.weight.mul_(along(factor, producer.weight.dim()).to(producer.weight))
    if producer.bias is not None:
        producer.bias.copy_(shift)
        norm.bias.zero_()
    else:
        norm.bias.copy_(shift)
    norm.weight.fill_(1.0)
    mean.zero_()
    var.fill_(1.0 - norm.eps)
    return True


def _rotate_residual_stream(
    model: nn.Module, example_input: torch.Tensor, gen: torch.Generator, changed: dict[str, Any]
) -> None:
    """Fold the stream norms' gains into their readers, then one random rotation of the stream,
    kept only where the function stays the same."""
    stream, why = find_stream(model, example_input)
    keep_ones, why = rotatable(model, stream) if stream is not None else (None, why)
    if stream is None or keep_ones is None:
        changed["skipped"]["rotation"] = why
        return
    if not fold_stream_norms(model, stream, example_input):
        changed["skipped"]["rotation"] = (
            "folding the norms' gains into their readers changes the output (a reader shares its weight: "
            "a head tied to the token embedding)"
        )
        return
    if not rotation_keeps_function(
        model, example_input, stream, random_rotation(stream.width, gen, keep_ones)
    ):
        changed["skipped"]["rotation"] = "rotating it changes the output: something pins its basis"
        return
    changed["stream_rotated"] = stream.width


def _permute_residual_stream(
    model: nn.Module, example_input: torch.Tensor, gen: torch.Generator, changed: dict[str, Any]
) -> None:
    """One random order of the residual stream's channels in every block at once
    (residual_stream.py), kept only where the function stays the same."""
    stream, why = find_stream(model, example_input)
    if stream is None:
        changed["skipped"]["residual stream"] = why
        return
    if not permutation_keeps_function(
        model, example_input, stream, torch.randperm(stream.width, generator=gen)
    ):
        changed["skipped"]["residual stream"] = (
            "permuting it changes the output: something outside the weights pins its order (a fixed "
            "position table added to the tokens)"
        )
        return
    changed["permuted"] += [n for n in stream.norms if n not in changed["permuted"]]
    changed["stream_permuted"] = stream.width


def _fold_and_flip_consumer_channels(
    model: nn.Module,
    example_input: torch.Tensor,
    flip: float,
    rescale: tuple[float, float] | None,
    gen: torch.Generator,
    changed: dict[str, Any],
) -> None:
    """At each norm read by consumers (pre-norm transformers): flip a share of its channels and fold
    a log-uniform positive scale into its readers' columns (consumer_channels.py), kept only where
    the function stays the same."""
    if flip == 0 and rescale is None:
        return
    modules = dict(model.named_modules())
    for pair in (p for p in find_pairs(model, example_input).pairs if p.role == "consumer"):
        factor = torch.ones(pair.channels, dtype=torch.float64)
        if flip > 0:
            factor = torch.where(torch.rand(pair.channels, generator=gen) < flip, -1.0, 1.0).double()
        if rescale is not None:
            low, high = rescale
            factor = factor * low * (high / low) ** torch.rand(pair.channels, generator=gen).double()
        readers = [modules[p] for p in norm_readers(model, example_input, pair.norm)]
        if not readers or not scale_keeps_function(model, example_input, modules[pair.norm], readers, factor):
            changed["skipped"][pair.norm] = (
                "its output is read beyond its readers' columns (or its gain does not divide)"
            )
            continue
        if flip > 0:
            changed["flipped"][pair.norm] = int((factor < 0).sum())
        if rescale is not None:
            changed["rescaled"].append(pair.norm)


@torch.no_grad()
def max_output_difference(a: nn.Module, b: nn.Module, data: Dataset) -> float:
    a.eval(), b.eval()
    return max(float((a(x) - b(x)).abs().max()) for x, _ in DataLoader(data, batch_size=256))


def obfuscation_attack(
    released: nn.Module,
    key: OwnerKey,
    owner_test: Dataset,
    example_input: torch.Tensor,
    seed: int = 0,
    trigger: TriggerSet | None = None,
    rule: VerdictRule = VerdictRule(),
) -> dict[str, Any]:
    """Each transform alone and all together: function change, attacker accuracy, owner verification."""
    variants: dict[str, dict[str, Any]] = {
        "permute": dict(permute=True, flip=0.0, rescale=None),
        "flip half": dict(permute=False, flip=0.5, rescale=None),
        "rescale 0.5-2": dict(permute=False, flip=0.0, rescale=(0.5, 2.0)),
        "all three": dict(permute=True, flip=0.5, rescale=(0.5, 2.0)),
        "rotate": dict(permute=False, flip=0.0, rescale=None, rotate=True),
        "fold norms": dict(permute=False, flip=0.0, rescale=None, fold=True),
        "mix heads": dict(permute=False, flip=0.0, rescale=None, mix=True),
        "lfea (all)": dict(permute=True, flip=0.5, rescale=(0.5, 2.0), fold=True, mix=True),
    }
    rows = []
    models = {}
    for name, options in variants.items():
        model, changed = obfuscate(released, example_input, seed=seed, **options)
        report = verify(model, key, data=owner_test, trigger=trigger, rule=rule)
        aligned = verify(model, key, data=owner_test, trigger=trigger, rule=rule, reference=released)
        rows.append(
            {
                "transform": name,
                "max_output_difference": max_output_difference(released, model, owner_test),
                "attacker_accuracy": accuracy(model, owner_test),
                "signature_detection": report.signature_detection,
                "signature_p_value": report.signature_p_value,
                "passport_aware_accuracy": report.passport_aware_accuracy,
                "trigger_accuracy": report.trigger_accuracy,
                "verified": report.verified,
                "aligned_signature_detection": aligned.signature_detection,
                "aligned_passport_aware_accuracy": aligned.passport_aware_accuracy,
                "aligned_verified": aligned.verified,
                "aligned_signature_bits": aligned.signature_bits,
                "aligned_signature_matches": aligned.signature_matches,
                "aligned_bits_needed": aligned.required_matches,
                "aligned_bits_charged_log2": round(aligned.signature_search_log2, 1),
                "aligned_trigger_matches": aligned.trigger_matches,
                "aligned_trigger_count": aligned.trigger_count,
                "stream_permuted": changed.get("stream_permuted"),
                "stream_rotated": changed.get("stream_rotated"),
                "aligned_stream_rotated_back": (aligned.alignment or {}).get("stream_rotated"),
                "layers_permuted": len(changed["permuted"]),
                "norms_folded": len(changed["folded"]),
                "attentions_mixed": len(changed["mixed"]),
                "aligned_heads_unmixed": len((aligned.alignment or {}).get("unmixed_levers", [])),
                "layers_skipped": changed["skipped"],
            }
        )
        models[name] = model
    return {
        "attack": "obfuscate",
        "threat_model": THREAT_MODEL.format(
            what="permutation (a transformer's residual stream as a whole), sign flips, positive rescaling, "
            "a rotation of a transformer's residual stream (its norms' gains folded into their readers), "
            "batch norms folded into their producers, attention heads mixed by invertible matrices, and all "
            "of these at once (LFEA's linear functionality equivalence)"
        ),
        "rows": rows,
        "model": models["all three"],
    }


@register_attack("obfuscate", "permute, sign-flip and rescale channels so the function stays the same")
def run_obfuscation(context: AttackContext) -> AttackResult:
    report = obfuscation_attack(
        context.released,
        context.key,
        context.data.test,
        context.example,
        seed=context.seed,
        trigger=context.trigger,
        rule=context.rule,
    )
    shown = [{k: v for k, v in r.items() if k != "layers_skipped"} for r in report["rows"]]
    return AttackResult.of(report, model=report.pop("model"), table_rows=shown)
