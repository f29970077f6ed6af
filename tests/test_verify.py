"""Verification: statistics, verdict rule, black-box, recalibration, certificates."""

import math
import warnings

import pytest
import torch

import passportnorm as pn
from passportnorm import zoo
from passportnorm.certificate import Certificate
from passportnorm.data import load_dataset
from passportnorm.data.triggers import generate_triggers
from passportnorm.errors import CertificateError, ConfigError
from passportnorm.key import extract_key
from passportnorm.train import TrainConfig, Trainer
from passportnorm.verify import (
    VerdictRule,
    binomial_log10_p_value,
    binomial_p_value,
    recalibrate_branch,
    verify,
    verify_blackbox,
)


def test_binomial_tail_values():
    assert binomial_p_value(10, 10, 0.5) == pytest.approx(2**-10)
    assert binomial_p_value(0, 10, 0.5) == pytest.approx(1.0)
    assert binomial_p_value(9, 10, 0.5) == pytest.approx(11 / 1024)
    assert binomial_log10_p_value(1184, 1184, 0.5) == pytest.approx(1184 * math.log10(0.5))
    assert binomial_p_value(1184, 1184, 0.5) == 0.0  # underflows; the log10 form carries it


@pytest.fixture(scope="module")
def trained():
    data = load_dataset("digits", seed=0)
    triggers = generate_triggers(20, data.input_shape, 10, seed=2)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        protected = pn.protect(zoo.build("small_cnn", width=1.0), data.train.tensors[0][:8], signature="(c) V",
                               passports="shuffle", weak_layers="skip", seed=0)
    Trainer(protected, data, TrainConfig(epochs=6, batch_size=32), trigger=triggers).fit()
    torch.manual_seed(1)
    independent = zoo.build("small_cnn", width=1.0)
    Trainer(independent, data, TrainConfig(epochs=6, batch_size=32, seed=1)).fit()
    key = extract_key(protected, trigger=triggers)
    return data, protected, pn.strip(protected), independent.eval(), key, triggers


def test_released_model_is_verified_with_readable_evidence(trained):
    data, _, released, _, key, triggers = trained
    report = verify(released, key, data=data.test, trigger=triggers)
    assert report.verified
    assert report.signature_detection == 1.0 and report.bit_errors == 0
    assert report.signature_p_value == pytest.approx(2.0**-192) and report.identity == "(c) V" and report.bits_follow_from_passports
    assert report.passport_aware_accuracy > 0.85 and report.passport_free_accuracy > 0.85
    assert report.trigger_accuracy > 0.5 and report.trigger_p_value < 1e-6
    assert any("signature:" in r for r in report.reasons) and any("accuracy:" in r for r in report.reasons)
    text = report.to_markdown()
    assert "VERIFIED" in text and "(c) V" in text


def test_independent_model_is_not_verified(trained):
    data, _, _, independent, key, triggers = trained
    report = verify(independent, key, data=data.test, trigger=triggers)
    assert not report.verified
    assert 0.3 < report.signature_detection < 0.7 and report.signature_p_value > 1e-6
    assert report.passport_aware_accuracy < 0.5
    assert report.trigger_p_value > 1e-6


def test_verdict_rule_is_explicit_and_configurable(trained):
    data, _, released, _, key, _ = trained
    strict = VerdictRule(max_signature_p_value=1e-6, max_accuracy_drop=-1.0)  # demands aware > free + 100 points
    report = verify(released, key, data=data.test, rule=strict)
    assert not report.verified and any("allowed -100" in reason for reason in report.reasons)
    assert "p-value < 1e-06" in report.rule
    no_data = verify(released, key)
    assert no_data.verified and no_data.passport_aware_accuracy is None


def test_blackbox_verification_with_any_predict_function(trained):
    _, _, released, independent, _, triggers = trained
    owner_model = released.eval()
    assert verify_blackbox(lambda x: owner_model(x).argmax(1), triggers).verified
    assert not verify_blackbox(lambda x: independent(x).argmax(1), triggers).verified
    constant = verify_blackbox(lambda x: torch.zeros(len(x), dtype=torch.long), triggers)
    assert not constant.verified and constant.trigger_matches == int((triggers.labels == 0).sum())


def test_recalibration_touches_only_the_branch_statistics(trained):
    data, protected, released, _, key, _ = trained
    from passportnorm.key import attach_key

    suspect = attach_key(released, key)
    free_stats = {k: v.clone() for k, v in suspect.state_dict().items() if "running" in k and "passport_aware" not in k}
    layer = next(iter(pn.protected_layers(suspect).values()))
    before = layer.branch_norm.running_mean.clone()
    recalibrate_branch(suspect, torch.utils.data.DataLoader(data.train, batch_size=64), torch.device("cpu"))
    assert not torch.equal(layer.branch_norm.running_mean, before)
    assert all(torch.equal(v, suspect.state_dict()[k]) for k, v in free_stats.items())
    assert free_stats and layer.norm.momentum == 0.1 and not layer.norm.training
    report = verify(released, key, data=data.test, recalibrate=True, calibration_data=data.train)
    assert report.verified and report.passport_aware_accuracy > 0.85


def test_recalibration_reads_the_calibration_data_when_given(trained, monkeypatch):
    import passportnorm.verify as verify_module

    data, _, released, _, key, _ = trained
    seen = []
    real = verify_module.recalibrate_branch
    monkeypatch.setattr(verify_module, "recalibrate_branch", lambda m, batches, d: (seen.append(len(batches.dataset)), real(m, batches, d)))
    verify(released, key, data=data.test, recalibrate=True, calibration_data=data.train)
    assert seen == [len(data.train)] and len(data.train) != len(data.test)
    # without calibration data the request is refused: the statistics must never be re-estimated on
    # the test data the accuracy is then read from
    with pytest.raises(ConfigError, match="recalibrate needs calibration_data"):
        verify(released, key, data=data.test, recalibrate=True)
    assert seen == [len(data.train)]


def test_certificate_is_checked_before_anything_else(trained):
    data, protected, released, independent, key, _ = trained
    cert = Certificate.issue(key, released)
    report = verify(released, key, certificate=cert)
    assert report.certificate["suspect is the certified release, bit for bit"] is True
    assert verify(independent, key, certificate=cert).certificate["suspect is the certified release, bit for bit"] is False
    other = extract_key(pn.protect(zoo.build("small_cnn", width=0.5), data.train.tensors[0][:8], seed=5))
    with pytest.raises(CertificateError, match="it is not the certified key"):
        verify(released, other, certificate=cert)
