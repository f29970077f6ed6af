"""What the owner can still show after an attack: one row per attacked model, and where the proof stops.

Shared by the attacks that sweep a strength (fine-pruning, combined chains) or produce one model
per setting (quantization), so every table reports the same columns the same way.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.utils.data import Dataset

from ..data.triggers import TriggerSet
from ..errors import ConfigError
from ..evaluation import accuracy
from ..key import OwnerKey
from ..verify import VerdictRule, evidence_of, format_p_value, verify

NO_ATTACKER_DATA = "the attacker has no data: give a non-empty attacker split"


def require_data(data: Any, message: str = NO_ATTACKER_DATA) -> None:
    """Attacks that train need examples; an empty split is one line saying so."""
    if len(data) == 0:
        raise ConfigError(message)


def owner_row(
    model: nn.Module,
    key: OwnerKey,
    owner_test: Dataset,
    released: nn.Module,
    trigger: TriggerSet | None,
    rule: VerdictRule,
) -> dict[str, Any]:
    """The owner's full verification of an attacked model (aligned to the release), the conditions it
    failed, and whether the owner's proof still shows (the evidence a dispute decides on)."""
    report = verify(model, key, data=owner_test, trigger=trigger, rule=rule, reference=released)
    return {
        "attacker_accuracy": accuracy(model, owner_test),
        "signature_detection": report.signature_detection,
        "signature_p_value": format_p_value(report.signature_p_value, report.signature_log10_p_value),
        "passport_aware_accuracy": report.passport_aware_accuracy,
        "trigger_accuracy": report.trigger_accuracy,
        "alignment_used": (report.alignment or {}).get("used"),
        "verified": report.verified,
        "failed": "; ".join(c.split(":")[0] for c in report.failed_conditions) or None,
        "proof_shows": rule.proof_shows(evidence_of(report))[0],
    }


def boundary(rows: list[dict[str, Any]], setting: str = "rate") -> dict[str, Any]:
    """The last setting still verified and the first that is not, with the attacker's accuracy there."""
    ordered = sorted(rows, key=lambda r: r[setting])
    first_lost = next((r for r in ordered if not r["verified"]), None)
    held = [r for r in ordered if r["verified"] and (first_lost is None or r[setting] < first_lost[setting])]
    return {
        "last_verified": held[-1][setting] if held else None,
        "attacker_accuracy_at_last_verified": held[-1]["attacker_accuracy"] if held else None,
        "first_not_verified": first_lost[setting] if first_lost else None,
        "attacker_accuracy_at_first_not_verified": first_lost["attacker_accuracy"] if first_lost else None,
        "last_proof_shows": max((r[setting] for r in ordered if r.get("proof_shows")), default=None),
    }
