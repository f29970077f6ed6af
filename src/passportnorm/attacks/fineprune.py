"""Fine-pruning (Liu et al., 2018): prune the least active channels, then fine-tune.

Threat model: the attacker has the released weights, the architecture and labelled task data (a
held-out share), no key. He measures each normalized channel's mean activation on his data,
zeroes the least active share of every producer/norm pair (filter, bias and the norm's affine:
the channel then outputs zero, the architecture is unchanged), and fine-tunes all layers with
the pruned channels held at zero. A pruned channel's filter is zero, so its signature bit reads
zero, which matches neither sign: the bits are removed with the channels, and the sweep shows
at which share the owner's proof stops, next to what the attacker's accuracy is there.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data.triggers import TriggerSet
from ..errors import ConfigError
from ..evaluation import accuracy
from ..key import OwnerKey
from ..norm import Layer
from ..pairing import Pair, find_pairs
from ..verify import VerdictRule
from .evidence import boundary, owner_row
from .finetune import finetune
from .registry import ATTACKER_LR, AttackContext, AttackResult, Option, register_attack

THREAT_MODEL = (
    "attacker: released weights, architecture and labelled task data (a held-out share); no key. "
    "Action: zero the least active share of every normalized layer's channels (mean activation on "
    "his data), then fine-tune all layers {epochs} epochs (SGD lr {lr}) with them held at zero."
)


@torch.no_grad()
def channel_activity(
    model: nn.Module, pairs: list[Pair], data: Dataset, batches: int = 4
) -> dict[str, torch.Tensor]:
    """Mean positive activation of every norm's output channels on ``data``, by norm path."""
    modules = dict(model.named_modules())
    sums: dict[str, torch.Tensor] = {}

    def record(path):
        def hook(_module, _inputs, output):
            dims = [0, *range(2, output.dim())]
            sums[path] = sums.get(path, 0) + output.clamp_min(0).mean(dims)

        return hook

    handles = [modules[p.norm].register_forward_hook(record(p.norm)) for p in pairs]
    model.eval()
    for index, (x, _y) in enumerate(DataLoader(data, batch_size=128)):
        if index == batches:
            break
        model(x)
    for handle in handles:
        handle.remove()
    return sums


def prune_channels(
    model: nn.Module, rate: float, data: Dataset, example: torch.Tensor
) -> tuple[nn.Module, dict]:
    """A copy with the least active ``rate`` share of each pair's channels zeroed, and the masks."""
    if not 0.0 <= rate < 1.0:
        raise ConfigError(f"fine-pruning rate {rate} must be in [0, 1)")
    pruned = copy.deepcopy(model).eval()
    pairs = find_pairs(pruned, example).producer_pairs
    activity, modules, masks = channel_activity(pruned, pairs, data), dict(pruned.named_modules()), {}
    for pair in pairs:
        keep = torch.ones(pair.channels, dtype=torch.bool)
        keep[activity[pair.norm].argsort()[: int(rate * pair.channels)]] = False
        masks[pair] = keep
    _apply(modules, masks)
    return pruned, masks


@torch.no_grad()
def _apply_to_model(model: nn.Module, masks: dict[Pair, torch.Tensor]) -> None:
    _apply(dict(model.named_modules()), masks)


@torch.no_grad()
def _apply(modules: dict[str, Layer], masks: dict[Pair, torch.Tensor]) -> None:
    for pair, keep in masks.items():
        producer, norm = modules[pair.producer], modules[pair.norm]
        producer.weight[~keep] = 0
        if producer.bias is not None:
            producer.bias[~keep] = 0
        if getattr(norm, "weight", None) is not None:
            norm.weight[~keep] = 0
            norm.bias[~keep] = 0


def fine_prune(
    released: nn.Module,
    key: OwnerKey,
    attacker_data: Dataset,
    owner_test: Dataset,
    rates: Sequence[float] = (0.2, 0.4, 0.6, 0.8),
    epochs: int = 5,
    lr: float = 0.01,
    seed: int = 0,
    trigger: TriggerSet | None = None,
    rule: VerdictRule = VerdictRule(),
) -> dict[str, Any]:
    """Prune and fine-tune at each rate; rows with the attacker's accuracy and the owner's verdict."""
    example, rows, model = (
        attacker_data[0][0].unsqueeze(0).repeat(2, *[1] * attacker_data[0][0].dim()),
        [],
        None,
    )
    for rate in rates:
        pruned, masks = prune_channels(released, rate, attacker_data, example)
        pruned_accuracy = accuracy(pruned, owner_test)
        result = finetune(
            pruned,
            key,
            attacker_data,
            owner_test,
            mode="ftal",
            epochs=epochs,
            lr=lr,
            seed=seed,
            trigger=trigger,
            rule=rule,
            reference=released,
            after_step=partial(_apply_to_model, masks=masks),
        )
        model = result["model"]
        owner = owner_row(model, key, owner_test, released, trigger, rule)
        rows.append({"rate": rate, "pruned_accuracy": pruned_accuracy, **owner})
    return {
        "attack": "fine-prune",
        "threat_model": THREAT_MODEL.format(epochs=epochs, lr=lr),
        "rows": rows,
        **boundary(rows),
        "model": model,
    }


@register_attack(
    "fine-prune",
    "prune the channels least active on the attacker's data, then fine-tune (Liu et al.)",
    options=(
        Option(
            "rates",
            "comma-separated shares of channels pruned, each in [0, 1)",
            float,
            [0.2, 0.4, 0.6, 0.8],
            listed=True,
        ),
        ATTACKER_LR,
    ),
)
def run_fine_prune(context: AttackContext) -> AttackResult:
    rates = context.settings["rates"]
    report = fine_prune(
        context.released,
        context.key,
        context.attacker,
        context.data.test,
        rates=rates,
        epochs=context.epochs,
        lr=context.settings["lr"],
        seed=context.seed,
        trigger=context.trigger,
        rule=context.rule,
    )
    model_is = f"the model pruned at {rates[-1]} and fine-tuned"
    return AttackResult.of(report, model=report.pop("model"), model_is=model_is)
