"""The zoo's small ViT (``--arch vit``): every LayerNorm paired with its consumer, the promises, and
the CLI end to end (protect, verify; an independent ViT not verified)."""

import json

import torch

import passportnorm as pn
from passportnorm import zoo
from passportnorm.cli import main
from passportnorm.protect import protected_layers
from cli_args import train_args

RUN = ["--dataset", "digits", "--arch", "vit", "--epochs", "3", "--batch-size", "32", "--trigger-count", "20",
       "--secret-seed", "0"]


def test_every_layernorm_is_paired_with_its_consumer():
    model = zoo.build("vit", in_channels=1, num_classes=10)
    report = pn.find_pairs(model, torch.zeros(2, 1, 28, 28))
    assert not report.unprotectable and len(report.pairs) == 9 and report.capacity == 576
    links = {p.norm: (p.producer, p.role, p.read_as) for p in report.pairs}
    assert links["blocks.0.norm1"] == ("blocks.0.attn.qkv", "consumer", "as it is")
    assert links["blocks.3.norm2"] == ("blocks.3.mlp.0", "consumer", "as it is")
    assert links["norm"] == ("head", "consumer", "mean over tokens")


def test_protect_keeps_the_function_and_strip_gives_back_the_original():
    model, x = zoo.build("vit", in_channels=3, num_classes=10).eval(), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        reference = model(x)
        protected = pn.protect(model, x, seed=0)
        assert torch.equal(protected(x), reference)
        released = pn.strip(protected)
        assert torch.equal(released(x), reference)
    assert list(released.state_dict()) == list(model.state_dict()) and len(protected_layers(protected)) == 9


def test_the_cli_protects_a_vit_and_verifies_only_its_own(tmp_path, capsys):
    owner, plain = tmp_path / "owner", tmp_path / "plain"
    assert main(["protect", *RUN, "--out", str(owner)]) == 0
    metrics = json.loads((owner / "metrics.json").read_text())
    assert metrics["verification"]["verified"] and metrics["verification"]["signature_detection"] == 1.0
    assert main(["train", *train_args(RUN), "--out", str(plain)]) == 0
    capsys.readouterr()
    assert main(["verify", "--model", str(plain / "released"), "--key", str(owner / "owner-key"), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["verified"] is False



def test_the_vit_trains_with_its_own_recipe_unless_told_otherwise():
    from passportnorm.pipeline import RunOptions, resolve_task

    vit = resolve_task(RunOptions(arch="vit"))
    assert (vit.optimizer, vit.lr) == ("adam", 0.002)
    cnn = resolve_task(RunOptions(arch="resnet18"))
    assert (cnn.optimizer, cnn.lr) == ("sgd", 0.05)
    chosen = resolve_task(RunOptions(arch="vit", optimizer="sgd", lr=0.1))
    assert (chosen.optimizer, chosen.lr) == ("sgd", 0.1)
