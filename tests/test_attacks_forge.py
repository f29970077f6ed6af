"""Closed-form forgery: a forged key passes the paper's verification criteria on the released model."""


import pytest
import torch

import passportnorm as pn
from passportnorm import zoo
from passportnorm.attacks.forge import _min_norm_solution, forge_attack, forge_key
from passportnorm.key import OwnerKey, attach_key
from passportnorm.verify import VerdictRule


def test_min_norm_solution_reaches_any_target_of_a_full_rank_map():
    torch.manual_seed(0)
    matrix = torch.randn(32, 256) * torch.logspace(0, 4, 32).unsqueeze(1)  # badly scaled rows
    target = torch.sign(torch.randn(32))
    x = _min_norm_solution(matrix, target)
    torch.testing.assert_close(matrix @ x, target, rtol=1e-4, atol=1e-4)
    least = torch.linalg.pinv(matrix.double()) @ target.double()
    torch.testing.assert_close(x.double().norm(), least.norm(), rtol=1e-4, atol=1e-6)


def test_forged_key_loads_attaches_and_reads_its_own_signature(tmp_path):
    model = zoo.build("resnet18", in_channels=1, width=0.25).eval()  # 16 first-conv channels > 9 reachable
    x = torch.randn(4, 1, 16, 16)
    key, info = forge_key(model, x, signature="(c) Mallory", seed=1, signature_mode="text")
    key.save(tmp_path / "forged")
    loaded = OwnerKey.load(tmp_path / "forged")
    detection = pn.signature_detection(attach_key(model, loaded))
    assert detection.rate == 1.0 and detection.message == "(c) Mallory"
    left_out = info["layers_left_out_rank_deficient"]
    assert "bn1" in left_out, "a first conv over one channel cannot spell every signature"
    assert "layer2.0.shortcut.1" in left_out, "nor can a 1x1 conv that widens 16 channels to 32"
    assert info["layers_forged"] == 20 - len(left_out) and "layer4.1.bn1" not in left_out
    assert max(info["mlp_fit_max_residual"].values()) < 1e-3


@pytest.fixture(scope="module")
def owner(digits_owner):
    return digits_owner


def test_forgery_passes_the_papers_verification(owner):
    """With the paper's text signatures and its verification rule, the forgery is accepted."""
    data, released, key = owner
    papers_rule = VerdictRule(allow_text_signatures=True)
    result = forge_attack(released, key, data.test, data.train.tensors[0][:4], seed=2, rule=papers_rule, signature_mode="text")
    forged, genuine = result["forged"], result["owner"]
    assert genuine["verified"]
    assert result["forged_verified"], "the scheme as published cannot tell this forgery from the owner"
    assert forged["signature_detection"] == 1.0 and result["forged_decoded_text"] == "(c) Mallory"
    assert abs(forged["passport_aware_accuracy"] - forged["passport_free_accuracy"]) < 0.01
    assert "no data, no key" in result["threat_model"]
