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
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .align import align_to_reference
from .attach import BINDING
from .binding import bits_follow_from_passports, log10_forgery_chance
from .capture import frozen_copy
from .certificate import Certificate
from .data.triggers import TriggerSet
from .detection import signature_detection
from .device import model_device
from .errors import ConfigError
from .evaluation import accuracy
from .key import OwnerKey, attach_key
from .narrow import narrow_to_reference
from .protect import passport_mode, passports_of, protected_layers, statistics_layers
from .stopwatch import measurement
from .verdict import (
    Evidence,
    VerdictRule,
    binomial_log10_p_value,
    binomial_p_value,
    format_p_value,
)

__all__ = [
    "VerdictRule",
    "VerificationReport",
    "ancestor_check",
    "verify",
    "verify_attached",
    "verify_blackbox",
    "blackbox_report",
    "evidence_of",
    "binomial_p_value",
    "binomial_log10_p_value",
    "recalibrate_branch",
    "format_p_value",
]


@dataclass
class VerificationReport:
    verified: bool
    rule: str
    reasons: list[str] = field(default_factory=list)
    failed_conditions: list[str] = field(default_factory=list)
    signature_bits: int | None = None
    signature_matches: int | None = None
    signature_detection: float | None = None
    bit_errors: int | None = None
    signature_p_value: float | None = None
    signature_log10_p_value: float | None = None
    # log2 of the residual-stream orders an alignment chose among: the verdict charges it to the bits
    signature_search_log2: float = 0.0
    decoded_text: str | None = None
    expected_text: str | None = None
    passport_free_accuracy: float | None = None
    passport_aware_accuracy: float | None = None
    trigger_count: int | None = None
    trigger_matches: int | None = None
    trigger_accuracy: float | None = None
    trigger_p_value: float | None = None
    trigger_log10_p_value: float | None = None
    trigger_chance: float | None = None
    trigger_null: str | None = None  # where trigger_chance came from (drawn labels, or measured controls)
    certificate: dict[str, Any] | None = None
    per_layer: dict[str, float] = field(default_factory=dict)
    signature_mode: str | None = None
    identity: str | None = None
    num_classes: int | None = None
    accuracy_floor: float | None = None
    bits_follow_from_passports: bool | None = None  # hash-bound keys only
    required_matches: int | None = None
    forgery_log10_chance: float | None = None  # one forgery try reaching the required matches
    alignment: dict[str, Any] | None = None
    ancestor: dict[str, Any] | None = None  # retrofit keys: the proof read in the model it started from

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_markdown(self, title: str = "Verification") -> str:
        rows = [
            ("verdict", "**VERIFIED**" if self.verified else "**NOT VERIFIED**"),
            ("rule", self.rule),
        ]
        if self.signature_bits is not None:
            rows += [
                (
                    "signature detection",
                    f"{self.signature_detection:.2%} ({self.signature_matches}/{self.signature_bits} bits, "
                    f"{self.bit_errors} errors)",
                ),
                (
                    "P(that many matching bits by chance)",
                    format_p_value(self.signature_p_value, self.signature_log10_p_value),
                ),
            ]
            if self.signature_mode == "hash":
                chance = (
                    "impossible"
                    if self.forgery_log10_chance == float("-inf")
                    else f"10^{self.forgery_log10_chance:.1f}"
                )
                rows += [
                    ("signature mode", "hash-bound (SHAKE-256 of identity and passports)"),
                    ("identity", repr(self.identity)),
                    (
                        "bits follow from the key's passports",
                        "yes" if self.bits_follow_from_passports else "**NO: claim rejected**",
                    ),
                    (
                        "required matches / chance a forgery try reaches them",
                        f"{self.required_matches}/{self.signature_bits}, {chance}",
                    ),
                ]
            else:
                rows += [
                    ("signature mode", "text (the paper's; forgeable)"),
                    ("decoded owner text", repr(self.decoded_text)),
                ]
        if self.passport_free_accuracy is not None:
            rows += [
                ("passport-free accuracy (the suspect as served)", f"{self.passport_free_accuracy:.2%}"),
                ("passport-aware accuracy (with the owner's branch)", f"{self.passport_aware_accuracy:.2%}"),
            ]
        if self.trigger_count is not None:
            rows += [
                (
                    "trigger-set accuracy",
                    f"{self.trigger_accuracy:.2%} ({self.trigger_matches}/{self.trigger_count})",
                ),
                (
                    "P(that many trigger answers by chance)",
                    format_p_value(self.trigger_p_value, self.trigger_log10_p_value),
                ),
                ("chance of one trigger answer", f"{self.trigger_chance:.3g} ({self.trigger_null})"),
            ]
        if self.certificate is not None:
            rows.append(("certificate", ", ".join(f"{k}: {v}" for k, v in self.certificate.items())))
        if self.alignment is not None:
            low = self.alignment["lowest_confidence"]
            used = (
                "used"
                if self.alignment["used"]
                else "**not used** (no rearranged copy: bits read from the suspect as is)"
            )
            rearranged = self.alignment.get("rearranged", []) if self.alignment["used"] else []
            uncounted = [path for path in rearranged if path in self.per_layer]  # layers carrying bits
            rows.append(
                (
                    "alignment to the reference",
                    f"{used}; {self.alignment['permuted']} layers permuted, "
                    f"{self.alignment['flipped']} channels sign-flipped; lowest per-layer "
                    f"match confidence {low:.3f} (needed {self.alignment['needed']:g})"
                    + (f"; bits of {len(uncounted)} permuted layers not counted" if uncounted else "")
                    + (
                        f"; residual stream of width {self.alignment['stream_permuted']} permuted back, its "
                        f"bits charged 2^{self.signature_search_log2:.0f} (the orders it chose among)"
                        if self.signature_search_log2
                        else ""
                    ),
                )
            )
            narrowed = self.alignment.get("narrowed") or {}
            if narrowed:
                removed = sum(n["dummy"] for n in narrowed.values())
                merged = sum(n["merged"] for n in narrowed.values())
                left = [
                    f"{path} ({n['not_narrowed']})" for path, n in narrowed.items() if n.get("not_narrowed")
                ]
                rows.append(
                    (
                        "structure undone before alignment",
                        f"{len(narrowed)} widened layers: {removed} channels no consumer reads removed, "
                        f"{merged} split channels merged"
                        + (f"; not narrowed: {', '.join(left)}" if left else ""),
                    )
                )
            if self.alignment.get("trace_error"):
                rows.append(
                    (
                        "alignment could not undo permutations",
                        "torch.fx cannot trace the suspect "
                        f"({self.alignment['trace_error']}); only sign flips and rescaling were undone",
                    )
                )
        if self.ancestor is not None:
            rows.append(("ancestor (the model a retrofit started from)", _ancestor_text(self.ancestor)))
        rows += [("reason", reason) for reason in self.reasons]
        lines = [f"### {title}", "", "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
        return "\n".join(lines)


def _ancestor_text(ancestor: dict[str, Any]) -> str:
    """One cell: which ancestor the key records, and whether the proof already shows up in it."""
    named = f"weights SHA-256 {ancestor['weights_sha256'][:16]}..."
    if not ancestor["given"]:
        return f"{named}; **not given**: the claim is not decidable without it"
    bits = f"{ancestor['signature_matches']}/{ancestor['signature_bits']} bits"
    shows = "**shows the signature**" if ancestor["signature_shows"] else "does not show the signature"
    triggers = (
        ""
        if ancestor["trigger_matches"] is None
        else f"; triggers {ancestor['trigger_matches']} answered"
        + (" (**void**: the ancestor answers them)" if ancestor["triggers_show"] else "")
    )
    return f"{named}; read the same way: {bits}, {shows}{triggers}"


@torch.no_grad()
def recalibrate_branch(model: nn.Module, batches: Iterable, device: torch.device) -> None:
    """Re-estimate the branch's BatchNorm statistics (aware statistics too) on the owner's data (cumulative
    average).

    Only the branch's statistics change: each norm runs in training mode with momentum None (a
    cumulative average) while its branch substitutes them; the suspect's own statistics are not touched.
    """
    branches = [
        b
        for b in [*protected_layers(model).values(), *statistics_layers(model).values()]
        if b.branch_norm.tracked
    ]
    model.eval()
    saved = [(b.norm, b.norm.momentum) for b in branches]
    for branch in branches:
        branch.branch_norm.reset()
        branch.norm.momentum = None
        branch.norm.training = True  # the norm alone: a subclass's own children (dropout) stay in eval
    try:
        with passport_mode(model):
            for x, _ in batches:
                model(x.to(device))
    finally:
        for norm, momentum in saved:
            norm.momentum = momentum
            norm.training = False


def _example_of(data: Any, trigger: TriggerSet | None) -> Tensor | None:
    """Two inputs of the task (for tracing), from the data or the trigger set, when either is given."""
    if trigger is not None:
        return trigger.inputs[:2].cpu()
    if isinstance(data, DataLoader):
        return next(iter(data))[0][:2]
    if data is not None and len(data):
        return torch.stack([data[i][0] for i in range(min(2, len(data)))])
    return None


@measurement
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
    ancestor: nn.Module | None = None,
    tsa_roots: list[Any] | None = None,
) -> VerificationReport:
    """White-box (and, with ``trigger``, black-box) verification of a suspect model of the key's architecture.

    ``data`` (the owner's labelled test data) adds the accuracy conditions; without it the
    verdict rests on the signature alone. ``certificate`` is checked against the key first
    (a mismatch raises CertificateError) and the report says whether the suspect is the certified
    release bit for bit. ``recalibrate`` re-estimates the branch statistics first, on
    ``calibration_data`` (never the test data it then scores; without it the request is refused),
    which helps after fine-tuning has shifted the features: the statistics are not part of the claim.
    ``reference`` (the owner's released model) aligns the suspect's channels to it, undoing
    permutations, sign flips and rescaling (see align.py); the aligned model is used only when
    the rule accepts the match confidence. ``ancestor`` (or ``key.with_ancestor``): the trained model
    a retrofit key records (``key.ancestor``), read the same way; a proof that already shows up
    there is no evidence, and without it such a key's claim is undecidable. ``tsa_roots``: the
    time-stamp authorities whose token on the certificate the report may call an attested time.
    The verdict is ``rule.decide`` on the evidence.
    """
    cert_info = None
    if certificate is not None:
        certificate.check_key(key)
        attested, why = certificate.attested_utc(tsa_roots or [])
        cert_info = {
            "key matches certificate": True,
            "suspect is the certified release, bit for bit": certificate.matches_released(model),
            "created_utc (the issuer's own clock)": certificate.created_utc,
            "attested time": attested.isoformat() if attested else f"none: {why}",
        }
    example = _example_of(data, trigger)
    model, alignment = _as_reference_reads(model, key, reference, example, rule)
    if ancestor is not None:
        key = key.with_ancestor(ancestor)
    checked = ancestor_check(key, reference, example, trigger, rule)
    suspect = attach_key(model, key).to(model_device(model))
    return verify_attached(
        suspect,
        data,
        trigger,
        recalibrate,
        rule,
        expected_text=key.signature_text,
        certificate_info=cert_info,
        calibration_data=calibration_data,
        alignment=alignment,
        ancestor=checked,
    )


def _as_reference_reads(
    model: nn.Module, key: OwnerKey, reference: nn.Module | None, example: Tensor | None, rule: VerdictRule
) -> tuple[nn.Module, dict[str, Any] | None]:
    """The model to read bits from (aligned to ``reference`` when the rule accepts the match) and
    the alignment's report; the model itself when no reference is given."""
    if reference is None:
        return model, None
    model, narrowed = narrow_to_reference(model, reference, key, example)  # function unchanged
    aligned, alignment = align_to_reference(model, reference, key, example_input=example)
    alignment["narrowed"] = narrowed
    alignment["used"] = rule.accepts_alignment(alignment["lowest_confidence"])
    alignment["needed"] = rule.min_alignment_confidence
    return (aligned if alignment["used"] else model), alignment


def ancestor_check(
    key: OwnerKey,
    reference: nn.Module | None,
    example: Tensor | None,
    trigger: TriggerSet | None,
    rule: VerdictRule,
) -> dict[str, Any] | None:
    """Whether the key's proof already shows up in the model its retrofit started from
    (``key.with_ancestor``), read as the suspect is read (aligned to the same reference); None for
    a key protected from scratch."""
    recorded = key.ancestor
    if recorded is None:
        return None
    result: dict[str, Any] = {
        "weights_sha256": recorded.weights_sha256,
        "given": key.ancestor_model is not None,
    }
    if key.ancestor_model is None:
        return result
    ancestor = key.ancestor_model.to(model_device(reference if reference is not None else key.ancestor_model))
    model, _ = _as_reference_reads(ancestor, key, reference, example, rule)
    report = verify_attached(attach_key(model, key).to(model_device(model)), trigger=trigger, rule=rule)
    evidence = evidence_of(report)
    result |= {
        "signature_matches": report.signature_matches,
        "signature_bits": report.signature_bits,
        "signature_shows": rule.signature_shows(evidence),
        "trigger_matches": report.trigger_matches,
        "triggers_show": rule.triggers_show(evidence) if report.trigger_count is not None else None,
    }
    return result


def verify_attached(
    suspect: nn.Module,
    data: Dataset | DataLoader | None = None,
    trigger: TriggerSet | None = None,
    recalibrate: bool = False,
    rule: VerdictRule = VerdictRule(),
    expected_text: str | None = None,
    certificate_info: dict[str, Any] | None = None,
    calibration_data: Dataset | DataLoader | None = None,
    alignment: dict[str, Any] | None = None,
    ancestor: dict[str, Any] | None = None,
) -> VerificationReport:
    """The verification report of a model that already carries its branch (after ``attach_key``,
    or a DeepIPR V1 model, whose passports ship inside it).

    Every measurement (bits, both branches' accuracy, trigger answers) runs on a frozen eval copy,
    whatever mode ``suspect`` is in and whether or not data is given; ``suspect`` is not changed.

    The signature mode and identity come from the model (``attach_key`` and ``protect`` set them
    from the key); a model that says nothing counts as a text claim, which the rule refuses
    unless it allows text signatures.
    """
    if recalibrate and calibration_data is None:
        raise ConfigError(
            "recalibrate needs calibration_data (owner data other than the test data it then scores); "
            "give the training split"
        )
    suspect = frozen_copy(suspect)  # one discipline: every number below is read in eval mode
    device = model_device(suspect)
    binding = getattr(suspect, BINDING, None) or {"mode": "text", "identity": None}
    mode = binding["mode"]
    detection = signature_detection(suspect)
    report = VerificationReport(
        verified=False, rule=rule.describe(mode), certificate=certificate_info, signature_mode=mode
    )
    # bits a permutation put back are not counted: it could have put them there either way (align.py);
    # those one residual-stream order put back count, charged the log2(width!) orders it chose among
    aligned = alignment if alignment and alignment.get("used") else {}
    uncounted = set(aligned.get("rearranged", []))
    counted = [d for path, d in detection.layers.items() if path not in uncounted]
    streamed = set(aligned.get("stream_rearranged", [])) & set(detection.layers)
    report.signature_search_log2 = float(aligned.get("stream_search_log2", 0.0)) if streamed else 0.0
    matched, total = sum(d.matched for d in counted), sum(d.total for d in counted)
    report.signature_bits = total
    report.signature_matches = matched
    report.signature_detection = matched / total if total else 0.0
    report.bit_errors = total - matched
    report.signature_p_value = binomial_p_value(matched, total, 0.5)
    report.signature_log10_p_value = binomial_log10_p_value(matched, total, 0.5)
    report.forgery_log10_chance = log10_forgery_chance(
        total, rule.signature_threshold(mode), report.signature_search_log2
    )
    report.decoded_text = detection.message
    report.expected_text = expected_text
    report.per_layer = {path: d.rate for path, d in detection.layers.items()}
    report.alignment = alignment
    report.ancestor = ancestor
    if mode == "hash":
        report.identity = binding.get("identity")
        layers = protected_layers(suspect)
        report.bits_follow_from_passports = bits_follow_from_passports(
            report.identity or "",
            passports_of(layers),
            torch.cat([layer.signature.cpu() for layer in layers.values()]),
        )

    if data is not None:
        if recalibrate and calibration_data is not None:  # refused above when missing
            source = calibration_data
            loader = source if isinstance(source, DataLoader) else DataLoader(source, batch_size=256)
            recalibrate_branch(suspect, loader, device)
        report.passport_free_accuracy = accuracy(suspect, data, device)
        with passport_mode(suspect):
            report.passport_aware_accuracy = accuracy(suspect, data, device)
        report.num_classes = _num_classes(suspect, data, device)
        report.accuracy_floor = rule.accuracy_floor(report.num_classes)
    if trigger is not None:
        _fill_trigger(report, lambda x: suspect(x).argmax(1), trigger, device)
    _decide(report, rule)
    return report


def evidence_of(report: VerificationReport) -> Evidence:
    """The measurements of a report, as the verdict rule reads them."""
    alignment = report.alignment or {}
    return Evidence(
        signature_mode=report.signature_mode,
        bits_follow_from_key=report.bits_follow_from_passports,
        signature_bits=report.signature_bits,
        signature_matches=report.signature_matches,
        alignment_confidence=alignment.get("lowest_confidence"),
        alignment_used=alignment.get("used"),
        alignment_uncounted=len(set(alignment.get("rearranged", [])) & set(report.per_layer))
        if alignment.get("used")
        else None,
        signature_search_log2=report.signature_search_log2,
        ancestor_required=report.ancestor is not None,
        ancestor_given=(report.ancestor or {}).get("given"),
        ancestor_signature_shows=(report.ancestor or {}).get("signature_shows"),
        ancestor_triggers_show=(report.ancestor or {}).get("triggers_show"),
        passport_free_accuracy=report.passport_free_accuracy,
        passport_aware_accuracy=report.passport_aware_accuracy,
        num_classes=report.num_classes,
        trigger_count=report.trigger_count,
        trigger_matches=report.trigger_matches,
        trigger_chance=report.trigger_chance,
    )


def _decide(report: VerificationReport, rule: VerdictRule) -> None:
    verdict = rule.decide(evidence_of(report))
    report.verified = verdict.verified
    report.reasons = verdict.reasons
    report.failed_conditions = verdict.failed
    report.required_matches = verdict.required_matches


@torch.no_grad()
def _num_classes(model: nn.Module, data: Dataset | DataLoader, device: torch.device) -> int:
    """How many classes the model answers with: the width of its output on one input."""
    example = _example_of(data, None)
    if example is None:
        raise ConfigError("no input to learn the model's number of classes from: give data or a trigger set")
    model.eval()
    return int(model(example.to(device)).shape[1])  # scores along dim 1 (evaluation.py)


@torch.no_grad()
def _fill_trigger(
    report: VerificationReport, predict: Callable[[Tensor], Tensor], trigger: TriggerSet, device
) -> None:
    controls = None if trigger.controls is None else _predictions(predict, trigger.controls, device)
    fill_trigger_answers(report, _predictions(predict, trigger.inputs, device), trigger, controls)


def _predictions(predict: Callable[[Tensor], Tensor], inputs: Tensor, device) -> Tensor:
    answers = [
        torch.as_tensor(predict(inputs[start : start + 256].to(device))).cpu()
        for start in range(0, len(inputs), 256)
    ]
    return torch.cat(answers)


def fill_trigger_answers(
    report: VerificationReport, answers: Tensor, trigger: TriggerSet, control_answers: Tensor | None = None
) -> None:
    """The trigger evidence of ``answers`` (shaped like the labels: one per trigger, or one per token
    of a prompt; however they were obtained),
    scored against the trigger set's null: 1/num_classes for drawn labels, measured on
    ``control_answers`` (the same model's answers on the held-out controls) for owner-chosen ones."""
    matches, scored = trigger.hits(answers.cpu(), trigger.labels.cpu()), trigger.scored
    report.trigger_count = scored
    report.trigger_matches = matches
    report.trigger_accuracy = matches / scored
    report.trigger_chance, report.trigger_null = trigger.chance(control_answers)
    report.trigger_p_value = binomial_p_value(matches, scored, report.trigger_chance)
    report.trigger_log10_p_value = binomial_log10_p_value(matches, scored, report.trigger_chance)


@measurement
def verify_blackbox(
    predict: Callable[[Tensor], Tensor] | nn.Module,
    trigger: TriggerSet,
    rule: VerdictRule = VerdictRule(),
    device: Any = "cpu",
) -> VerificationReport:
    """Black-box check against the trigger set: ``predict(inputs) -> labels`` from any served model,
    or a model itself, which answers as a frozen eval copy (its top class)."""
    if isinstance(predict, nn.Module):
        frozen = frozen_copy(predict)
        predict = lambda x: frozen(x).argmax(1)
    report = VerificationReport(verified=False, rule=rule.describe())
    _fill_trigger(report, predict, trigger, torch.device(device))
    _decide(report, rule)
    return report


def blackbox_report(
    answers: Tensor,
    trigger: TriggerSet,
    rule: VerdictRule = VerdictRule(),
    control_answers: Tensor | None = None,
) -> VerificationReport:
    """The black-box verdict on labels already collected (from a server, a log): same rule as verify;
    ``control_answers``: the same model's answers on the trigger set's controls, if it has them."""
    report = VerificationReport(verified=False, rule=rule.describe())
    fill_trigger_answers(report, answers, trigger, control_answers)
    _decide(report, rule)
    return report
