"""Ownership disputes between two claimants, decided on the evidence each proof leaves.

Each claim is a key, its certificate (published at release: key hash, released-model hash, UTC
time) and the certified released model. A claim counts only if its certificate commits to both
and its proof shows up in its own release. Then each proof is looked for in the suspect and in
the other party's release: admissible signature bits far beyond chance, or trigger answers far
beyond chance (``VerdictRule.proof_shows``). A full verification is not asked for: its accuracy
conditions guard against forged branches, which hash-bound bits already exclude, and a thief can
break them by training the stolen model (docs/SECURITY.md, re-protection).

Certified times order the claims, and derivation runs only forward in time: evidence of the
later claimant that already shows up in the earlier release says nothing about who took from
whom (it was there before the later claim existed; a label set read off the stolen model does
that), so it is void against the earlier claimant. Of the proofs left that show up in the
suspect, one wins alone; with two, the one whose proof shows up in the other's release wins, then
the earlier. Every check offers the claimant's own release as the alignment reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from .certificate import Certificate
from .errors import ConfigError
from .key import OwnerKey
from .verify import VerdictRule, evidence_of, format_p_value, verify

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
        lines = [
            "### Dispute",
            "",
            "| claimant's proof | looked for in | shows up | signature detection | signature p-value "
            "| triggers | trigger p-value | full verification |",
            "|---|---|---|---:|---|---|---|---|",
        ]
        for row in self.rows:
            triggers = (
                "-" if row["trigger_matches"] is None else f"{row['trigger_matches']}/{row['trigger_count']}"
            )
            full = {True: "yes", False: "no", None: "-"}[row["verified"]]
            lines.append(
                f"| {row['claimant']} | {row['model']} | {'**yes**' if row['shows'] else 'no'} | "
                f"{row['detection']:.1%} | {row['p_value']} | {triggers} | "
                f"{row['trigger_p_value'] or '-'} | {full} |"
            )
        lines += ["", f"**Decision: {self.winner or 'no owner proven'}**, by: {self.decided_by}"]
        lines += [f"- {note}" for note in self.notes]
        lines += [
            "",
            "A proof shows up when its hash-bound signature bits or its trigger answers match far beyond "
            "chance; the full verification (accuracy conditions included) is reported, not decisive.",
        ]
        return "\n".join(lines)


def _paperwork(claim: Claim) -> str | None:
    """Why the claim's paperwork fails, or None when its certificate commits to its key and release."""
    if claim.certificate.key_sha256 != claim.key.digest():
        return f"{claim.name}: the certificate does not commit to this key"
    if not claim.certificate.matches_released(claim.released):
        return f"{claim.name}: the released model is not the one the certificate commits to"
    return None


def _look(
    claim: Claim, model: nn.Module, label: str, data: Dataset | None, rule: VerdictRule
) -> dict[str, Any]:
    """One row: does ``claim``'s proof show up in ``model``, and on what evidence."""
    report = verify(
        model, claim.key, data=data, trigger=claim.key.trigger, rule=rule, reference=claim.released
    )
    shows, why = rule.proof_shows(evidence_of(report))
    trigger_p = (
        None
        if report.trigger_count is None
        else format_p_value(report.trigger_p_value, report.trigger_log10_p_value)
    )
    return {
        "claimant": claim.name,
        "model": label,
        "shows": shows,
        "why": why,
        "detection": report.signature_detection,
        "p_value": format_p_value(report.signature_p_value, report.signature_log10_p_value),
        "trigger_matches": report.trigger_matches,
        "trigger_count": report.trigger_count,
        "trigger_p_value": trigger_p,
        "verified": report.verified if data is not None else None,
    }


def dispute(
    suspect: nn.Module,
    first: Claim,
    second: Claim,
    data: Dataset | None = None,
    rule: VerdictRule = VerdictRule(),
) -> DisputeResult:
    """Decide which claimant owns ``suspect`` (see the module docstring); the order of claims does not matter.
    ``data`` adds each full verification to the rows, for the record; it does not decide."""
    if first.name == second.name:
        raise ConfigError(f"both claims are named {first.name!r}; give each claimant its own name")
    claims = {first.name: first, second.name: second}
    notes, rows, shows = [], [], {}
    for claim, other in ((first, second), (second, first)):
        for role, label, model in (
            ("suspect", "suspect", suspect),
            ("own", f"{claim.name}'s own release", claim.released),
            ("other", f"{other.name}'s certified release", other.released),
        ):
            rows.append(_look(claim, model, label, data, rule))
            shows[(claim.name, role)] = rows[-1]["shows"]
    in_suspect = {name: shows[(name, "suspect")] for name in claims}
    in_other = {name: shows[(name, "other")] for name in claims}
    eligible = {}
    for name, claim in claims.items():
        reason = _paperwork(claim) or (
            None if shows[(name, "own")] else f"{name}: the proof does not show up in its own release"
        )
        eligible[name] = reason is None
        notes += [reason] if reason else []
    earlier, later = sorted((first, second), key=lambda c: c.certificate.created_utc)
    ordered = earlier.certificate.created_utc < later.certificate.created_utc
    void = ordered and eligible[earlier.name] and in_other[later.name]
    if void:
        notes.append(
            f"{later.name}'s evidence already shows up in {earlier.name}'s release, certified "
            f"{earlier.certificate.created_utc}, before {later.name}'s certificate "
            f"({later.certificate.created_utc}): it cannot show that {earlier.name} took the model"
        )
    candidates = [
        c for c in (earlier, later) if eligible[c.name] and in_suspect[c.name] and not (void and c is later)
    ]
    if not candidates:
        return DisputeResult(None, "no valid claimant's proof shows up in the suspect", rows, notes)
    if len(candidates) == 1:
        return DisputeResult(
            candidates[0].name,
            "only this claimant's proof (with valid certificate) shows up in the suspect",
            rows,
            notes,
        )
    if in_other[first.name] != in_other[second.name]:
        winner, loser = (first, second) if in_other[first.name] else (second, first)
        return DisputeResult(
            winner.name,
            f"both proofs show up in the suspect; {winner.name}'s also shows up in "
            f"{loser.name}'s certified release and not the reverse: {loser.name}'s model "
            f"derives from {winner.name}'s",
            rows,
            notes,
        )
    if not ordered:
        return DisputeResult(
            None, "both proofs show up and the certificates carry the same time", rows, notes
        )
    return DisputeResult(
        earlier.name,
        f"both proofs show up in the suspect; the earlier certified release wins "
        f"({earlier.certificate.created_utc} before {later.certificate.created_utc})",
        rows,
        notes,
    )
