"""Structural obfuscation without scheme knowledge, in the style of DeepEclipse (Pegoraro et al.,
USENIX Security 2024): no data, no training, no idea which layers hold a watermark.

Threat model: the attacker has the released weights and the architecture, no data and no key.
On every producer -> per-channel norm -> one consumer chain (channels.py) he

- splits a share of the channels: channel i is *replaced* by two or three exact copies (each
  filter times its own s in [0.5, 2], the norm's statistics scaled to match, attacks/dummy.py's
  ``scaled_copy``), whose consumer weights are shares of channel i's that sum to one but may be
  negative; no channel of the result is the owner's channel i any more;
- adds cancelling neurons: groups of two or three copies of a random filter whose consumer
  weights are random and sum to zero, so every channel is read (unlike a dummy the consumer
  ignores) and the group adds nothing;
- folds every batch norm into its producer, then permutes, flips half and rescales 0.5-2
  (obfuscate.py).

The function stays (up to float rounding). ``verify --reference`` merges channels whose
effective maps are one map and drops the groups whose merged weights cancel (narrow.py), then
aligns (align.py). The paper's other moves (a convolution rewritten as a product of random
matrices, kernels padded with zeros) change the layer types or kernel shapes a released model
has; they are not built here.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..channels import (
    PER_CHANNEL_NORMS,
    Chain,
    consumer_columns,
    permutable_chains,
    resize_module,
    set_consumer_columns,
)
from ..data.triggers import TriggerSet
from ..errors import ConfigError, OwnerKeyError
from ..evaluation import accuracy
from ..key import OwnerKey
from ..norm import Layer
from ..pairing import find_pairs
from ..verify import VerdictRule, format_p_value, verify
from .dummy import key_order_verdict, scaled_copy
from .obfuscate import max_output_difference, obfuscate
from .registry import AttackContext, AttackResult, Option, register_attack

THREAT_MODEL = (
    "attacker: released weights and architecture; no data, no key, no knowledge of the scheme "
    "(DeepEclipse-style). Action: on every hidden layer whose channels reach one consumer, replaces "
    "{split} of the channels by 2-3 exact scaled copies with consumer weights split into shares that sum "
    "to one (some negative), adds {cancel} channels per channel in groups of 2-3 copies of a random "
    "filter whose consumer weights cancel, folds every batch norm into its producer, then permutes, flips "
    "half and rescales 0.5-2. Owner: verifies in key order, and with the owner's release as --reference."
)
_STATISTICS = ("weight", "bias", "running_mean", "running_var")


@torch.no_grad()
def eclipse(
    released: nn.Module,
    example_input: torch.Tensor,
    split: float = 0.5,
    cancel: float = 0.25,
    seed: int = 0,
    permute: bool = True,
) -> tuple[nn.Module, dict[str, Any]]:
    """A copy of ``released`` with the same function and another structure, and what changed where
    (``permute=False`` keeps the channel order, for tests that count the bits undone)."""
    if not 0.0 <= split <= 1.0:
        raise ConfigError(f"--rates {split} must be shares of channels in [0, 1]")
    if not 0.0 <= cancel <= 4.0:
        raise ConfigError(f"--cancel {cancel} must be in [0, 4] cancelling channels per channel")
    model = copy.deepcopy(released).eval()
    modules, gen = dict(model.named_modules()), torch.Generator().manual_seed(seed)
    changed: dict[str, Any] = {"widened": {}}
    for chain in permutable_chains(model, find_pairs(model, example_input).pairs):
        norm = modules[chain.pair.norm]
        if not isinstance(norm, PER_CHANNEL_NORMS) or norm.running_var is None or norm.weight is None:
            continue
        changed["widened"][chain.pair.norm] = _split_and_cancel(
            modules[chain.pair.producer], norm, modules[chain.consumer], chain, split, cancel, gen
        )
    hidden, obfuscated = obfuscate(
        model, example_input, permute=permute, flip=0.5, rescale=(0.5, 2.0), fold=True, seed=seed
    )
    changed["folded"], changed["permuted"] = obfuscated["folded"], obfuscated["permuted"]
    return hidden, changed


def _split_and_cancel(
    producer: Layer,
    norm: Layer,
    consumer: Layer,
    chain: Chain,
    split: float,
    cancel: float,
    gen: torch.Generator,
) -> dict[str, int]:
    """Rebuild one chain's channels: the split ones replaced by their copies, the cancelling groups
    appended; returns how many channels were split, added as copies and added to cancel."""
    channels = chain.pair.channels
    weight, bias = producer.weight.detach(), producer.bias
    stats = {n: getattr(norm, n).detach() for n in _STATISTICS}
    columns = consumer_columns(consumer, chain, channels).clone()
    built: list[tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor], torch.Tensor]] = []
    chosen = torch.rand(channels, generator=gen) < split
    for i in range(channels):
        copies = 2 + int(torch.randint(2, (1,), generator=gen)) if chosen[i] else 1
        shares = _shares(copies, gen) if copies > 1 else torch.ones(1)
        for share in shares.tolist():
            scale = _scale(gen) if copies > 1 else 1.0
            row, row_bias, row_stats = scaled_copy(weight[i], _at(bias, i), stats, i, scale, norm.eps)
            built.append((row, row_bias, row_stats, columns[:, i : i + 1] * share))
    added = 0
    while added < round(cancel * channels):
        size = min(2 + int(torch.randint(2, (1,), generator=gen)), max(2, round(cancel * channels) - added))
        built += _cancelling_group(weight, bias, stats, columns, size, norm.eps, gen)
        added += size
    rows, biases, parts, new_columns = zip(*built)
    resize_module(
        producer, {"weight": torch.cat(rows), **({} if bias is None else {"bias": torch.cat(biases)})}
    )
    resize_module(norm, {n: torch.cat([p[n] for p in parts]) for n in _STATISTICS})
    set_consumer_columns(consumer, torch.cat(new_columns, dim=1), chain.flattened)
    split_count = int(chosen.sum())
    return {
        "split": split_count,
        "copies": len(built) - added - (channels - split_count),
        "cancelling": added,
    }


def _cancelling_group(weight, bias, stats, columns, size: int, eps: float, gen: torch.Generator) -> list:
    """``size`` copies of one random filter (a random channel's statistics), consumer weights of the
    consumer's scale that sum to zero: read by the consumer, adding nothing to its input."""
    source = int(torch.randint(weight.shape[0], (1,), generator=gen))
    base = torch.randn(weight[source].shape, generator=gen) * weight.std()
    reads = torch.randn((columns.shape[0], size, columns.shape[2]), generator=gen) * columns.std()
    reads -= reads.mean(dim=1, keepdim=True)
    group = []
    for j in range(size):
        row, row_bias, row_stats = scaled_copy(base, _at(bias, source), stats, source, _scale(gen), eps)
        group.append((row, row_bias, row_stats, reads[:, j : j + 1]))
    return group


def _shares(count: int, gen: torch.Generator) -> torch.Tensor:
    """``count`` shares around 1 / count, some possibly negative, summing to one."""
    shares = 1.0 / count + 0.5 * torch.randn(count, generator=gen)
    return shares - (shares.sum() - 1.0) / count


def _scale(gen: torch.Generator) -> float:
    return float(0.5 * 4.0 ** torch.rand(1, generator=gen))  # log-uniform in [0.5, 2]


def _at(bias: torch.Tensor | None, i: int) -> torch.Tensor | None:
    return None if bias is None else bias[i]


def eclipse_attack(
    released: nn.Module,
    key: OwnerKey,
    owner_test: Dataset,
    example_input: torch.Tensor,
    splits: tuple[float, ...] = (0.5, 1.0),
    cancel: float = 0.25,
    seed: int = 0,
    trigger: TriggerSet | None = None,
    rule: VerdictRule = VerdictRule(),
) -> dict[str, Any]:
    """One obfuscated model per split share; the owner's verdict in key order and with the reference."""
    rows, model = [], None
    for split in splits:
        model, changed = eclipse(released, example_input, split, cancel, seed)
        plain = key_order_verdict(model, key, rule)
        widened = changed["widened"].values()
        row = {
            "split": split,
            "cancel": cancel,
            "layers_widened": len(changed["widened"]),
            "channels_split": sum(w["split"] for w in widened),
            "channels_added": sum(w["copies"] + w["cancelling"] for w in widened),
            "norms_folded": len(changed["folded"]),
            "max_output_difference": max_output_difference(released, model, owner_test),
            "attacker_accuracy": accuracy(model, owner_test),
            "key_order": plain,
        }
        try:
            report = verify(model, key, data=owner_test, trigger=trigger, rule=rule, reference=released)
        except OwnerKeyError as error:  # the structure was not undone: the owner has no verdict to give
            rows.append({**row, "aligned": f"not alignable: {error}", "verified": False})
            continue
        narrowed = (report.alignment or {}).get("narrowed", {})
        rows.append(
            {
                **row,
                "aligned": "aligned",
                "merged": sum(n["merged"] for n in narrowed.values()),
                "cancelled": sum(n.get("cancelled", 0) for n in narrowed.values()),
                "not_narrowed": {n: v["not_narrowed"] for n, v in narrowed.items() if "not_narrowed" in v},
                "signature_detection": report.signature_detection,
                "signature_p_value": format_p_value(report.signature_p_value, report.signature_log10_p_value),
                "passport_aware_accuracy": report.passport_aware_accuracy,
                "verified": report.verified,
            }
        )
    return {
        "attack": "eclipse",
        "threat_model": THREAT_MODEL.format(
            split=" / ".join(f"{s:.0%}" for s in splits), cancel=f"{cancel:g}"
        ),
        "rows": rows,
        "model": model,
    }


@register_attack(
    "eclipse",
    "split neurons into copies, add neurons that cancel, fold norms, then obfuscate (DeepEclipse-style)",
    options=(
        Option(
            "rates", "comma-separated shares of channels split into copies", float, [0.5, 1.0], listed=True
        ),
        Option("cancel", "cancelling channels added per channel", float, 0.25),
    ),
)
def run_eclipse(context: AttackContext) -> AttackResult:
    splits = tuple(context.settings["rates"])
    report = eclipse_attack(
        context.released,
        context.key,
        context.data.test,
        context.example,
        splits=splits,
        cancel=context.settings["cancel"],
        seed=context.seed,
        trigger=context.trigger,
        rule=context.rule,
    )
    model_is = (
        f"the model with {splits[-1]:.0%} of its channels split, obfuscated (verify it with --reference)"
    )
    return AttackResult.of(report, model=report.pop("model"), model_is=model_is)
