"""The one place that decides whether an ownership claim holds.

Every entry point (``verify``, ``verify_attached``, ``verify_blackbox``, the CLI, attacks,
disputes, ``protect``'s self-check, ``certify``) gathers its measurements into an
:class:`Evidence` and asks :meth:`VerdictRule.decide`, which returns the verdict with one reason
per condition. Nothing else sets ``verified``. Why each condition exists:

- the key must be admissible: hash-bound bits must follow from the key's passports and identity,
  and text signatures (forgeable in closed form, docs/SECURITY.md) count only on request;
- the signature bits must match far beyond chance (p <= 2^-128 for hash-bound keys);
- a channel alignment to a reference is used only when its match confidence shows the suspect
  is a rearranged copy; otherwise the bits are read as the suspect stands (docs/SECURITY.md,
  "Verification after alignment");
- with data, the passport-aware branch must classify about as well as the suspect itself does
  (the paper's condition) and clearly above chance (an absolute floor: a model at chance, or
  data of the wrong task, proves nothing, whatever the ratio of two chance accuracies);
- black-box alone: the trigger answers must match the owner's labels far beyond chance.

A dispute asks a narrower question (``proof_shows``): does a claimant's proof show up in a model
at all? Only the evidence a party cannot fake counts there (admissible signature bits, trigger
answers, each far beyond chance), not the accuracy conditions, which a thief can move by training
the stolen model (docs/SECURITY.md, re-protection).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.special import logsumexp
from scipy.stats import binom

from .binding import SECURITY_BITS, required_matches

__all__ = [
    "Evidence",
    "Verdict",
    "VerdictRule",
    "binomial_log10_p_value",
    "binomial_p_value",
    "format_p_value",
]


def binomial_p_value(matches: int, trials: int, chance: float) -> float:
    """P(X >= matches) for X ~ Binomial(trials, chance): how surprising the matches are by luck."""
    if trials <= 0:
        return 1.0
    return float(binom.sf(matches - 1, trials, chance))


def binomial_log10_p_value(matches: int, trials: int, chance: float) -> float:
    """log10 of the same tail, exact where the p-value itself underflows to 0 (e.g. 2**-1184)."""
    if trials <= 0 or matches <= 0:
        return 0.0
    terms = binom.logpmf(np.arange(matches, trials + 1), trials, chance)
    return float(logsumexp(terms) / np.log(10))


def format_p_value(p_value: float | None, log10_p: float | None) -> str:
    """A p-value as text: its digits, or its power of ten where it underflows; "-" when not measured."""
    if p_value is None or log10_p is None:
        return "-"
    return f"{p_value:.3g}" if p_value > 0 else f"10^{log10_p:.1f}"


@dataclass
class Evidence:
    """What was measured on one suspect; ``None`` where a measurement was not made."""

    signature_mode: str | None = None  # "hash" or "text", from the key (or the model that carries the branch)
    bits_follow_from_key: bool | None = (
        None  # hash-bound keys: are the bits the hash of identity and passports?
    )
    signature_bits: int | None = None
    signature_matches: int | None = None
    alignment_confidence: float | None = (
        None  # lowest per-layer match confidence, when an alignment was tried
    )
    alignment_used: bool | None = None
    alignment_uncounted: int | None = None  # layers whose bits a permutation put back: not counted
    # log2 of the residual-stream orders the alignment chose among (log2 width!): charged to the bits
    signature_search_log2: float = 0.0
    # retrofit keys: the proof read in the model the retrofit started from (None where not measured)
    ancestor_required: bool = False
    ancestor_given: bool | None = None
    ancestor_signature_shows: bool | None = None
    ancestor_triggers_show: bool | None = None
    passport_free_accuracy: float | None = None
    passport_aware_accuracy: float | None = None
    num_classes: int | None = None
    trigger_count: int | None = None
    trigger_matches: int | None = None
    trigger_chance: float | None = None


@dataclass
class Verdict:
    verified: bool
    reasons: list[str] = field(default_factory=list)  # one per condition, passed or failed
    failed: list[str] = field(default_factory=list)  # the reasons of the conditions that failed
    required_matches: int | None = None


@dataclass(frozen=True)
class VerdictRule:
    """When a claim counts as verified (see the module docstring for why each condition exists)."""

    max_signature_p_value: float = 1e-6
    security_bits: int = SECURITY_BITS  # hash-bound claims: p-value at most 2^-security_bits
    allow_text_signatures: bool = False
    max_accuracy_drop: float = 0.10  # passport-aware may trail passport-free by at most this (absolute)
    # the accuracy floor: passport-aware accuracy must cover this share of the way from chance to 100%
    min_accuracy_above_chance: float = 0.25
    # an alignment counts only when every aligned layer's filters match this well (mean |cosine|)
    min_alignment_confidence: float = 0.5
    max_trigger_p_value: float = 1e-6

    def signature_threshold(self, mode: str | None) -> float:
        """The p-value a white-box claim must reach: for hash-bound bits also the forgery bound,
        since each forgery try is a fresh draw of random bits (see binding.py)."""
        if mode == "hash":
            return min(self.max_signature_p_value, 2.0**-self.security_bits)
        return self.max_signature_p_value

    def accuracy_floor(self, num_classes: int) -> float:
        chance = 1.0 / num_classes
        return chance + self.min_accuracy_above_chance * (1.0 - chance)

    def accepts_alignment(self, lowest_confidence: float) -> bool:
        return lowest_confidence >= self.min_alignment_confidence

    def describe(self, mode: str | None = "hash") -> str:
        if mode == "hash":
            bound = (
                f"<= 2^-{self.security_bits} (hash-bound bits, which must follow from the key's passports "
                "and identity)"
            )
        elif self.allow_text_signatures:
            bound = (
                f"< {self.max_signature_p_value:g} (text signature, accepted on request: forgeable, "
                "see docs/SECURITY.md)"
            )
        else:
            bound = "from hash-bound bits (text signatures are refused: forgeable, see docs/SECURITY.md)"
        return (
            f"verified when the signature p-value {bound}, and, when data is given, passport-aware "
            "accuracy is "
            f"within {100 * self.max_accuracy_drop:g} points of passport-free accuracy and at least "
            f"{100 * self.min_accuracy_above_chance:g}% of the way from chance to 100%; an alignment to a "
            f"reference counts only at match confidence >= {self.min_alignment_confidence:g}; black-box "
            "alone: trigger p-value "
            f"< {self.max_trigger_p_value:g}"
        )

    # ------------------------------------------------------------------------------------------
    def decide(self, evidence: Evidence) -> Verdict:
        """The verdict and its reasons: white-box when signature bits were read, else black-box."""
        if evidence.signature_bits is None:
            return self._decide_blackbox(evidence)
        verdict = Verdict(verified=True)
        for check in (
            self._key_admissible,
            self._alignment,
            self._ancestor,
            self._signature,
            self._accuracy_drop,
            self._accuracy_floor,
        ):
            before = len(verdict.reasons)
            if not check(evidence, verdict):
                verdict.verified = False
                verdict.failed += verdict.reasons[before:]
        if evidence.trigger_count is not None:
            verdict.reasons.append(
                self._trigger_reason(evidence) + " (reported; not required for a white-box claim)"
            )
        if self._no_bit_can_count(evidence):
            verdict.reasons.append(
                f"no signature bit counts: the alignment permuted or rotated back every layer carrying them "
                f"({evidence.alignment_uncounted}), so this copy's proof is black-box only, no stronger than "
                "a black-box verification of its triggers: a trigger set labelled with a model's own "
                "answers shows up in it too (docs/SECURITY.md); a dispute decides between claims"
            )
        return verdict

    @staticmethod
    def _no_bit_can_count(evidence: Evidence) -> bool:
        """Every keyed layer was rearranged by the alignment layer by layer: no bit counts (a chain
        of convolutions permuted channel by channel leaves nothing; a residual stream permuted as a
        whole is charged instead, ``signature_search_log2``)."""
        return (
            evidence.signature_bits == 0
            and bool(evidence.alignment_used)
            and bool(evidence.alignment_uncounted)
        )

    def proof_shows(self, evidence: Evidence) -> tuple[bool, str]:
        """Whether a claimant's proof shows up in a model, and which evidence says so: admissible
        signature bits meeting the claim threshold, or trigger answers meeting the black-box one;
        for a retrofit key, only evidence its ancestor does not already show."""
        parts, shows = [], False
        if evidence.signature_bits is not None:
            verdict = Verdict(verified=True)
            signature = (
                self._key_admissible(evidence, verdict)
                and self._ancestor(evidence, verdict)
                and self._signature(evidence, verdict)
            )
            shows |= signature
            parts.append(
                ("signature bits count" if signature else "signature bits do not count")
                + ": "
                + "; ".join(verdict.reasons)
            )
        if evidence.trigger_count is not None:
            triggers = self.triggers_show(evidence)
            void = self._triggers_void(evidence)
            shows |= triggers and void is None
            parts.append(
                f"{self._trigger_reason(evidence)} ({'meets' if triggers else 'misses'} the "
                f"threshold {self.max_trigger_p_value:g})" + (f"; {void}" if void else "")
            )
        return shows, "; ".join(parts) or "no evidence measured"

    def signature_shows(self, evidence: Evidence) -> bool:
        """Admissible signature bits meeting the claim threshold, whatever else was measured."""
        verdict = Verdict(verified=True)
        return self._key_admissible(evidence, verdict) and self._signature(evidence, verdict)

    def triggers_show(self, evidence: Evidence) -> bool:
        """Trigger answers meeting the black-box threshold."""
        return bool(evidence.trigger_count) and (
            binomial_p_value(
                evidence.trigger_matches or 0, evidence.trigger_count or 0, evidence.trigger_chance or 1.0
            )
            < self.max_trigger_p_value
        )

    def _triggers_void(self, evidence: Evidence) -> str | None:
        """Why trigger answers say nothing here (a retrofit key without its ancestor, or an ancestor
        that answers them too), or None."""
        if evidence.ancestor_required and not evidence.ancestor_given:
            return "trigger answers not decidable without the ancestor the key records"
        if evidence.ancestor_triggers_show:
            return "void: the ancestor the retrofit started from answers them too"
        return None

    def _ancestor(self, evidence: Evidence, verdict: Verdict) -> bool:
        if not evidence.ancestor_required:
            return True
        if not evidence.ancestor_given:
            verdict.reasons.append(
                "not decidable: the key was made by retrofitting a trained model (its ancestor); what a "
                "function-preserving change of that model shows is no evidence, so the claim is decided "
                "only with it: pass the ancestor (--ancestor)"
            )
            return False
        if evidence.ancestor_signature_shows:
            verdict.reasons.append(
                "no evidence: the signature already shows up in the ancestor the retrofit started from, "
                "read the same way; the bits came with the public model, not with the retrofit"
            )
            return False
        verdict.reasons.append(
            "ancestor checked: read the same way, the model the retrofit started from does not show the "
            "signature, so the bits came with the retrofit"
        )
        return True

    def _key_admissible(self, evidence: Evidence, verdict: Verdict) -> bool:
        if evidence.signature_mode == "hash":
            if evidence.bits_follow_from_key is False:
                verdict.reasons.append(
                    "key rejected: its signature bits are not the hash of its identity and passports "
                    "(edited bits, or passports solved for chosen bits)"
                )
                return False
            if evidence.bits_follow_from_key is None:
                verdict.reasons.append(
                    "key rejected: a hash-bound claim must show that its bits follow from its passports"
                )
                return False
            return True
        if evidence.signature_mode == "text" and self.allow_text_signatures:
            verdict.reasons.append(
                "text signature accepted on request (forgeable from the released weights, docs/SECURITY.md)"
            )
            return True
        verdict.reasons.append(
            f"claim refused: a {evidence.signature_mode or 'unbound'} signature can be forged from the "
            "released weights alone (docs/SECURITY.md); re-protect with hash-bound signatures, or accept "
            "the risk with --allow-text-signatures"
        )
        return False

    def _alignment(self, evidence: Evidence, verdict: Verdict) -> bool:
        if evidence.alignment_confidence is None:
            return True
        low = evidence.alignment_confidence
        if evidence.alignment_used:
            uncounted = evidence.alignment_uncounted or 0
            verdict.reasons.append(
                f"alignment used: lowest per-layer match confidence {low:.3f} >= "
                f"{self.min_alignment_confidence:g} (the suspect's filters match the reference's)"
                + (
                    f"; the bits of {uncounted} layers it permuted, rotated or mixed back are not counted, "
                    "since such a transform could have put them there either way"
                    if uncounted
                    else ""
                )
            )
        else:
            verdict.reasons.append(
                f"alignment not used: lowest per-layer match confidence {low:.3f} < "
                f"{self.min_alignment_confidence:g}, so the suspect is no rearranged copy of the "
                "reference; bits read from the suspect as it stands"
            )
        return True  # alignment only chooses how bits are read; the bits decide

    def _signature(self, evidence: Evidence, verdict: Verdict) -> bool:
        bits, matches = evidence.signature_bits or 0, evidence.signature_matches or 0
        threshold = self.signature_threshold(evidence.signature_mode)
        search = evidence.signature_search_log2
        verdict.required_matches = required_matches(bits, threshold, search)
        ok = bits > 0 and matches >= verdict.required_matches
        p = format_p_value(binomial_p_value(matches, bits, 0.5), binomial_log10_p_value(matches, bits, 0.5))
        charged = (
            f", charged 2^{search:.0f} for the residual-stream orders the alignment chose among "
            "(a claimant could have chosen among them too)"
            if search
            else ""
        )
        verdict.reasons.append(
            f"signature: {matches}/{bits} bits match (needed {verdict.required_matches}), p = {p}{charged} "
            f"({'meets' if ok else 'misses'} the threshold {threshold:.3g})"
        )
        return ok

    def _accuracy_drop(self, evidence: Evidence, verdict: Verdict) -> bool:
        free, aware = evidence.passport_free_accuracy, evidence.passport_aware_accuracy
        if free is None or aware is None:
            return True
        drop = free - aware
        verdict.reasons.append(
            f"accuracy: passport-aware {aware:.2%} vs passport-free {free:.2%} "
            f"(drop {100 * drop:.1f} points, allowed {100 * self.max_accuracy_drop:g})"
        )
        return drop <= self.max_accuracy_drop

    def _accuracy_floor(self, evidence: Evidence, verdict: Verdict) -> bool:
        aware = evidence.passport_aware_accuracy
        if aware is None:
            return True
        if evidence.num_classes is None:
            verdict.reasons.append("accuracy floor not applied: the number of classes is unknown")
            return True
        floor = self.accuracy_floor(evidence.num_classes)
        above = aware >= floor
        verdict.reasons.append(
            f"accuracy floor: passport-aware {aware:.2%} {'reaches' if above else 'is below'} {floor:.2%} "
            f"(chance {1 / evidence.num_classes:.2%})"
            + (
                ""
                if above
                else ": at this accuracy the branch shows nothing; wrong --dataset, or a model ruined"
            )
        )
        return above

    def _trigger_reason(self, evidence: Evidence) -> str:
        count, matches, chance = (
            evidence.trigger_count or 0,
            evidence.trigger_matches or 0,
            evidence.trigger_chance or 1.0,
        )
        p = format_p_value(
            binomial_p_value(matches, count, chance), binomial_log10_p_value(matches, count, chance)
        )
        answered = f"triggers: {matches}/{count} answered with the owner's labels"
        return f"{answered}, p = {p} (chance {chance:.3g} each)"

    def _decide_blackbox(self, evidence: Evidence) -> Verdict:
        if evidence.trigger_count is None:
            reason = "no evidence: neither signature bits nor trigger answers were measured"
            return Verdict(False, [reason], [reason])
        ok = self.triggers_show(evidence)
        reason = (
            self._trigger_reason(evidence)
            + f" ({'meets' if ok else 'misses'} the threshold {self.max_trigger_p_value:g})"
        )
        void = self._triggers_void(evidence)
        if void is not None:
            ok, reason = False, f"{reason}; {void}"
        return Verdict(ok, [reason], [] if ok else [reason])
