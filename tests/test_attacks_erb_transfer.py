"""ERB (CERB, IERB) and transfer learning on a small trained model."""


import pytest
import torch

from passportnorm.attacks import class_split, erb_attack, transfer
from passportnorm.attacks.erb import ERBBranch
from passportnorm.errors import ConfigError


@pytest.fixture(scope="module")
def owner(digits_owner):
    return digits_owner


def test_erb_block_shapes_and_identity_start():
    norm = torch.nn.BatchNorm2d(16).eval()
    for mode in ("cerb", "ierb"):
        branch = ERBBranch(norm, mode, torch.Generator().manual_seed(0))
        gamma, beta = branch.affine()
        torch.testing.assert_close(gamma, branch.gamma)  # the up-projection starts at zero: a pure skip
        assert branch(torch.randn(2, 16, 4, 4)).shape == (2, 16, 4, 4)


@pytest.mark.parametrize("mode", ["cerb", "ierb"])
def test_erb_attack_trains_only_its_branches(owner, mode):
    data, released, key = owner
    attacker = torch.utils.data.Subset(data.train, range(len(data.train) // 10))
    result = erb_attack(released, key, attacker, data.test, mode=mode, epochs=2, seed=1)
    forged = result["model_with_forged_branch"]
    assert result["forged_accuracy"] > 0.15 and 0.0 <= result["bit_dissimilarity_to_owner"] <= 1.0
    assert torch.equal(forged.features[0].weight, released.features[0].weight), "the model stays frozen"
    assert sum(isinstance(m, ERBBranch) for m in forged.modules()) == len(key.layers)
    with pytest.raises(ConfigError, match="unknown ERB mode 'xerb'; choose cerb or ierb"):
        erb_attack(released, key, attacker, data.test, mode="xerb")


def test_transfer_to_a_class_split_keeps_reporting_the_signature(owner):
    data, released, key = owner
    train, test = class_split(data.train, [5, 6, 7, 8, 9]), class_split(data.test, [5, 6, 7, 8, 9])
    assert set(train.tensors[1].tolist()) == {0, 1, 2, 3, 4}
    result = transfer(released, key, train, test, num_classes=5, task="digits 5-9", epochs=1, seed=1)
    model = result["model"]
    assert model.classifier.out_features == 5 and result["rows"][-1]["attacker_accuracy"] > 0.5
    assert 0.0 <= result["rows"][-1]["signature_detection"] <= 1.0
    assert not torch.equal(model.features[0].weight, released.features[0].weight)


def test_transfer_resumes_from_its_checkpoint(owner, tmp_path):
    data, released, key = owner
    train, test = class_split(data.train, [5, 6, 7, 8, 9]), class_split(data.test, [5, 6, 7, 8, 9])
    whole = transfer(released, key, train, test, num_classes=5, epochs=2, seed=3)
    transfer(released, key, train, test, num_classes=5, epochs=1, seed=3, checkpoint=tmp_path / "t.pt")  # "killed" after 1
    resumed = transfer(released, key, train, test, num_classes=5, epochs=2, seed=3, checkpoint=tmp_path / "t.pt")
    assert [r["epoch"] for r in resumed["rows"]] == [1, 2]
    for a, b in zip(whole["model"].state_dict().values(), resumed["model"].state_dict().values()):
        assert torch.equal(a, b)
