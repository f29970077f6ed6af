"""The field's rule for a removal (Lukas et al., "SoK: How Robust is Image Classification Deep
Neural Network Watermarking?", S&P 2022, the Watermark-Robustness-Toolbox): an attack removes the
watermark only if the owner's proof fails **and** the attacker's model stays within 5 points of the
original's accuracy. A model broken to remove the proof is no theft worth serving.

The owner's verdict (the default rule, aligned to the release where the attack is one alignment
undoes) is the threshold; forgeries (ambiguity, ERB, forge, spell) are not removals and get none.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MAX_ACCURACY_LOSS", "judge_removals", "owner_still_proves", "removal_succeeded"]

MAX_ACCURACY_LOSS = 0.05  # the attacker's model may trail the original by at most 5 points


def owner_still_proves(row: dict[str, Any]) -> bool | None:
    """Whether the owner's proof held on this row's model; None where the row is no removal."""
    for name in ("aligned_verified", "verified", "owner_proof_shows"):
        if name in row:
            return bool(row[name])
    if "white_box_verified" in row:  # distillation: either proof counts
        return bool(row["white_box_verified"] or row.get("black_box_verified"))
    return None


def removal_succeeded(original_accuracy: float, row: dict[str, Any]) -> bool | None:
    """The rule on one row: proof gone and accuracy kept; None where it does not apply."""
    proves = owner_still_proves(row)
    if proves is None or row.get("attacker_accuracy") is None:
        return None
    return not proves and original_accuracy - float(row["attacker_accuracy"]) <= MAX_ACCURACY_LOSS + 1e-9


def judge_removals(original_accuracy: float, rows: list[dict[str, Any]]) -> None:
    """Add ``removed`` (the rule's answer, None where it does not apply) to every row, in place."""
    for row in rows:
        row["removed"] = removal_succeeded(original_accuracy, row)
