"""Combined removal attacks: the removal literature's chains (WRT, S&P 2022), e.g. prune + fine-tune
+ obfuscate, which removed every scheme it tested.

Threat model: the union of the chained steps' threat models (released weights and architecture,
labelled task data for the training steps; no key). The steps run in the order given; the
strength sweep (``rates``) sets the pruning share of the prune or fine-prune step. The owner
verifies the end result with the key and the owner's release as the alignment reference.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..data.triggers import TriggerSet
from ..errors import ConfigError, OwnerKeyError
from ..evaluation import accuracy
from ..key import OwnerKey
from ..verify import VerdictRule
from .dummy import add_dummy_neurons
from .evidence import boundary, owner_row
from .fineprune import _apply, prune_channels
from .finetune import finetune
from .obfuscate import obfuscate
from .prune import prune_model
from .quantize import dequantize_into, quantize
from .registry import ATTACKER_LR, AttackContext, AttackResult, Option, register_attack

THREAT_MODEL = (
    "attacker: released weights, architecture and labelled task data (a held-out share); no key. "
    "Action: {steps} in this order ({epochs} fine-tuning epochs, SGD lr {lr}), at each pruning share."
)


def _steps(
    attacker: Dataset,
    owner_test: Dataset,
    key: OwnerKey,
    example: torch.Tensor,
    epochs: int,
    lr: float,
    seed: int,
) -> dict[str, Callable[[nn.Module, float], nn.Module]]:
    def tune(model, after_step=None):
        return finetune(
            model,
            key,
            attacker,
            owner_test,
            epochs=epochs,
            lr=lr,
            seed=seed,
            after_step=after_step,
            reference=None,
        )["model"]

    def fine_prune(model, rate):
        pruned, masks = prune_channels(model, rate, attacker, example)
        return tune(pruned, lambda m: _apply(dict(m.named_modules()), masks))

    return {
        "prune": lambda model, rate: prune_model(model, rate),
        "fine-prune": fine_prune,
        "finetune": lambda model, rate: tune(model),
        "quantize": lambda model, rate: dequantize_into(
            model, quantize(model, "int8-static", example), example[:8]
        ),
        "dummy-neurons": lambda model, rate: add_dummy_neurons(model, example, 0.1, seed)[0],
        "obfuscate": lambda model, rate: obfuscate(model, example, seed=seed)[0],
    }


COMBINED_STEPS = ("prune", "fine-prune", "finetune", "quantize", "dummy-neurons", "obfuscate")


def combined_attack(
    released: nn.Module,
    key: OwnerKey,
    attacker: Dataset,
    owner_test: Dataset,
    example: torch.Tensor,
    steps: Sequence[str] = ("prune", "finetune", "dummy-neurons", "obfuscate"),
    rates: Sequence[float] = (0.3, 0.5, 0.7, 0.9),
    epochs: int = 5,
    lr: float = 0.01,
    seed: int = 0,
    trigger: TriggerSet | None = None,
    rule: VerdictRule = VerdictRule(),
) -> dict[str, Any]:
    """Run the chain at each pruning share; rows with the attacker's accuracy and the owner's verdict."""
    unknown = [s for s in steps if s not in COMBINED_STEPS]
    if unknown or not steps:
        raise ConfigError(
            f"unknown combined step {unknown[0] if unknown else '(none)'!r}; chain any of "
            f"{', '.join(COMBINED_STEPS)}, comma-separated"
        )
    run = _steps(attacker, owner_test, key, example, epochs, lr, seed)
    rows, model = [], released
    for rate in rates:
        model = released
        for step in steps:
            model = run[step](model, rate).eval()
        try:
            rows.append({"rate": rate, **owner_row(model, key, owner_test, released, trigger, rule)})
        except OwnerKeyError as error:  # the chain left a structure the key cannot be put on
            rows.append(
                {
                    "rate": rate,
                    "attacker_accuracy": accuracy(model, owner_test),
                    "verified": False,
                    "not_verifiable": str(error),
                }
            )
    return {
        "attack": "combined",
        "threat_model": THREAT_MODEL.format(steps=" + ".join(steps), epochs=epochs, lr=lr),
        "rows": rows,
        **boundary(rows),
        "model": model,
    }


@register_attack(
    "combined",
    "a chain of attacks, each on the last one's result",
    options=(
        Option(
            "steps",
            "the chain, comma-separated, of " + ", ".join(COMBINED_STEPS),
            str,
            ["prune", "finetune", "dummy-neurons", "obfuscate"],
            listed=True,
        ),
        Option(
            "rates",
            "comma-separated pruning shares, one chain each",
            float,
            [0.3, 0.5, 0.7, 0.9],
            listed=True,
        ),
        ATTACKER_LR,
    ),
)
def run_combined(context: AttackContext) -> AttackResult:
    rates = context.settings["rates"]
    report = combined_attack(
        context.released,
        context.key,
        context.attacker,
        context.data.test,
        context.example,
        steps=tuple(context.settings["steps"]),
        rates=rates,
        epochs=context.epochs,
        lr=context.settings["lr"],
        seed=context.seed,
        trigger=context.trigger,
        rule=context.rule,
    )
    model_is = f"the chain's result at pruning share {rates[-1]} (verify it with --reference)"
    return AttackResult.of(report, model=report.pop("model"), model_is=model_is)
