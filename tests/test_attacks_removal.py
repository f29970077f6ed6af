"""Removal attacks on a small trained model: fine-tuning (4 modes) and pruning."""


import pytest
import torch

from passportnorm import zoo
from passportnorm.attacks import finetune, prune_sweep
from passportnorm.attacks.finetune import last_layer
from passportnorm.attacks.prune import prune_model
from passportnorm.errors import ConfigError


@pytest.fixture(scope="module")
def owner(digits_owner):
    data, released, key = digits_owner
    return data, released, key, torch.utils.data.Subset(data.train, range(len(data.train) // 2))


@pytest.mark.parametrize("mode", ["ftll", "ftal", "rtll", "rtal"])
def test_finetuning_modes_touch_what_they_say_and_report_each_epoch(owner, mode):
    data, released, key, attacker = owner
    result = finetune(released, key, attacker, data.test, mode=mode, epochs=1, seed=1)
    model = result["model"]
    assert [r["epoch"] for r in result["rows"]] == [0, 1] and "no key" in result["threat_model"]
    assert result["rows"][0]["signature_detection"] == 1.0
    # re-initialised heads answer at chance before training: the accuracy floor refuses that model, whatever its bits
    assert result["rows"][0]["verified"] is mode.startswith("ft")
    _, head = last_layer(model)
    _, old_head = last_layer(released)
    assert not torch.equal(head.weight, old_head.weight)
    body_same = torch.equal(model.features[0].weight, released.features[0].weight)
    assert body_same == mode.endswith("ll")
    assert result["rows"][-1]["attacker_accuracy"] > 0.5
    assert result["verified_after"] is result["rows"][-1]["verified"]


def test_bad_finetune_options(owner):
    data, released, key, _ = owner
    with pytest.raises(ConfigError, match="unknown fine-tuning mode"):
        finetune(released, key, data.train, data.test, mode="ftxx")
    with pytest.raises(ConfigError, match="no data"):
        finetune(released, key, torch.utils.data.Subset(data.train, []), data.test)


def test_pruning_zeroes_the_requested_share_and_sweeps(owner):
    data, released, key, _ = owner
    pruned = prune_model(released, 0.5)
    weights = [m.weight for m in pruned.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert 0.49 < zeros < 0.51
    assert list(pruned.state_dict()) == list(released.state_dict()), "pruning leaves a plain released model"
    result = prune_sweep(released, key, data.test, rates=(0.0, 0.5, 0.95))
    rows = {r["rate"]: r for r in result["rows"]}
    assert rows[0.0]["verified"] and rows[0.0]["signature_detection"] == 1.0
    assert rows[0.95]["attacker_accuracy"] < rows[0.0]["attacker_accuracy"]
    assert result["highest_rate_still_verified"] in (0.0, 0.5, 0.95)
    with pytest.raises(ConfigError, match=r"pruning rate 1.0 must be in \[0, 1\)"):
        prune_model(released, 1.0)


@pytest.mark.parametrize("arch", ["small_cnn", "resnet18", "alexnet"])
@pytest.mark.parametrize(
    "options", [dict(permute=True, flip=0.0, rescale=None), dict(permute=False, flip=0.5, rescale=None),
                dict(permute=False, flip=0.0, rescale=(0.5, 2.0)), dict()]
)
def test_obfuscation_preserves_the_released_function(arch, options):
    from passportnorm.attacks import obfuscate

    torch.manual_seed(0)
    model = zoo.build(arch, in_channels=1, width=0.25)
    with torch.no_grad():  # non-trivial running statistics
        for _ in range(3):
            model.train()(torch.randn(16, 1, 28, 28))
    model.eval()
    x = torch.randn(8, 1, 28, 28)
    obfuscated, changed = obfuscate(model, x[:2], seed=3, **options)
    assert list(obfuscated.state_dict()) == list(model.state_dict())
    torch.testing.assert_close(obfuscated(x), model(x), rtol=1e-4, atol=1e-5)
    changed_weights = [k for k, v in obfuscated.state_dict().items() if not torch.equal(v, model.state_dict()[k])]
    assert changed_weights, "an obfuscation that changes nothing proves nothing"
    if options.get("permute", True):
        assert changed["permuted"]


def test_obfuscation_breaks_naive_verification(owner):
    from passportnorm.attacks import obfuscation_attack

    data, released, key, _ = owner
    result = obfuscation_attack(released, key, data.test, data.train.tensors[0][:4], seed=1)
    rows = {r["transform"]: r for r in result["rows"]}
    assert all(r["max_output_difference"] < 1e-3 for r in rows.values())
    assert all(abs(r["attacker_accuracy"] - rows["permute"]["attacker_accuracy"]) < 1e-9 for r in rows.values())
    assert rows["flip half"]["signature_detection"] < 0.75 and not rows["flip half"]["verified"]
    assert rows["rescale 0.5-2"]["signature_detection"] == 1.0  # positive scales keep every sign
    assert not rows["all three"]["verified"]


def test_group_norm_channels_are_not_flipped():
    from passportnorm.attacks import obfuscate

    model = zoo.build("small_cnn", width=0.25, norm="gn").eval()
    x = torch.randn(4, 1, 28, 28)
    obfuscated, changed = obfuscate(model, x, permute=False, seed=0)
    assert set(changed["skipped"]) == {"features.1", "features.5", "features.9"}
    assert "mixes channels" in changed["skipped"]["features.1"]
    torch.testing.assert_close(obfuscated(x), model(x))


class _Interrupt(Exception):
    pass


def test_interrupted_finetuning_resumes_from_its_last_epoch(owner, tmp_path, monkeypatch):
    import importlib

    finetune_module = importlib.import_module("passportnorm.attacks.finetune")

    data, released, key, attacker = owner
    whole = finetune(released, key, attacker, data.test, mode="ftal", epochs=3, seed=2)
    real_verify, calls = finetune_module.verify, {"n": 0}

    def dying_verify(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # epoch 0 and 1 evaluated; die while evaluating epoch 2
            raise _Interrupt
        return real_verify(*args, **kwargs)

    monkeypatch.setattr(finetune_module, "verify", dying_verify)
    checkpoint = tmp_path / "ft.pt"
    with pytest.raises(_Interrupt):
        finetune(released, key, attacker, data.test, mode="ftal", epochs=3, seed=2, checkpoint=checkpoint)
    monkeypatch.setattr(finetune_module, "verify", real_verify)
    resumed = finetune(released, key, attacker, data.test, mode="ftal", epochs=3, seed=2, checkpoint=checkpoint)
    assert [r["epoch"] for r in resumed["rows"]] == [0, 1, 2, 3]
    for a, b in zip(whole["model"].state_dict().values(), resumed["model"].state_dict().values()):
        assert torch.equal(a, b)
