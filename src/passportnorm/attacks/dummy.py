"""Structural obfuscation with dummy neurons (Yan et al., USENIX Security 2023).

Threat model: the attacker has the released weights and the architecture, no data and no key.
He widens hidden layers with channels that leave the function unchanged, then permutes, flips
and rescales (obfuscate.py), so a verifier sees a model of another architecture. For every
producer -> per-channel norm -> one consumer chain (channels.py) he adds ``share`` x C channels:

- dummy: a random filter with the statistics and affine of a random channel, whose consumer
  weights are zero (the consumer never reads it);
- split: a copy of channel i with its filter scaled by s in [1, 2] and the norm's statistics
  scaled to match (running mean x s, running variance so that sqrt(var + eps) scales by s), so
  it computes exactly what channel i computes; channel i's consumer weights are split a : 1-a
  between the two.

``verify --reference`` undoes both (narrow.py) before it aligns the channels (align.py).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..channels import (
    PER_CHANNEL_NORMS,
    consumer_columns,
    permutable_chains,
    resize_module,
    set_consumer_columns,
)
from ..data.triggers import TriggerSet
from ..errors import ConfigError, OwnerKeyError
from ..evaluation import accuracy
from ..key import OwnerKey
from ..pairing import find_pairs
from ..verify import VerdictRule, format_p_value, verify
from .obfuscate import max_output_difference, obfuscate
from .registry import AttackContext, AttackResult, Option, register_attack

THREAT_MODEL = (
    "attacker: released weights and architecture; no data, no key. Action: adds {share} more channels "
    "to every hidden layer whose channels reach one consumer (half dummy channels the consumer never "
    "reads, half exact split copies of existing channels), then permutes, flips half and rescales "
    "0.5-2. Owner: verifies in key order, and with the owner's release as --reference."
)


@torch.no_grad()
def add_dummy_neurons(
    released: nn.Module, example_input: torch.Tensor, share: float = 0.1, seed: int = 0
) -> tuple[nn.Module, dict[str, dict[str, int]]]:
    """A wider copy of ``released`` computing the same function, and what was added where."""
    if not 0.0 < share <= 4.0:
        raise ConfigError(f"dummy-neuron share {share} must be in (0, 4]")
    model = copy.deepcopy(released).eval()
    modules, gen = dict(model.named_modules()), torch.Generator().manual_seed(seed)
    added = {}
    for chain in permutable_chains(model, find_pairs(model, example_input).pairs):
        norm = modules[chain.pair.norm]
        if not isinstance(norm, PER_CHANNEL_NORMS) or norm.running_var is None:
            continue
        count = max(1, round(share * chain.pair.channels))
        dummies = count // 2
        _widen(
            modules[chain.pair.producer], norm, modules[chain.consumer], chain, dummies, count - dummies, gen
        )
        added[chain.pair.norm] = {"dummy": dummies, "split": count - dummies}
    return model, added


def _widen(producer, norm, consumer, chain, dummies: int, splits: int, gen: torch.Generator) -> None:
    channels = chain.pair.channels
    weight, bias = producer.weight.detach(), producer.bias
    stats = {n: getattr(norm, n).detach() for n in ("weight", "bias", "running_mean", "running_var")}
    columns = consumer_columns(consumer, chain, channels).clone()
    rows, biases, new_stats, new_columns = [weight], [bias], {n: [t] for n, t in stats.items()}, [columns]
    for _ in range(dummies):  # a random filter the consumer never reads
        source = int(torch.randint(channels, (1,), generator=gen))
        rows.append(torch.randn(weight[source : source + 1].shape, generator=gen) * weight.std())
        biases.append(None if bias is None else bias[source : source + 1].detach())
        for name, tensor in stats.items():
            new_stats[name].append(tensor[source : source + 1])
        new_columns.append(torch.zeros_like(columns[:, :1]))
    for _ in range(splits):  # an exact copy of channel i, its consumer weights split a : 1-a
        i = int(torch.randint(channels, (1,), generator=gen))
        scale, part = (
            1.0 + float(torch.rand(1, generator=gen)),
            0.2 + 0.6 * float(torch.rand(1, generator=gen)),
        )
        row, row_bias, row_stats = scaled_copy(
            weight[i], None if bias is None else bias[i], stats, i, scale, norm.eps
        )
        rows.append(row)
        biases.append(row_bias)
        for name, value in row_stats.items():
            new_stats[name].append(value)
        new_columns.append(columns[:, i : i + 1] * (1.0 - part))
        columns[:, i] *= part
    resize_module(
        producer, {"weight": torch.cat(rows), **({} if bias is None else {"bias": torch.cat(biases)})}
    )
    resize_module(norm, {n: torch.cat(parts) for n, parts in new_stats.items()})
    set_consumer_columns(consumer, torch.cat(new_columns, dim=1), chain.flattened)


def scaled_copy(
    row: torch.Tensor,
    bias: torch.Tensor | None,
    stats: dict[str, torch.Tensor],
    i: int,
    scale: float,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]:
    """A channel that computes exactly what channel ``i`` computes after its norm: its filter
    ``row`` and ``bias`` times ``scale`` > 0, the running mean times ``scale`` and the running
    variance such that ``sqrt(var + eps)`` scales by ``scale``; gain and shift as they are."""
    copy_stats = {
        "weight": stats["weight"][i : i + 1],
        "bias": stats["bias"][i : i + 1],
        "running_mean": stats["running_mean"][i : i + 1] * scale,
        "running_var": (stats["running_var"][i : i + 1] + eps) * scale**2 - eps,
    }
    return row.unsqueeze(0) * scale, None if bias is None else bias.detach().reshape(1) * scale, copy_stats


def key_order_verdict(model: nn.Module, key: OwnerKey, rule: VerdictRule) -> str:
    """The owner's verdict reading a widened model in key order, or why it cannot be read so."""
    try:
        return "verified" if verify(model, key, rule=rule).verified else "not verified"
    except OwnerKeyError as error:
        return f"not verifiable: {error}"


def dummy_neuron_attack(
    released: nn.Module,
    key: OwnerKey,
    owner_test: Dataset,
    example_input: torch.Tensor,
    shares: tuple[float, ...] = (0.1, 0.5),
    seed: int = 0,
    trigger: TriggerSet | None = None,
    rule: VerdictRule = VerdictRule(),
) -> dict[str, Any]:
    """Widen by each share, then obfuscate; the owner's verdict in key order and with the reference."""
    rows, model = [], None
    for share in shares:
        wide, added = add_dummy_neurons(released, example_input, share, seed)
        model, _ = obfuscate(wide, example_input, permute=True, flip=0.5, rescale=(0.5, 2.0), seed=seed)
        plain = key_order_verdict(model, key, rule)
        report = verify(model, key, data=owner_test, trigger=trigger, rule=rule, reference=released)
        narrowed = (report.alignment or {}).get("narrowed", {})
        rows.append(
            {
                "share": share,
                "channels_added": sum(a["dummy"] + a["split"] for a in added.values()),
                "layers_widened": len(added),
                "max_output_difference": max_output_difference(released, model, owner_test),
                "attacker_accuracy": accuracy(model, owner_test),
                "key_order": plain,
                "removed_dummy": sum(n["dummy"] for n in narrowed.values()),
                "merged_split": sum(n["merged"] for n in narrowed.values()),
                "signature_detection": report.signature_detection,
                "signature_p_value": format_p_value(report.signature_p_value, report.signature_log10_p_value),
                "passport_aware_accuracy": report.passport_aware_accuracy,
                "verified": report.verified,
            }
        )
    return {
        "attack": "dummy-neurons",
        "threat_model": THREAT_MODEL.format(share=" / ".join(f"{s:.0%}" for s in shares)),
        "rows": rows,
        "model": model,
    }


@register_attack(
    "dummy-neurons",
    "widen layers with channels that change nothing, then obfuscate",
    options=(Option("rates", "comma-separated shares of channels added", float, [0.1, 0.5], listed=True),),
)
def run_dummy_neurons(context: AttackContext) -> AttackResult:
    shares = tuple(context.settings["rates"])
    report = dummy_neuron_attack(
        context.released,
        context.key,
        context.data.test,
        context.example,
        shares=shares,
        seed=context.seed,
        trigger=context.trigger,
        rule=context.rule,
    )
    model_is = f"the model widened by {shares[-1]:.0%} and obfuscated (verify it with --reference)"
    return AttackResult.of(report, model=report.pop("model"), model_is=model_is)
