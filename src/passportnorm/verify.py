"""Ownership verification a reviewer can follow: counts, p-values, and an explicit verdict rule.

White-box: put the owner's branch (from the key) back on the suspect model's weights, read
``sign(g)`` against the signature, and compare the accuracy of the passport-aware branch with the
suspect's own. Black-box: query the suspect with the trigger set and compare its answers with the
owner's labels. Each count comes with a one-sided binomial p-value: the chance of at least that
many matches if the suspect had nothing to do with the owner.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import numpy as np
from scipy.special import logsumexp
from scipy.stats import binom
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .align import align_to_reference
from .binding import SECURITY_BITS, log10_forgery_chance, required_matches
from .certificate import Certificate
from .data.triggers import TriggerSet
from .detection import signature_detection
from .evaluation import accuracy
from .key import OwnerKey, attach_key
from .protect import passport_mode, protected_layers, statistics_layers

__all__ = [
    "VerdictRule",
    "VerificationReport",
    "verify",
    "verify_attached",
    "verify_blackbox",
    "binomial_p_value",
    "binomial_log10_p_value",
    "recalibrate_branch",
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


def format_p_value(p_value: float, log10_p: float) -> str:
    return f"{p_value:.3g}" if p_value > 0 else f"10^{log10_p:.1f}"


@dataclass(frozen=True)
class VerdictRule:
    """When a claim counts as verified. White-box needs both conditions; black-box the trigger one."""

    max_signature_p_value: float = 1e-6
    max_accuracy_drop: float = 0.10  # passport-aware may trail passport-free by at most this (absolute)
    max_trigger_p_value: float = 1e-6
    security_bits: int = SECURITY_BITS  # hash-bound claims: p-value at most 2^-security_bits
    # the paper's text signatures can be forged in closed form from the released weights
    # (docs/SECURITY.md), so a claim resting on one is refused unless the verifier opts in
    allow_text_signatures: bool = False

    def signature_threshold(self, mode: str) -> float:
        """The p-value a claim must reach: for hash-bound bits also the forgery bound, since each
        forgery try is a fresh draw of random bits (see binding.py)."""
        if mode == "hash":
            return min(self.max_signature_p_value, 2.0 ** -self.security_bits)
        return self.max_signature_p_value

    def describe(self, mode: str = "text") -> str:
        if mode == "hash":
            bound = f"<= 2^-{self.security_bits} (hash-bound bits, which must follow from the key's passports and identity)"
        elif self.allow_text_signatures:
            bound = f"< {self.max_signature_p_value:g} (text signature, accepted on request: forgeable, see docs/SECURITY.md)"
        else:
            bound = "from hash-bound bits (text signatures are refused: forgeable, see docs/SECURITY.md)"
        return (
            f"verified when the signature p-value {bound} and passport-aware accuracy is within "
            f"{100 * self.max_accuracy_drop:g} points of passport-free accuracy (when data is given); black-box alone: "
            f"trigger p-value < {self.max_trigger_p_value:g}"
        )


@dataclass
class VerificationReport:
    verified: bool
    rule: str
    reasons: list[str] = field(default_factory=list)
    signature_bits: int | None = None
    signature_matches: int | None = None
    signature_detection: float | None = None
    bit_errors: int | None = None
    signature_p_value: float | None = None
    signature_log10_p_value: float | None = None
    decoded_text: str | None = None
    expected_text: str | None = None
    passport_free_accuracy: float | None = None
    passport_aware_accuracy: float | None = None
    trigger_count: int | None = None
    trigger_matches: int | None = None
    trigger_accuracy: float | None = None
    trigger_p_value: float | None = None
    trigger_log10_p_value: float | None = None
    certificate: dict[str, Any] | None = None
    per_layer: dict[str, float] = field(default_factory=dict)
    signature_mode: str = "text"
    identity: str | None = None
    bits_follow_from_passports: bool | None = None  # hash-bound keys only
    required_matches: int | None = None
    forgery_log10_chance: float | None = None  # one forgery try reaching the required matches
    alignment: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_markdown(self, title: str = "Verification") -> str:
        rows = [
            ("verdict", "**VERIFIED**" if self.verified else "**NOT VERIFIED**"),
            ("rule", self.rule),
        ]
        if self.signature_bits is not None:
            rows += [
                ("signature detection", f"{self.signature_detection:.2%} ({self.signature_matches}/{self.signature_bits} bits, {self.bit_errors} errors)"),
                ("P(that many matching bits by chance)", format_p_value(self.signature_p_value, self.signature_log10_p_value)),
            ]
            if self.signature_mode == "hash":
                chance = "impossible" if self.forgery_log10_chance == float("-inf") else f"10^{self.forgery_log10_chance:.1f}"
                rows += [
                    ("signature mode", "hash-bound (SHAKE-256 of identity and passports)"),
                    ("identity", repr(self.identity)),
                    ("bits follow from the key's passports", "yes" if self.bits_follow_from_passports else "**NO: claim rejected**"),
                    ("required matches / chance a forgery try reaches them", f"{self.required_matches}/{self.signature_bits}, {chance}"),
                ]
            else:
                rows += [("signature mode", "text (the paper's; forgeable)"), ("decoded owner text", repr(self.decoded_text))]
        if self.passport_free_accuracy is not None:
            rows += [
                ("passport-free accuracy (the suspect as served)", f"{self.passport_free_accuracy:.2%}"),
                ("passport-aware accuracy (with the owner's branch)", f"{self.passport_aware_accuracy:.2%}"),
            ]
        if self.trigger_count is not None:
            rows += [
                ("trigger-set accuracy", f"{self.trigger_accuracy:.2%} ({self.trigger_matches}/{self.trigger_count})"),
                ("P(that many trigger answers by chance)", format_p_value(self.trigger_p_value, self.trigger_log10_p_value)),
            ]
        if self.certificate is not None:
            rows.append(("certificate", ", ".join(f"{k}: {v}" for k, v in self.certificate.items())))
        if self.alignment is not None:
            low = min(self.alignment["confidence"].values(), default=1.0)
            rows.append(("alignment to the reference", f"{self.alignment['permuted']} layers permuted, {self.alignment['flipped']} "
                                                       f"channels sign-flipped; lowest per-layer match confidence {low:.3f}"))
        rows += [("reason", reason) for reason in self.reasons]
        lines = [f"### {title}", "", "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
        return "\n".join(lines)



@torch.no_grad()
def recalibrate_branch(model: nn.Module, batches: Iterable, device: torch.device) -> None:
    """Re-estimate the branch's BatchNorm statistics (aware statistics too) on the owner's data (cumulative average).

    Only the branch norms run in training mode; the suspect's own statistics are not touched.
    """
    layers = [layer for layer in [*protected_layers(model).values(), *statistics_layers(model).values()]
              if getattr(layer.branch_norm, "track_running_stats", False)]
    model.eval()
    saved = []
    for layer in layers:
        layer.branch_norm.reset_running_stats()
        saved.append(layer.branch_norm.momentum)
        layer.branch_norm.momentum = None
        layer.branch_norm.train()
    with passport_mode(model):
        for x, _ in batches:
            model(x.to(device))
    for layer, momentum in zip(layers, saved):
        layer.branch_norm.momentum = momentum
        layer.branch_norm.eval()


def _example_of(data: Dataset | DataLoader | None, trigger: TriggerSet | None) -> Tensor | None:
    """Two inputs of the task (for tracing), from the data or the trigger set, when either is given."""
    if trigger is not None:
        return trigger.inputs[:2].cpu()
    if isinstance(data, DataLoader):
        return next(iter(data))[0][:2]
    if data is not None and len(data):
        return torch.stack([data[i][0] for i in range(min(2, len(data)))])
    return None


def _model_device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def verify(
    model: nn.Module,
    key: OwnerKey,
    data: Dataset | DataLoader | None = None,
    trigger: TriggerSet | None = None,
    certificate: Certificate | None = None,
    recalibrate: bool = False,
    rule: VerdictRule = VerdictRule(),
    reference: nn.Module | None = None,
    calibration_data: Dataset | DataLoader | None = None,
) -> VerificationReport:
    """White-box (and, with ``trigger``, black-box) verification of a suspect model of the key's architecture.

    ``data`` (the owner's labelled test data) adds the accuracy condition; without it the
    verdict rests on the signature alone. ``certificate`` is checked against the key first
    (a mismatch raises CertificateError) and the report says whether the suspect is the certified
    release bit for bit. ``recalibrate`` re-estimates the branch statistics first, on
    ``calibration_data`` (default ``data``; other owner data keeps the test split unseen), which
    helps after fine-tuning has shifted the features: the statistics are not part of the claim. ``reference`` (the owner's released
    model) first aligns the suspect's channels to it, undoing permutations, sign flips and
    rescaling (see align.py). A hash-bound key whose bits do not follow from its passports is
    rejected: a "not verified" report with the reason.
    """
    cert_info = None
    if certificate is not None:
        certificate.check_key(key)
        cert_info = {
            "key matches certificate": True,
            "suspect is the certified release, bit for bit": certificate.matches_released(model),
            "certified at (UTC)": certificate.created_utc,
        }
    alignment = None
    if reference is not None:
        model, alignment = align_to_reference(model, reference, key, example_input=_example_of(data, trigger))
    suspect = attach_key(model, key).to(_model_device(model))
    report = verify_attached(suspect, data, trigger, recalibrate, rule, expected_text=key.signature_text,
                             certificate_info=cert_info, signature_mode=key.signature_mode, calibration_data=calibration_data)
    report.alignment = alignment
    if key.signature_mode == "text" and not rule.allow_text_signatures:
        report.verified = False
        report.reasons.insert(0, "claim refused: a text signature can be forged from the released weights alone "
                                 "(docs/SECURITY.md); re-protect with hash-bound signatures, or accept the risk with "
                                 "--allow-text-signatures")
    if key.signature_mode == "hash":
        report.identity = key.identity
        report.bits_follow_from_passports = key.bits_follow_from_passports()
        if not report.bits_follow_from_passports:
            report.verified = False
            report.reasons.insert(0, "key rejected: its signature bits are not the hash of its identity and passports "
                                     "(edited bits, or passports solved for chosen bits)")
    return report


def verify_attached(
    suspect: nn.Module,
    data: Dataset | DataLoader | None = None,
    trigger: TriggerSet | None = None,
    recalibrate: bool = False,
    rule: VerdictRule = VerdictRule(),
    expected_text: str | None = None,
    certificate_info: dict[str, Any] | None = None,
    signature_mode: str = "text",
    calibration_data: Dataset | DataLoader | None = None,
) -> VerificationReport:
    """The verification report of a model that already carries its branch (after ``attach_key``,
    or a DeepIPR V1 model, whose passports ship inside it)."""
    device = _model_device(suspect)
    detection = signature_detection(suspect)
    report = VerificationReport(verified=False, rule=rule.describe(signature_mode), certificate=certificate_info,
                                signature_mode=signature_mode)
    threshold = rule.signature_threshold(signature_mode)
    report.required_matches = required_matches(detection.total, threshold)
    report.forgery_log10_chance = log10_forgery_chance(detection.total, threshold)
    report.signature_bits = detection.total
    report.signature_matches = detection.matched
    report.signature_detection = detection.rate
    report.bit_errors = detection.bit_errors
    report.signature_p_value = binomial_p_value(detection.matched, detection.total, 0.5)
    report.signature_log10_p_value = binomial_log10_p_value(detection.matched, detection.total, 0.5)
    report.decoded_text = detection.message
    report.expected_text = expected_text
    report.per_layer = {path: d.rate for path, d in detection.layers.items()}

    if data is not None:
        if recalibrate:
            source = data if calibration_data is None else calibration_data
            loader = source if isinstance(source, DataLoader) else DataLoader(source, batch_size=256)
            recalibrate_branch(suspect, loader, device)
        report.passport_free_accuracy = accuracy(suspect, data, device)
        with passport_mode(suspect):
            report.passport_aware_accuracy = accuracy(suspect, data, device)
    if trigger is not None:
        _fill_trigger(report, lambda x: suspect(x).argmax(1), trigger, device)

    signature_ok = detection.matched >= report.required_matches
    report.reasons.append(
        f"signature: {detection.matched}/{detection.total} bits match (needed {report.required_matches}), "
        f"p = {format_p_value(report.signature_p_value, report.signature_log10_p_value)} "
        f"({'meets' if signature_ok else 'misses'} the threshold {threshold:.3g})"
    )
    accuracy_ok = True
    if data is not None:
        drop = report.passport_free_accuracy - report.passport_aware_accuracy
        accuracy_ok = drop <= rule.max_accuracy_drop
        report.reasons.append(
            f"accuracy: passport-aware {report.passport_aware_accuracy:.2%} vs passport-free "
            f"{report.passport_free_accuracy:.2%} (drop {100 * drop:.1f} points, allowed {100 * rule.max_accuracy_drop:g})"
        )
    report.verified = bool(signature_ok and accuracy_ok)
    return report


@torch.no_grad()
def _fill_trigger(report: VerificationReport, predict: Callable[[Tensor], Tensor], trigger: TriggerSet, device) -> None:
    answers = []
    for start in range(0, len(trigger), 256):
        answers.append(torch.as_tensor(predict(trigger.inputs[start : start + 256].to(device))).cpu())
    matches = int((torch.cat(answers) == trigger.labels.cpu()).sum())
    report.trigger_count = len(trigger)
    report.trigger_matches = matches
    report.trigger_accuracy = matches / len(trigger)
    report.trigger_p_value = binomial_p_value(matches, len(trigger), 1.0 / trigger.num_classes)
    report.trigger_log10_p_value = binomial_log10_p_value(matches, len(trigger), 1.0 / trigger.num_classes)


def verify_blackbox(
    predict: Callable[[Tensor], Tensor], trigger: TriggerSet, rule: VerdictRule = VerdictRule(), device: Any = "cpu"
) -> VerificationReport:
    """Black-box check: ``predict(inputs) -> labels`` from any served model, against the trigger set."""
    report = VerificationReport(verified=False, rule=rule.describe())
    _fill_trigger(report, predict, trigger, torch.device(device))
    report.verified = report.trigger_p_value < rule.max_trigger_p_value
    report.reasons.append(
        f"triggers: {report.trigger_matches}/{report.trigger_count} answered with the owner's labels, "
        f"p = {format_p_value(report.trigger_p_value, report.trigger_log10_p_value)} (chance {1 / trigger.num_classes:.3g} each)"
    )
    return report
