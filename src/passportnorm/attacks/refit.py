"""REFIT-style fine-tuning (Chen et al., "REFIT: A Unified Watermark Removal Framework for Deep
Learning Systems with Limited Data", AsiaCCS 2021), swept over the peak learning rate.

Threat model: the attacker has the released weights, the architecture and some labelled data of
the task (a held-out share), no key. REFIT's finding: fine-tuning all layers with a learning rate
large enough to carry the weights far from the release, warmed up and then decayed so that the
accuracy comes back, removes watermarks that small-rate fine-tuning leaves. Each peak rate is
one FTAL run with that schedule (finetune.warmup_cosine). REFIT's two refinements, elastic weight
consolidation and augmentation with unlabelled data, are not here: both serve to keep accuracy
with less data, and the rows report the accuracy the plain schedule keeps.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.utils.data import Dataset

from ..data.triggers import TriggerSet
from ..key import OwnerKey
from ..verify import VerdictRule
from .finetune import OPTIMIZERS, finetune
from .registry import AttackContext, AttackResult, Option, Plot, register_attack
from .removal import MAX_ACCURACY_LOSS

THREAT_MODEL = (
    "attacker: released weights, architecture and labelled task data (a held-out share); no key. "
    "Action: FTAL for {epochs} epochs ({optimizer}), the learning rate warmed up linearly over "
    "{warmup:.0%} of the steps to a peak of {lrs} and cosine-decayed to 0 (REFIT). Owner: verifies with "
    "the key after the last epoch."
)
PEAK_RATES = [0.01, 0.03, 0.1, 0.3]


def refit_sweep(
    released: nn.Module,
    key: OwnerKey,
    attacker_data: Dataset,
    owner_test: Dataset,
    lrs: list[float],
    epochs: int = 5,
    warmup: float = 0.1,
    seed: int = 0,
    trigger: TriggerSet | None = None,
    rule: VerdictRule = VerdictRule(),
    checkpoints: Any = None,
    optimizer_name: str = "sgd",
) -> dict[str, Any]:
    """One row per peak rate (the owner's verdict after the last epoch); the model kept is the one
    of the largest rate whose accuracy stayed within 5 points of the release's first row."""
    rows, models = [], []
    for lr in lrs:
        checkpoint = None if checkpoints is None else checkpoints / f"lr-{lr:g}.pt"
        report = finetune(
            released,
            key,
            attacker_data,
            owner_test,
            mode="ftal",
            epochs=epochs,
            lr=lr,
            seed=seed,
            trigger=trigger,
            rule=rule,
            checkpoint=checkpoint,
            warmup=warmup,
            optimizer_name=optimizer_name,
        )
        first, last = report["rows"][0], report["rows"][-1]
        rows.append({"peak_lr": lr, **{k: v for k, v in last.items() if k != "epoch"}})
        models.append(
            (first["attacker_accuracy"] - last["attacker_accuracy"] <= MAX_ACCURACY_LOSS, report["model"])
        )
    usable = [model for kept, model in models if kept]
    return {
        "attack": "refit",
        "threat_model": THREAT_MODEL.format(
            epochs=epochs,
            warmup=warmup,
            lrs=", ".join(f"{lr:g}" for lr in lrs),
            optimizer="SGD, momentum 0.9" if optimizer_name == "sgd" else "Adam",
        ),
        "rows": rows,
        "model": usable[-1] if usable else models[-1][1],
    }


@register_attack(
    "refit",
    "fine-tune all layers with a large, warmed-up and decayed learning rate, swept (REFIT)",
    options=(
        Option("lrs", "comma-separated peak learning rates", float, PEAK_RATES, listed=True),
        Option("warmup", "the share of the steps the rate rises over", float, 0.1),
        Option(
            "optimizer",
            "the attacker's optimizer (adam: a transformer's recipe)",
            default="sgd",
            choices=OPTIMIZERS,
        ),
    ),
)
def run_refit(context: AttackContext) -> AttackResult:
    report = refit_sweep(
        context.released,
        context.key,
        context.attacker,
        context.data.test,
        lrs=sorted(context.settings["lrs"]),
        epochs=context.epochs,
        warmup=context.settings["warmup"],
        seed=context.seed,
        trigger=context.trigger,
        rule=context.rule,
        checkpoints=context.out,
        optimizer_name=context.settings["optimizer"],
    )
    rows = report["rows"]
    curve = Plot(
        "refit.png",
        [r["peak_lr"] for r in rows],
        {
            "attacker accuracy": [r["attacker_accuracy"] for r in rows],
            "signature detection": [r["signature_detection"] for r in rows],
            "passport-aware accuracy": [r["passport_aware_accuracy"] for r in rows],
        },
        "peak learning rate",
        "REFIT-style fine-tuning (FTAL, warm-up and cosine decay)",
    )
    model_is = "the fine-tune of the largest peak rate that kept the accuracy within 5 points"
    return AttackResult.of(report, model=report.pop("model"), model_is=model_is, plots=[curve])
