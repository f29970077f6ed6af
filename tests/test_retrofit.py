"""Retrofit: a trained model's signature embedded at once and its branches started as its norms."""

import copy
import importlib.util
import json

import pytest
import torch

import passportnorm as pn
from passportnorm import zoo
from passportnorm.cli import main
from passportnorm.protect import passport_mode, protected_layers
from passportnorm.retrofit import embed_signature, retrofit, warm_start

needs_zoo = pytest.mark.skipif(
    not all(importlib.util.find_spec(name) for name in ("torchvision", "timm")),
    reason="the zoo extra is not installed: pip install 'passportnorm[zoo]'",
)


def _trained_like(model: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    """Running statistics and affine values away from their defaults, as training leaves them."""
    torch.manual_seed(1)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(x)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.3, 0.3)
    return model.eval()


def _protected(model, x):
    return pn.protect(_trained_like(model, x), x[:8], signature="(c) retrofit", seed=3, weak_layers="skip")


def small_cnn() -> torch.nn.Module:
    return zoo.build("small_cnn", in_channels=1, num_classes=10)


def _g_of(branch, weight):
    from passportnorm.norm import producer_responses

    return producer_responses(branch.producer, weight, branch.passport_gamma, branch.channels)[0].detach()


def _trained_gn(model: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.GroupNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.3, 0.3)
    return model.eval()


def test_embedding_moves_each_short_filter_the_least_and_flips_none():
    x = torch.randn(16, 1, 28, 28)
    model = _protected(small_cnn(), x)
    before = {
        path: branch.producer.weight.detach().clone() for path, branch in protected_layers(model).items()
    }
    assert pn.signature_detection(model).rate < 0.9
    done = embed_signature(model, x[:8], headroom=2.0)
    assert pn.signature_detection(model).rate == 1.0 and done["moved_layers"] == len(before)
    assert "flipped_filters" not in done
    for path, branch in protected_layers(model).items():
        g, old = branch.passport_responses()[0].detach(), _g_of(branch, before[path])
        signature = branch.signature.to(g.dtype)
        assert bool((signature * g >= 2 * branch.margin - 1e-5).all())
        weight = branch.producer.weight.detach()
        kept = signature * old >= 2 * branch.margin  # a bit that held with room keeps its filter
        torch.testing.assert_close(weight[kept], before[path][kept])
        change = (weight - before[path]).flatten(1)
        assert bool((change.norm(dim=1)[~kept] > 0).all())
        # no filter is negated (the free flip an alignment would undo): each moved filter keeps
        # pointing the way it did outside the one direction its bit is read along
        direction = torch.nn.functional.normalize(change[~kept], dim=1)
        rows = before[path][~kept].flatten(1)
        outside = rows - (rows * direction).sum(1, keepdim=True) * direction
        moved = weight[~kept].flatten(1)
        torch.testing.assert_close(moved - (moved * direction).sum(1, keepdim=True) * direction, outside)


def test_the_ancestor_read_through_the_retrofit_key_shows_no_signature():
    """The retrofit's bits live only in what it moved: the model it started from, aligned to the
    retrofitted release and read with its key, matches the signature at chance (issue 33)."""
    from passportnorm.key import extract_key
    from passportnorm.verify import verify

    x = torch.randn(16, 1, 28, 28)
    ancestor = _trained_like(small_cnn(), x)
    model = pn.protect(copy.deepcopy(ancestor), x[:8], signature="(c) retrofit", seed=3, weak_layers="skip")
    retrofit(model, x[:8])
    key = extract_key(model)
    released = pn.strip(model)
    assert verify(released, key).verified
    report = verify(ancestor, key, reference=released)
    assert report.alignment["used"] and report.alignment["flipped"] == 0
    assert not report.verified and report.signature_detection < 0.7, report.signature_detection


def test_norms_that_mix_channels_get_the_least_move_too():
    x = torch.randn(16, 1, 28, 28)
    model = pn.protect(
        _trained_gn(zoo.build("small_cnn", in_channels=1, num_classes=10, norm="gn")),
        x[:8],
        signature="(c) retrofit",
        seed=3,
        weak_layers="skip",
    )
    before = {
        path: branch.producer.weight.detach().clone() for path, branch in protected_layers(model).items()
    }
    done = embed_signature(model, x[:8], headroom=2.0)
    assert done["moved_layers"] == len(before)
    assert pn.signature_detection(model).rate == 1.0
    for path, branch in protected_layers(model).items():
        g = branch.passport_responses()[0]
        signature = branch.signature.to(g.dtype)
        assert bool((signature * g >= 2 * branch.margin - 1e-5).all())
        change = (branch.producer.weight - before[path]).flatten(1).norm(dim=1)
        # filters whose bit already held with room are left exactly as they were; the others move
        kept = signature * _g_of(branch, before[path]) >= 2 * branch.margin
        assert bool((change[kept] == 0).all()) and bool((change[~kept] > 0).all())


def test_warm_branches_answer_like_the_trained_norms():
    x = torch.randn(16, 1, 28, 28)
    model = _protected(small_cnn(), x)
    embed_signature(model, x[:8])
    free = model(x)
    with passport_mode(model):
        cold = model(x)
    gaps = warm_start(model)
    with passport_mode(model):
        warm = model(x)
    assert max(gaps.values()) < 1e-4
    assert (cold - free).abs().max() > 0.1  # a fresh branch answers otherwise
    torch.testing.assert_close(warm, free, rtol=1e-4, atol=1e-4)
    assert pn.signature_detection(model).rate == 1.0  # the warm start moves no sign


@needs_zoo
@pytest.mark.parametrize("name", ["tv:resnet18", "timm:resnet18"])
def test_retrofit_on_models_we_did_not_write(name):
    x = torch.randn(8, 3, 32, 32)
    model = pn.protect(
        _trained_like(zoo.build(name, in_channels=3, num_classes=10), x), x, signature="(c) zoo", seed=5
    )
    model.eval()
    prepared = retrofit(model, x)
    assert pn.signature_detection(model).rate == 1.0 and prepared["largest_affine_gap"] < 1e-3
    free = model(x)
    with passport_mode(model):
        aware = model(x)
    torch.testing.assert_close(aware, free, rtol=1e-3, atol=1e-3)
    released = pn.strip(model)
    assert type(released.bn1) is type(zoo.build(name, in_channels=3, num_classes=10).bn1)


def test_protect_from_weights_uses_the_retrofit_recipe(tmp_path, capsys):
    common = ["--dataset", "digits", "--batch-size", "32", "--seed", "0", "--arch", "resnet18"]
    assert main(["train", *common, "--epochs", "3", "--out", str(tmp_path / "plain")]) == 0
    trained = json.loads((tmp_path / "plain" / "metrics.json").read_text())["history"][-1][
        "passport_free_accuracy"
    ]
    weights = ["--weights", str(tmp_path / "plain" / "released" / "model.safetensors")]
    out = tmp_path / "retrofit"
    retrofit_run = [
        "protect",
        *common,
        "--epochs",
        "2",
        "--secret-seed",
        "0",
        "--trigger-count",
        "20",
        *weights,
    ]
    assert main([*retrofit_run, "--out", str(out)]) == 0
    assert "retrofit: signature embedded" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["settings"]["schedule"] == "interleave" and metrics["settings"]["lr"] == 0.01
    assert metrics["retrofit"]["largest_affine_gap"] < 1e-3 and metrics["retrofit"]["moved_layers"] > 0
    last = metrics["history"][-1]
    assert last["signature_detection"] == 1.0 and metrics["verified"]
    assert last["passport_free_accuracy"] >= trained - 0.03, (last, trained)
    # an explicit schedule and learning rate stay the user's
    again = tmp_path / "explicit"
    assert (
        main([*retrofit_run, "--epochs", "1", "--schedule", "alternate", "--lr", "0.05", "--out", str(again)])
        == 0
    )
    settings = json.loads((again / "metrics.json").read_text())["settings"]
    assert settings["schedule"] == "alternate" and settings["lr"] == 0.05
