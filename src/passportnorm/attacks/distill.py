"""Knowledge distillation (model extraction): a fresh model trained on the release's answers.

Threat model: the attacker can query the released model (or holds it) and has unlabelled task
inputs; no key. He trains a freshly initialised model of the same architecture to match the
release's softened outputs (Hinton et al., 2015: KL at temperature T, scaled by T^2). The copy's
weights owe nothing to the owner's, so no white-box proof can be read from them: the owner must
not be verified white-box (a verification would be a false positive). Only the trigger set can
speak, and only if the copy learned the owner's trigger answers from the release's outputs on
task inputs: the row reports how many it gives and that count's p-value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..errors import ConfigError
from ..evaluation import accuracy
from ..key import OwnerKey
from ..verify import VerdictRule, format_p_value, verify, verify_blackbox
from .checkpoint import resume_state, save_state
from .registry import AttackContext, AttackResult, Option, register_attack

THREAT_MODEL = (
    "attacker: queries to the released model and unlabelled task inputs (a held-out share); no key. "
    "Action: trains a fresh {arch} for {epochs} epochs (SGD lr {lr}) on the release's outputs at "
    "temperature {temperature}. Owner: white-box verification, and the trigger set as black-box evidence."
)


def distill(
    teacher: nn.Module,
    student: nn.Module,
    inputs: Dataset,
    epochs: int = 10,
    lr: float = 0.05,
    temperature: float = 4.0,
    seed: int = 0,
    checkpoint: str | Path | None = None,
) -> nn.Module:
    """``student`` trained to imitate ``teacher`` on ``inputs`` (labels, if any, are not used)."""
    if temperature <= 0:
        raise ConfigError(f"distillation temperature {temperature} must be positive")
    teacher.eval()
    optimizer = torch.optim.SGD(student.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    config = {"attack": "distill", "lr": lr, "temperature": temperature, "seed": seed}
    _, start = resume_state(checkpoint, student, optimizer, [], config)
    for epoch in range(start, epochs + 1):
        student.train()
        order = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        for x, *_ in DataLoader(inputs, batch_size=64, shuffle=True, generator=order):
            with torch.no_grad():
                target = F.softmax(teacher(x) / temperature, dim=1)
            loss = F.kl_div(F.log_softmax(student(x) / temperature, dim=1), target, reduction="batchmean")
            optimizer.zero_grad(set_to_none=True)
            (loss * temperature**2).backward()
            optimizer.step()
        save_state(checkpoint, student, optimizer, [], epoch, config)
    return student.eval()


def distill_attack(
    released: nn.Module,
    fresh: nn.Module,
    key: OwnerKey,
    attacker_data: Dataset,
    owner_test: Dataset,
    arch: str = "model",
    epochs: int = 10,
    lr: float = 0.05,
    temperature: float = 4.0,
    seed: int = 0,
    rule: VerdictRule = VerdictRule(),
    checkpoint: str | Path | None = None,
) -> dict[str, Any]:
    """Distil ``fresh`` from ``released``; one row with the copy's accuracy and both kinds of evidence."""
    torch.manual_seed(seed)
    student = distill(released, fresh, attacker_data, epochs, lr, temperature, seed, checkpoint)
    white = verify(student, key, data=owner_test, rule=rule, reference=released)
    row = {
        "temperature": temperature,
        "epochs": epochs,
        "released_accuracy": accuracy(released, owner_test),
        "attacker_accuracy": accuracy(student, owner_test),
        "signature_detection": white.signature_detection,
        "signature_p_value": format_p_value(white.signature_p_value, white.signature_log10_p_value),
        "white_box_verified": white.verified,
    }
    if key.trigger is not None:
        black = verify_blackbox(student, key.trigger, rule=rule)
        teacher = verify_blackbox(released, key.trigger, rule=rule)
        row.update(
            {
                "released_trigger_accuracy": teacher.trigger_accuracy,
                "trigger_matches": f"{black.trigger_matches}/{black.trigger_count}",
                "trigger_p_value": format_p_value(black.trigger_p_value, black.trigger_log10_p_value),
                "black_box_verified": black.verified,
            }
        )
    return {
        "attack": "distill",
        "threat_model": THREAT_MODEL.format(arch=arch, epochs=epochs, lr=lr, temperature=temperature),
        "rows": [row],
        "model": student,
    }


@register_attack(
    "distill",
    "train a fresh model of the same architecture on the released model's outputs",
    options=(Option("lr", "the student's learning rate", float, 0.05),),
    epochs=10,
)
def run_distill(context: AttackContext) -> AttackResult:
    from .. import zoo

    arch = context.meta["arch"]
    trusted = context.settings["arch"] == arch
    with torch.random.fork_rng():  # the student's initialisation follows the attack's seed, and only it
        torch.manual_seed(context.seed)
        fresh = zoo.build(arch, trust_code=trusted, **context.meta.get("model_config", {}))
    report = distill_attack(
        context.released,
        fresh,
        context.key,
        context.attacker,
        context.data.test,
        arch=arch,
        epochs=context.epochs,
        lr=context.settings["lr"],
        seed=context.seed,
        rule=context.rule,
        checkpoint=context.out / "checkpoint.pt",
    )
    return AttackResult.of(report, model=report.pop("model"))
