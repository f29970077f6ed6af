"""Ownership disputes between two claimants, decided by the classic rule for passport schemes.

Each claim is a key, its certificate (published at release: key hash, released-model hash, UTC
time) and the certified released model. A claim counts only if its certificate commits to both.
Then every key is checked on the suspect and on the other party's certified release. The genuine
owner's proof shows up in a model derived from theirs, not the reverse; when both (or neither)
cross-verify, the earlier certified release wins. Every check offers the claimant's own release
as the alignment reference, so channel obfuscation cannot hide a proof (the alignment is used
only when the model is a rearranged copy of that release: see verify.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from .certificate import Certificate
from .key import OwnerKey
from .verify import VerdictRule, format_p_value, verify

__all__ = ["Claim", "DisputeResult", "dispute"]


@dataclass
class Claim:
    """One party's evidence: key, certificate and the released model the certificate names."""

    name: str
    key: OwnerKey
    certificate: Certificate
    released: nn.Module


@dataclass
class DisputeResult:
    winner: str | None
    decided_by: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"winner": self.winner, "decided_by": self.decided_by, "rows": self.rows, "notes": self.notes}

    def to_markdown(self) -> str:
        lines = ["### Dispute", "", "| claimant's key | checked on | verified | signature detection | p-value |", "|---|---|---|---:|---|"]
        for row in self.rows:
            lines.append(f"| {row['claimant']} | {row['model']} | {'yes' if row['verified'] else 'no'} | "
                         f"{row['detection']:.1%} | {row['p_value']} |")
        lines += ["", f"**Decision: {self.winner or 'no owner proven'}**, by: {self.decided_by}"]
        lines += [f"- {note}" for note in self.notes]
        return "\n".join(lines)


def _valid(claim: Claim) -> str | None:
    """Why the claim's paperwork fails, or None when its certificate commits to its key and release."""
    if claim.certificate.key_sha256 != claim.key.digest():
        return f"{claim.name}: the certificate does not commit to this key"
    if not claim.certificate.matches_released(claim.released):
        return f"{claim.name}: the released model is not the one the certificate commits to"
    return None


def dispute(suspect: nn.Module, first: Claim, second: Claim, data: Dataset | None = None,
            rule: VerdictRule = VerdictRule()) -> DisputeResult:
    """Decide which claimant owns ``suspect`` (see the module docstring); the order of claims does not matter."""
    notes = [reason for reason in (_valid(first), _valid(second)) if reason]
    valid = {c.name: _valid(c) is None for c in (first, second)}
    rows, verdict = [], {}
    for claim, other in ((first, second), (second, first)):
        for checked, label, model in (("suspect", "suspect", suspect),
                                      (other.name, f"{other.name}'s certified release", other.released)):
            report = verify(model, claim.key, data=data, rule=rule, reference=claim.released)
            verdict[(claim.name, checked)] = report.verified and valid[claim.name]
            rows.append({"claimant": claim.name, "model": label, "verified": report.verified,
                         "detection": report.signature_detection,
                         "p_value": format_p_value(report.signature_p_value, report.signature_log10_p_value)})
    on_suspect = {c.name: verdict[(c.name, "suspect")] for c in (first, second)}
    if on_suspect[first.name] != on_suspect[second.name]:
        winner = first.name if on_suspect[first.name] else second.name
        return DisputeResult(winner, "only this claimant's proof (with valid certificate) shows up in the suspect", rows, notes)
    if not any(on_suspect.values()):
        return DisputeResult(None, "neither claimant's proof shows up in the suspect", rows, notes)
    in_other = {c.name: verdict[(c.name, o.name)] for c, o in ((first, second), (second, first))}
    if in_other[first.name] != in_other[second.name]:
        winner = first.name if in_other[first.name] else second.name
        loser = second.name if winner == first.name else first.name
        return DisputeResult(winner, f"{winner}'s proof shows up in {loser}'s certified release and not the reverse: "
                                     f"{loser}'s model derives from {winner}'s", rows, notes)
    earlier = min((first, second), key=lambda c: c.certificate.created_utc)
    later = second if earlier is first else first
    if earlier.certificate.created_utc == later.certificate.created_utc:
        return DisputeResult(None, "both proofs cross-verify and the certificates carry the same time", rows, notes)
    return DisputeResult(earlier.name, f"both proofs cross-verify; the earlier certified release wins "
                                       f"({earlier.certificate.created_utc} before {later.certificate.created_utc})", rows, notes)
