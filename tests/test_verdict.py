"""The one verdict rule: every condition decided in one place, each with its reason."""

import copy

import pytest
import torch

import passportnorm as pn
from passportnorm import zoo
from passportnorm.protect import protected_layers
from passportnorm.verdict import Evidence, VerdictRule
from passportnorm.verify import verify_attached

GOOD = dict(signature_mode="hash", bits_follow_from_key=True, signature_bits=1184, signature_matches=1184)


def test_a_sound_white_box_claim_is_verified_with_one_reason_per_condition():
    verdict = VerdictRule().decide(Evidence(**GOOD, passport_free_accuracy=0.96, passport_aware_accuracy=0.95, num_classes=10))
    assert verdict.verified and verdict.failed == []
    assert [r.split(":")[0] for r in verdict.reasons] == ["signature", "accuracy", "accuracy floor"]
    assert verdict.required_matches == 815


def test_a_model_at_chance_is_not_verified_whatever_the_ratio():
    # the wrong --dataset, or a ruined model: both branches at 10% leave no accuracy drop at all
    verdict = VerdictRule().decide(Evidence(**GOOD, passport_free_accuracy=0.10, passport_aware_accuracy=0.10, num_classes=10))
    assert not verdict.verified
    assert len(verdict.failed) == 1 and verdict.failed[0].startswith("accuracy floor: passport-aware 10.00% is below 32.50%")


def test_the_floor_scales_with_the_number_of_classes():
    rule = VerdictRule()
    assert rule.accuracy_floor(2) == pytest.approx(0.625)
    assert rule.accuracy_floor(100) == pytest.approx(0.2575)
    assert VerdictRule(min_accuracy_above_chance=0.0).accuracy_floor(10) == pytest.approx(0.1)


def test_text_signatures_and_unbound_keys_are_refused_unless_asked():
    text = dict(GOOD, signature_mode="text", bits_follow_from_key=None)
    refused = VerdictRule().decide(Evidence(**text))
    assert not refused.verified and refused.failed[0].startswith("claim refused: a text signature can be forged")
    assert VerdictRule(allow_text_signatures=True).decide(Evidence(**text)).verified
    unbound = VerdictRule().decide(Evidence(**dict(GOOD, bits_follow_from_key=None)))
    assert not unbound.verified and "must show that its bits follow" in unbound.failed[0]
    edited = VerdictRule().decide(Evidence(**dict(GOOD, bits_follow_from_key=False)))
    assert not edited.verified and "not the hash of its identity" in edited.failed[0]


def test_an_alignment_only_changes_how_bits_are_read_not_the_verdict():
    rule = VerdictRule()
    rejected = rule.decide(Evidence(**dict(GOOD, signature_matches=616), alignment_confidence=0.03, alignment_used=False))
    assert not rejected.verified and "alignment not used: lowest per-layer match confidence 0.030 < 0.5" in rejected.reasons[0]
    assert rejected.failed == [r for r in rejected.reasons if r.startswith("signature")]
    assert rule.accepts_alignment(0.5) and not rule.accepts_alignment(0.49)


def test_black_box_needs_trigger_evidence():
    rule = VerdictRule()
    assert rule.decide(Evidence(trigger_count=50, trigger_matches=30, trigger_chance=0.1)).verified
    weak = rule.decide(Evidence(trigger_count=50, trigger_matches=8, trigger_chance=0.1))
    assert not weak.verified and "misses the threshold" in weak.failed[0]
    nothing = rule.decide(Evidence())
    assert not nothing.verified and nothing.failed == ["no evidence: neither signature bits nor trigger answers were measured"]


def _attached(signature_mode: str):
    model = zoo.build("small_cnn", width=1.0)
    protected = pn.protect(model, torch.randn(4, 1, 12, 12), signature="(c) T", signature_mode=signature_mode,
                           weak_layers="skip", seed=0)
    return protected


def test_verify_attached_takes_the_mode_from_the_model_and_refuses_text_unasked():
    text = _attached("text")
    assert not verify_attached(text).verified
    assert "claim refused" in verify_attached(text).failed_conditions[0]
    # a model that says nothing about its bits is no hash-bound claim either
    silent = copy.deepcopy(text)
    del silent.passportnorm_binding
    assert verify_attached(silent).signature_mode == "text" and not verify_attached(silent).verified
    hashed = _attached("hash")
    report = verify_attached(hashed)
    assert report.signature_mode == "hash" and report.bits_follow_from_passports
    # editing one bit breaks the hash: the rule rejects the claim rather than counting bits
    layer = next(iter(protected_layers(hashed).values()))
    layer.signature[0] = -layer.signature[0]
    assert verify_attached(hashed).bits_follow_from_passports is False and not verify_attached(hashed).verified
