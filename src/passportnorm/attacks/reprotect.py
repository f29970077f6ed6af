"""Re-protection (overwriting): the thief protects the stolen release with passports of his own.

Threat model: the thief has the released weights, the architecture and labelled task data (a
held-out share), no key. He runs this library on the stolen model as an owner would (his own
passports of any kind, hash-bound signature, his own trigger set), trains k epochs at lr r,
strips the branch, certifies the result (later than the owner: a certificate carries the time it
was issued) and claims it. Success for him: his claim wins the dispute, or the owner's proof no
longer shows up. Both are measured: the owner's evidence in the thief's release, the full
verification for the record, and the dispute between the two claims (dispute.py).
"""

from __future__ import annotations

import contextlib
import copy
import io
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Subset, TensorDataset

from ..certificate import Certificate
from ..choices import PassportKind
from ..data.registry import DatasetSplits, first_inputs
from ..data.triggers import generate_triggers
from ..dispute import Claim, dispute
from ..evaluation import accuracy
from ..key import OwnerKey, extract_key
from ..progress import print_epoch
from ..protect import protect, strip
from ..train import TrainConfig, Trainer
from ..verify import VerdictRule, evidence_of, format_p_value, verify
from .registry import AttackContext, AttackResult, Option, register_attack

THREAT_MODEL = (
    "thief: released weights, architecture and labelled task data (a held-out share); no key. "
    "Action: protects the stolen model with {passports} passports of his own (hash-bound signature, "
    "own trigger set), trains {epochs} epochs at lr {lr}, strips, certifies and claims the result."
)


def reprotect(
    released: nn.Module,
    attacker: Subset,
    data: DatasetSplits,
    passports: PassportKind = "random",
    epochs: int = 2,
    lr: float = 0.01,
    seed: int = 77,
    trigger_kind: str = "noise",
    checkpoints: str | Path | None = None,
) -> tuple[nn.Module, OwnerKey]:
    """The thief's release and key: the stolen model protected with his own passports and trained."""
    indices = attacker.indices
    train = (
        TensorDataset(*[t[indices] for t in data.train.tensors])
        if isinstance(data.train, TensorDataset)
        else Subset(data.train, indices)  # a folder, read on access
    )
    split = replace(data, train=train)
    example = first_inputs(split.train, 8)
    thief = protect(
        copy.deepcopy(released),
        example,
        signature="(c) Thief",
        seed=seed,
        passports=passports,
        weak_layers="skip",
    )
    trigger = generate_triggers(20, data.input_shape, data.num_classes, seed=seed + 1, kind=trigger_kind)
    config = TrainConfig(epochs=epochs, lr=lr, seed=seed)
    trainer = Trainer(thief, split, config, trigger=trigger, out_dir=checkpoints)
    resume = checkpoints is not None and (Path(checkpoints) / "checkpoint.pt").is_file()
    shown = (lambda row: print_epoch(row, sys.stderr)) if checkpoints is not None else None  # the CLI job
    with contextlib.redirect_stderr(io.StringIO()):  # no progress bar: one line per epoch instead
        trainer.fit(resume=resume, on_epoch=shown)
    key = extract_key(thief, trigger=trigger)
    return strip(thief).eval(), key


def reprotect_attack(
    released: nn.Module,
    key: OwnerKey,
    owner_certificate: Certificate | None,
    attacker: Subset,
    data: DatasetSplits,
    passports: PassportKind = "random",
    epochs: int = 2,
    lr: float = 0.01,
    seed: int = 77,
    trigger_kind: str = "noise",
    rule: VerdictRule = VerdictRule(),
    checkpoints: str | Path | None = None,
) -> dict[str, Any]:
    """Run the attack; returns one row, the thief's model, key and certificate, and the dispute."""
    model, thief_key = reprotect(
        released, attacker, data, passports, epochs, lr, seed, trigger_kind, checkpoints
    )
    certificate = Certificate.issue(thief_key, model)
    owner = verify(model, key, data=data.test, trigger=key.trigger, rule=rule, reference=released)
    shows, why = rule.proof_shows(evidence_of(owner))
    row = {
        "thief_passports": passports,
        "epochs": epochs,
        "lr": lr,
        "attacker_accuracy": accuracy(model, data.test),
        "owner_signature_detection": owner.signature_detection,
        "owner_signature_p_value": format_p_value(owner.signature_p_value, owner.signature_log10_p_value),
        "owner_trigger_accuracy": owner.trigger_accuracy,
        "owner_passport_aware_accuracy": owner.passport_aware_accuracy,
        "owner_proof_shows": shows,
        "owner_fully_verified": owner.verified,
        "owner_failed_conditions": "; ".join(owner.failed_conditions) or None,
    }
    decision = None
    if owner_certificate is not None:
        claims = (
            Claim("owner", key, owner_certificate, released),
            Claim("thief", thief_key, certificate, model),
        )
        decision = dispute(model, *claims, rule=rule)
        row["dispute_winner"] = decision.winner or "nobody"
        row["decided_by"] = decision.decided_by
    return {
        "attack": "reprotect",
        "threat_model": THREAT_MODEL.format(passports=passports, epochs=epochs, lr=lr),
        "rows": [row],
        "owner_evidence": why,
        "dispute": decision.to_dict() if decision is not None else None,
        "model": model,
        "thief_key": thief_key,
        "thief_certificate": certificate,
    }


@register_attack(
    "reprotect",
    "protect the stolen model with the thief's own passports, certify it and claim it (decided by dispute)",
    options=(
        Option(
            "passports", "the thief's passports", default="random", choices=("random", "shuffle", "image")
        ),
        Option("lr", "the thief's learning rate", float, 0.01),
        Option(
            "certificate",
            "the owner's published certificate, for the dispute (default: certificate.json next to the key)",
        ),
    ),
    epochs=2,
)
def run_reprotect(context: AttackContext) -> AttackResult:
    from ..pipeline import DEFAULT_TRIGGER

    given = context.settings["certificate"]
    path = Path(given) if given else context.key_dir.parent / "certificate.json"
    certificate = Certificate.load(path) if given or path.is_file() else None
    report = reprotect_attack(
        context.released,
        context.key,
        certificate,
        context.attacker,
        context.data,
        passports=context.settings["passports"],
        epochs=context.epochs,
        lr=context.settings["lr"],
        seed=context.seed + 77,
        trigger_kind=DEFAULT_TRIGGER[context.data.task],
        rule=context.rule,
        checkpoints=context.out / "thief-checkpoints",
    )
    model = report.pop("model")
    claim = (report.pop("thief_key"), report.pop("thief_certificate"))
    report["attacker_samples"] = len(
        context.attacker
    )  # the thief trains on the whole share (not read through it)
    return AttackResult.of(report, model=model, thief_claim=claim)
