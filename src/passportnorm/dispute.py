"""Ownership disputes between two claimants, decided on the evidence each proof leaves.

Each claim is a key, its certificate (published at release: key hash, released-model hash, and
optionally an RFC 3161 time-stamp token) and the certified released model. A claim counts only if
its certificate commits to both and its proof shows up in its own release. Then each proof is
looked for in the suspect and in the other party's release: admissible signature bits far beyond
chance, or trigger answers far beyond chance (``VerdictRule.proof_shows``). A full verification
is not asked for: its accuracy conditions guard against forged branches, which hash-bound bits
already exclude, and a thief can break them by training the stolen model (docs/SECURITY.md).

Of the claims whose proof shows up in the suspect, one wins alone. With two, derivation decides:
the claimant whose hash-bound bits show up in the other's certified release wins, since such bits
cannot be planted in a model that already exists (each try is a fresh 2^-128 draw). Trigger
answers do not show derivation by themselves: a claimant can label a trigger set with the other
model's own predictions. Only then does time decide, and only time a trusted time-stamp authority
attests (``--tsa-root``): the earlier attested certificate wins, and the later claimant's trigger
answers that already show up in the earlier release are void. A certificate's own
``created_utc`` is its issuer's word and orders nothing, and no hash-bound bits are voided by
time. Without attested times the dispute is undecided, with the reason. Every check offers the
claimant's own release as the alignment reference, and a retrofit claim counts only with the
ancestor its key records (verify.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
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
    evidence = evidence_of(report)
    shows, why = rule.proof_shows(evidence)
    trigger_p = (
        None
        if report.trigger_count is None
        else format_p_value(report.trigger_p_value, report.trigger_log10_p_value)
    )
    return {
        "claimant": claim.name,
        "model": label,
        "shows": shows,
        "bits_show": rule.proof_shows(replace(evidence, trigger_count=None))[0],
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
    tsa_roots: list[Any] | None = None,
) -> DisputeResult:
    """Decide which claimant owns ``suspect`` (see the module docstring); the order of claims does not
    matter. ``data`` adds each full verification to the rows, for the record; it does not decide.
    ``tsa_roots``: the time-stamp authorities' root certificates the verifier trusts."""
    if first.name == second.name:
        raise ConfigError(f"both claims are named {first.name!r}; give each claimant its own name")
    claims = {first.name: first, second.name: second}
    notes, rows, found = [], [], {}
    for claim, other in ((first, second), (second, first)):
        for role, label, model in (
            ("suspect", "suspect", suspect),
            ("own", f"{claim.name}'s own release", claim.released),
            ("other", f"{other.name}'s certified release", other.released),
        ):
            rows.append(_look(claim, model, label, data, rule))
            found[(claim.name, role)] = rows[-1]
    eligible = {}
    for name, claim in claims.items():
        reason = _paperwork(claim) or (
            None
            if found[(name, "own")]["shows"]
            else f"{name}: the proof does not show up in its own release"
        )
        eligible[name] = reason is None
        notes += [reason] if reason else []
    times = _attested_times(claims, tsa_roots or [], notes)
    candidates = [c for c in (first, second) if eligible[c.name] and found[(c.name, "suspect")]["shows"]]
    if not candidates:
        return DisputeResult(None, "no valid claimant's proof shows up in the suspect", rows, notes)
    if len(candidates) == 1:
        return DisputeResult(
            candidates[0].name,
            "only this claimant's proof (with valid certificate) shows up in the suspect",
            rows,
            notes,
        )
    return _between_two(first, second, found, times, rows, notes)


def _attested_times(
    claims: dict[str, Claim], roots: list[Any], notes: list[str]
) -> dict[str, datetime | None]:
    """Each claim's time as a trusted TSA attests it (None where none does), with a note why."""
    times = {}
    for name, claim in claims.items():
        times[name], why = claim.certificate.attested_utc(roots)
        notes.append(
            f"{name}'s certificate time: {why} (created_utc {claim.certificate.created_utc} not used)"
        )
    return times


def _between_two(
    first: Claim,
    second: Claim,
    found: dict[tuple[str, str], dict[str, Any]],
    times: dict[str, datetime | None],
    rows: list[dict[str, Any]],
    notes: list[str],
) -> DisputeResult:
    """Both proofs show up in the suspect: derivation by hash-bound bits, then attested time."""
    derives = {c.name: found[(c.name, "other")]["bits_show"] for c in (first, second)}
    if derives[first.name] != derives[second.name]:
        winner, loser = (first, second) if derives[first.name] else (second, first)
        return DisputeResult(
            winner.name,
            f"both proofs show up in the suspect; {winner.name}'s hash-bound bits also show up in "
            f"{loser.name}'s certified release and not the reverse: {loser.name}'s model derives from "
            f"{winner.name}'s",
            rows,
            notes,
        )
    t1, t2 = times[first.name], times[second.name]
    if t1 is None or t2 is None or t1 == t2:
        why = (
            "no attested times order the claims"
            if t1 is None or t2 is None
            else "the attested times are equal"
        )
        return DisputeResult(
            None,
            f"undecided: both proofs show up in the suspect, the hash-bound bits show no derivation either "
            f"way, and {why} (time-stamp both certificates: certify --tsa)",
            rows,
            notes,
        )
    earlier, later = (first, second) if t1 < t2 else (second, first)
    if found[(later.name, "other")]["shows"]:
        notes.append(
            f"{later.name}'s evidence already shows up in {earlier.name}'s release, attested "
            f"{times[earlier.name]}, before {later.name}'s ({times[later.name]}): void against "
            f"{earlier.name} (trigger labels can be read off an existing model)"
        )
    return DisputeResult(
        earlier.name,
        f"both proofs show up in the suspect; the earlier attested certificate wins "
        f"({times[earlier.name]} before {times[later.name]})",
        rows,
        notes,
    )
