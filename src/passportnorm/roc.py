"""How often an ownership test is right, over many pairs rather than one example: the share of
real copies it finds (true-positive rate) at a false-positive rate fixed on null pairs (a key or
fingerprint against a model that is not its owner's). A score is higher for "more like a copy".
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["roc_points", "tpr_at_fpr"]


def tpr_at_fpr(positive: Sequence[float], null: Sequence[float], fpr: float) -> float:
    """The share of positives strictly above the lowest threshold that leaves at most ``fpr`` of
    the nulls above it (ties at the threshold count against the test)."""
    if not positive or not null:
        raise ValueError("TPR at a fixed FPR needs positive and null scores")
    allowed = int(fpr * len(null))  # null pairs that may score above the threshold
    ranked = sorted(null, reverse=True)
    threshold = ranked[allowed] if allowed < len(ranked) else float("-inf")
    return sum(score > threshold for score in positive) / len(positive)


def roc_points(positive: Sequence[float], null: Sequence[float]) -> tuple[list[float], list[float]]:
    """(FPR, TPR) at every threshold ``score >= t`` over the scores seen, FPR ascending."""
    thresholds = sorted(set(positive) | set(null), reverse=True)
    fpr = [sum(n >= t for n in null) / len(null) for t in thresholds]
    tpr = [sum(p >= t for p in positive) / len(positive) for t in thresholds]
    return fpr, tpr
