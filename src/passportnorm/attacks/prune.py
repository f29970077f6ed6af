"""Global magnitude pruning of conv and linear weights (``torch.nn.utils.prune``).

Threat model: the attacker has the released weights and the architecture, no data and no key,
and zeroes the smallest-magnitude weights across all conv and linear layers to wash out the
signature; the owner then verifies the pruned model with the key.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from torch import nn
from torch.nn.utils import prune
from torch.utils.data import Dataset

from ..data.triggers import TriggerSet
from ..errors import ConfigError
from ..evaluation import accuracy
from ..key import OwnerKey
from ..verify import VerdictRule, verify
from .registry import AttackContext, AttackResult, Option, Plot, register_attack

THREAT_MODEL = (
    "attacker: released weights and architecture; no data, no key. Action: global L1 pruning of "
    "all Conv1d/2d/3d and Linear weights to the given share. Owner: verifies with the key."
)


def prune_model(model: nn.Module, rate: float) -> nn.Module:
    """A copy of ``model`` with the ``rate`` share of conv/linear weights (smallest |w|, globally) set to
    0."""
    if not 0.0 <= rate < 1.0:
        raise ConfigError(f"pruning rate {rate} must be in [0, 1)")
    pruned = copy.deepcopy(model)
    targets = [
        (m, "weight") for m in pruned.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))
    ]
    if rate > 0:
        orders = [list(module._parameters) for module, _ in targets]
        prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=rate)
        for (module, name), order in zip(targets, orders):
            prune.remove(module, name)  # bake the mask in: the result is a plain released model again
            module._parameters = {key: module._parameters[key] for key in order}  # and its key order
    return pruned


def prune_sweep(
    released: nn.Module,
    key: OwnerKey,
    owner_test: Dataset,
    rates: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    trigger: TriggerSet | None = None,
    rule: VerdictRule = VerdictRule(),
) -> dict[str, Any]:
    """Prune at each rate; curves of attacker accuracy, passport-aware accuracy, triggers, detection."""
    rows: list[dict[str, Any]] = []
    for rate in rates:
        pruned = prune_model(released, rate)
        report = verify(pruned, key, data=owner_test, trigger=trigger, rule=rule)
        rows.append(
            {
                "rate": rate,
                "attacker_accuracy": accuracy(pruned, owner_test),
                "passport_aware_accuracy": report.passport_aware_accuracy,
                "trigger_accuracy": report.trigger_accuracy,
                "signature_detection": report.signature_detection,
                "signature_p_value": report.signature_p_value,
                "signature_log10_p_value": report.signature_log10_p_value,
                "verified": report.verified,
            }
        )
    held = None  # the highest rate up to which every tested rate still verifies
    for row in sorted(rows, key=lambda r: r["rate"]):
        if not row["verified"]:
            break
        held = row["rate"]
    return {
        "attack": "prune",
        "threat_model": THREAT_MODEL,
        "rows": rows,
        "highest_rate_still_verified": held,
    }


@register_attack(
    "prune",
    "global magnitude pruning of conv/linear weights, swept over rates",
    options=(
        Option(
            "rates",
            "comma-separated shares of weights pruned, each in [0, 1); model/ holds the last",
            float,
            [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
            listed=True,
        ),
    ),
)
def run_prune(context: AttackContext) -> AttackResult:
    rates = context.settings["rates"]
    report = prune_sweep(
        context.released,
        context.key,
        context.data.test,
        rates=rates,
        trigger=context.trigger,
        rule=context.rule,
    )
    rows = report["rows"]
    model = prune_model(context.released, rates[-1])
    curve = Plot(
        "prune.png",
        [r["rate"] for r in rows],
        {
            "attacker accuracy": [r["attacker_accuracy"] for r in rows],
            "passport-aware accuracy": [r["passport_aware_accuracy"] for r in rows],
            "trigger accuracy": [r["trigger_accuracy"] for r in rows],
            "signature detection": [r["signature_detection"] for r in rows],
        },
        "share of conv/linear weights pruned",
        "global magnitude pruning",
    )
    return AttackResult.of(report, model=model, plots=[curve])
