"""The user's own model and weights through the CLI: --arch file.py:factory / module:factory, --weights."""

import json
import pickle
import textwrap

import pytest
import torch

from passportnorm.cli import main
from passportnorm.fileio import save_tensors
from passportnorm.release import load_released

MODEL_CODE = textwrap.dedent('''
    from torch import nn


    def build(num_classes, in_channels=1):
        """192 channels of conv-bn: enough bits for the 2^-128 claim bound."""
        return nn.Sequential(
            nn.Conv2d(in_channels, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, num_classes),
        )


    def not_a_model():
        return 42
''')
RUN = ["--dataset", "digits", "--epochs", "3", "--batch-size", "32", "--trigger-count", "20", "--secret-seed", "0",
       "--signature", "(c) mine"]


class Boom:
    """A pickle that would create a file if anything ever unpickled it."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


@pytest.fixture(scope="module")
def code(tmp_path_factory):
    folder = tmp_path_factory.mktemp("code")
    (folder / "my_models.py").write_text(MODEL_CODE)
    return folder


@pytest.fixture(scope="module")
def mine(code, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "mine"
    arch = f"{code / 'my_models.py'}:build"
    assert main(["protect", *RUN, "--arch", arch, "--out", str(out)]) == 0
    return out, arch


def test_a_model_from_the_users_file_is_protected_released_and_verified(mine, capsys):
    out, arch = mine
    meta = json.loads((out / "released" / "model.json").read_text())
    assert meta["arch"] == arch and meta["model_config"]["num_classes"] == 10
    args = ["verify", "--model", str(out / "released"), "--key", str(out / "owner-key")]
    assert main(args) == 2  # the folder names code; it runs only when the verifier names it too
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"pass --arch {arch}" in err
    assert main([*args, "--arch", arch]) == 0
    capsys.readouterr()
    assert main(["certify", "--key", str(out / "owner-key"), "--model", str(out / "released"), "--arch", arch,
                 "--out", str(out / "again.json")]) == 0


def test_a_module_path_factory_and_the_users_trained_weights(code, mine, tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(code))
    trained, _ = load_released(mine[0] / "released", trusted_arch=mine[1])
    weights = tmp_path / "trained.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in trained.state_dict().items()}}, weights)  # DDP-style
    out = tmp_path / "retrofit"
    # another secret seed: with the same one the trained model already carries these very bits, and the
    # retrofit key rightly refuses to claim what its ancestor shows (tests/test_lying_parties.py)
    assert main(["protect", *RUN, "--epochs", "1", "--arch", "my_models:build", "--weights", str(weights),
                 "--secret-seed", "1", "--out", str(out)]) == 0
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert history[0]["passport_free_accuracy"] > 0.9  # one epoch from trained weights, not from scratch
    meta = json.loads((out / "released" / "model.json").read_text())
    assert meta["arch"] == "my_models:build" and len(meta["initial_weights_sha256"]) == 64


def test_bad_architectures_and_weights_are_one_line_errors(code, mine, tmp_path, capsys):
    def refused(args, *fragments):
        code_ = main(["protect", *RUN, "--out", str(tmp_path / "never"), *args])
        err = capsys.readouterr().err
        assert code_ == 2 and err.count("\n") == 1, err
        for fragment in fragments:
            assert fragment in err, err
        assert not (tmp_path / "never").exists()

    file_arch = f"{code / 'my_models.py'}:build"
    refused(["--arch", f"{code / 'nope.py'}:build"], "does not exist")
    refused(["--arch", f"{code / 'my_models.py'}:missing"], "has no callable 'missing'")
    refused(["--arch", f"{code / 'my_models.py'}:not_a_model"], "returned a int, not a torch.nn.Module")
    refused(["--arch", "no_such_package.models:build"], "cannot import 'no_such_package.models'")
    other = tmp_path / "other.safetensors"
    save_tensors({"features.0.weight": torch.zeros(3)}, other)
    refused(["--arch", file_arch, "--weights", str(other)], "does not fit this architecture", "'0.weight'")
    sentinel = tmp_path / "executed"
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"0.weight": Boom(sentinel)}))
    refused(["--arch", file_arch, "--weights", str(plain)], "is a plain pickle")
    whole = tmp_path / "whole.pt"
    torch.save(Boom(sentinel), whole)
    refused(["--arch", file_arch, "--weights", str(whole)], "holds Python objects beyond tensors")
    assert not sentinel.exists()  # nothing was ever unpickled


def test_attack_and_dispute_rebuild_the_users_model_only_when_named(mine, tmp_path, capsys):
    out, arch = mine
    attack = ["attack", "prune", "--model", str(out / "released"), "--key", str(out / "owner-key"), "--rates", "0,0.5",
              "--out", str(tmp_path / "prune")]
    assert main(attack) == 2 and f"pass --arch {arch}" in capsys.readouterr().err
    assert main([*attack, "--arch", arch]) == 0
    claim = [str(out / "owner-key"), str(out / "certificate.json"), str(out / "released")]
    dispute = ["dispute", "--suspect", str(out / "released"), "--claim", *claim, "--claim", *claim, "--no-data"]
    capsys.readouterr()
    assert main(dispute) == 2 and f"pass --arch {arch}" in capsys.readouterr().err
    assert main([*dispute, "--arch", arch]) in (0, 1)  # the same claim twice: decided by time, no error
