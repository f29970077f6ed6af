"""Ambiguity I and II on a small trained model: measured, with the claim checked by the owner's verify."""


import pytest
import torch

import passportnorm as pn
from passportnorm.attacks.ambiguity import ambiguity_one, ambiguity_two
from passportnorm.errors import ConfigError


@pytest.fixture(scope="module")
def owner(digits_owner):
    data, released, key = digits_owner
    return data, released, key, torch.utils.data.Subset(data.train, range(len(data.train) // 10))


def test_ambiguity_one_reports_the_forged_claim(owner):
    data, released, key, attacker = owner
    result = ambiguity_one(released, key, attacker, data.test, epochs=1, seed=1)
    assert result["forged_signature_detection"] == 1.0  # the claim is self-consistent by construction
    assert result["forged_accuracy_before"] < 0.5  # random passports: near chance before optimising
    assert 0.0 <= result["forged_accuracy"] <= 1.0
    assert result["forged_verified"] == (result["released_accuracy"] - result["forged_accuracy"] <= 0.10)
    assert not pn.is_protected(released)


@pytest.mark.parametrize("flip", [0.0, 0.5])
def test_ambiguity_two_reports_target_owner_and_passport_distance(owner, flip):
    data, released, key, attacker = owner
    result = ambiguity_two(released, key, attacker, data.test, flip=flip, epochs=1, seed=1)
    if flip == 0.0:  # the target is the owner's signature and the start is near the owner's passports
        assert result["target_detection"] > 0.9 and result["bit_dissimilarity_to_owner"] < 0.1
    assert 0.0 <= result["bit_dissimilarity_to_owner"] <= 1.0 and 0.0 <= result["target_detection"] <= 1.0
    # unit-RMS passports with noise 0.1 start at cosine ~0.995; the push must move them further
    assert result["mean_cosine_to_owner_passports"] < 0.996, "noise and the push must move the passports"
    assert result["forged_verified"] == (result["released_accuracy"] - result["forged_accuracy"] <= 0.10)
    with pytest.raises(ConfigError, match=r"flip share 1.5 must be in \[0, 1\]"):
        ambiguity_two(released, key, attacker, data.test, flip=1.5)
