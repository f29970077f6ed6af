"""The CLI end to end on a tiny budget: protect, verify, train, inspect, resume, and bad input."""

import json
import subprocess
import sys

import pytest
import torch

from passportnorm.cli import main
from cli_args import train_args
from resume import assert_resume_matches_uninterrupted

# width 1.0: 192 hash-bound bits, enough for the 2^-128 claim bound (96 would not be)
TINY = ["--dataset", "digits", "--arch", "small_cnn", "--width", "1.0", "--epochs", "2", "--batch-size", "32", "--secret-seed", "0",
        "--trigger-count", "20", "--signature", "(c) CLI"]


@pytest.fixture(scope="module")
def protected_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "protected"
    assert main(["protect", *TINY, "--out", str(out)]) == 0
    return out


def test_protect_writes_every_output(protected_run):
    out = protected_run
    for name in ("released/model.safetensors", "released/model.json", "owner-key/key.json", "owner-key/key.safetensors",
                 "certificate.json", "metrics.json", "history.csv", "report.md", "secret/checkpoint.pt",
                 "secret/run-secrets.json"):
        assert (out / name).is_file(), name
    for secret in ("owner-key", "owner-key/key.safetensors", "secret", "secret/checkpoint.pt", "secret/run-secrets.json"):
        assert (out / secret).stat().st_mode & 0o077 == 0, f"{secret} is readable by others"
    assert (out / "released").stat().st_mode & 0o055 == 0o055  # public: readable by all
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["verification"]["verified"] and metrics["settings"]["signature"] == "(c) CLI"
    assert len(metrics["history"]) == 2 and "VERIFIED" in (out / "report.md").read_text()
    assert (out / "history.csv").read_text().startswith("epoch,seconds,lr,passport_free_accuracy")


def test_verify_exit_codes(protected_run, tmp_path, capsys):
    out = protected_run
    args = ["verify", "--model", str(out / "released"), "--key", str(out / "owner-key")]
    assert main([*args, "--certificate", str(out / "certificate.json")]) == 0
    capsys.readouterr()
    assert main([*args, "--json", "--no-data"]) == 0
    assert json.loads(capsys.readouterr().out)["passport_aware_accuracy"] is None
    plain = tmp_path / "plain"
    assert main(["train", *train_args(TINY), "--out", str(plain)]) == 0
    assert not (plain / "owner-key").exists()
    capsys.readouterr()
    assert main(["verify", "--model", str(plain / "released"), "--key", str(out / "owner-key"), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["verified"] is False and report["signature_p_value"] > 1e-6


@pytest.mark.parametrize(
    "breakage,message",
    [
        (lambda out: (out / "owner-key" / "key.safetensors").write_bytes(b"junk"), "key.safetensors does not match"),
        (lambda out: (out / "released" / "model.safetensors").write_bytes(b"\x80\x04junk"), "pickle"),
        (lambda out: (out / "certificate.json").write_text('{"scheme": 1}'), "not a passportnorm certificate"),
    ],
)
def test_bad_files_give_one_line_and_exit_2(protected_run, tmp_path, capsys, breakage, message):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(protected_run, out)
    breakage(out)
    code = main(["verify", "--model", str(out / "released"), "--key", str(out / "owner-key"),
                 "--certificate", str(out / "certificate.json")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and message in err, err


def test_certificate_of_another_key_is_an_error(protected_run, tmp_path, capsys):
    other = tmp_path / "other"
    assert main(["protect", *TINY, "--epochs", "1", "--seed", "3", "--out", str(other)]) == 0
    capsys.readouterr()
    code = main(["verify", "--model", str(protected_run / "released"), "--key", str(protected_run / "owner-key"),
                 "--certificate", str(other / "certificate.json"), "--no-data"])
    assert code == 2 and "not the certified key" in capsys.readouterr().err


def test_key_for_another_architecture_is_exit_2(protected_run, tmp_path, capsys):
    narrow = tmp_path / "narrow"
    assert main(["protect", *TINY, "--width", "0.5", "--epochs", "1", "--signature", "ok", "--out", str(narrow)]) == 1  # 96 bits
    capsys.readouterr()
    code = main(["verify", "--model", str(narrow / "released"), "--key", str(protected_run / "owner-key")])
    err = capsys.readouterr().err
    assert code == 2 and "the key is for another architecture" in err and err.count("\n") == 1


def test_missing_dataset_and_oversized_signature_leave_no_outputs(tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["protect", "--dataset", "cifar10", "--data-dir", str(tmp_path / "no-cifar"), "--out", str(out)]) == 2
    assert "no-cifar does not exist" in capsys.readouterr().err
    assert main(["protect", *TINY, "--signature", "x" * 200, "--signature-mode", "text", "--out", str(out)]) == 2
    assert "capacity of" in capsys.readouterr().err
    assert not out.exists()


def test_config_file_and_flags(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("dataset: digits\narch: small_cnn\nwidth: 0.25\nepochs: 1\nbatch_size: 64\ntrigger: none\nsignature: ok\n")
    out = tmp_path / "cfg"
    assert main(["protect", "--config", str(config), "--epochs", "1", "--out", str(out)]) == 1  # 48 bits cannot verify
    settings = json.loads((out / "metrics.json").read_text())["settings"]
    assert settings["width"] == 0.25 and settings["trigger"] == "none"
    config.write_text("colour: blue\n")
    assert main(["protect", "--config", str(config), "--out", str(tmp_path / "cfg2")]) == 2
    assert "unknown option 'colour'" in capsys.readouterr().err


def test_holdout_aware_optimizer_and_exclude_flags_reach_the_run(tmp_path, capsys):
    out = tmp_path / "holdout"
    args = ["train", "--dataset", "digits", "--arch", "small_cnn", "--width", "0.25", "--epochs", "1", "--holdout", "0.2"]
    assert main([*args, "--out", str(out)]) == 0
    assert "(1149 train / 288 test)" in capsys.readouterr().out  # 20% of digits' 1437 training images; test split unused
    assert main(["protect", *args[1:], "--aware-optimizer", "separate", "--trigger", "none", "--exclude", " features.5 ,nothing*",
                 "--out", str(tmp_path / "p")]) == 1  # 32 bits cannot reach the claim bound
    metrics = json.loads((tmp_path / "p" / "metrics.json").read_text())
    assert metrics["settings"]["holdout"] == 0.2 and metrics["settings"]["aware_optimizer"] == "separate"
    assert metrics["verification"]["signature_bits"] == 32  # features.9 only: features.1 is weak, features.5 excluded
    assert main(["train", *args[1:], "--holdout", "1.5", "--out", str(tmp_path / "bad")]) == 2
    assert "holdout (--holdout, or holdout: in --config) is 1.5; it must be >= 0 and < 1" in capsys.readouterr().err


def test_inspect_lists_weak_and_protectable_layers(capsys):
    assert main(["inspect", "--arch", "resnet18", "--width", "0.125", "--dataset", "mnist5k"]) == 0
    text = capsys.readouterr().out
    assert "20 protectable norm layers" in text and "bn1 (BatchNorm2d, 8 ch) <- conv1 (Conv2d)  [fan-in 1" in text


def test_interrupted_protect_resumes_to_the_same_release(tmp_path, monkeypatch):
    base = dict(dataset="digits", arch="small_cnn", width=0.5, epochs=3, batch_size=32, trigger_count=20, signature="ok")
    assert_resume_matches_uninterrupted(tmp_path, monkeypatch, base, stop_at_step=70)  # inside epoch 2 (45 per epoch)


def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "passportnorm.cli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and "passportnorm" in result.stdout


@pytest.mark.slow
def test_full_default_pipeline_like_make_demo(tmp_path):
    out = tmp_path / "demo"
    assert main(["protect", "--out", str(out)]) == 0
    assert main(["verify", "--model", str(out / "released"), "--key", str(out / "owner-key"),
                 "--certificate", str(out / "certificate.json")]) == 0
    assert main(["train", "--out", str(tmp_path / "plain")]) == 0
    assert main(["verify", "--model", str(tmp_path / "plain" / "released"), "--key", str(out / "owner-key")]) == 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["verification"]["signature_detection"] == 1.0
    assert torch.cuda.is_available() or metrics["environment"]["device"] == "cpu"


def test_each_epoch_line_is_printed_when_the_epoch_ends(tmp_path, monkeypatch, capsys):
    """Progress reaches logs as it happens: the line of epoch 1 is out before epoch 2 starts."""
    from passportnorm.train import Trainer

    seen_before_epoch_2 = []
    original = Trainer._batches

    def batches(self, epoch):
        if epoch == 1:
            seen_before_epoch_2.append(capsys.readouterr().out)
        return original(self, epoch)

    monkeypatch.setattr(Trainer, "_batches", batches)
    assert main(["train", "--dataset", "digits", "--arch", "small_cnn", "--epochs", "2", "--out", str(tmp_path / "t")]) == 0
    assert "epoch 1, seconds" in seen_before_epoch_2[0] and "epoch 2," not in seen_before_epoch_2[0]
    assert "epoch 2, seconds" in capsys.readouterr().out


@pytest.mark.parametrize(
    "line,message",
    [
        ("epochs: ten", "epochs (--epochs, or epochs: in --config) is 'ten'; it takes a whole number"),
        ("epochs: 0", "epochs (--epochs, or epochs: in --config) is 0; it must be >= 1"),
        ("width: 0", "width (--width, or width: in --config) is 0.0; it must be > 0"),
        ("width: -0.5", "it must be > 0 (the model's channel multiplier"),
        ("batch_size: 0", "batch_size (--batch-size, or batch_size: in --config) is 0; it must be >= 1"),
        ("lr: fast", "lr (--lr, or lr: in --config) is 'fast'; it takes a number"),
        ("seed: 1.5", "seed (--seed, or seed: in --config) is 1.5; it takes a whole number"),
        ("overwrite: maybe", "it takes true or false"),
        ("secret_seed: abc", "it takes a whole number or empty (null)"),
        ("triggers_per_batch: -1", "it must be >= 0"),
        ("exclude: [a, b]", "exclude (--exclude, or exclude: in --config) is ['a', 'b']; it takes text"),
        ("points: -4", "points (--points, or points: in --config) is -4"),
        ("alpha: -1", "alpha (--alpha, or alpha: in --config) is -1.0; it must be >= 0"),
        ("wdith: 0.5", "unknown option 'wdith' in the config"),
        ("schedule: joined", "unknown schedule 'joined'"),
    ],
)
def test_every_config_value_is_checked_like_its_flag(tmp_path, capsys, line, message):
    """Issue 33: a YAML value argparse never saw (a word for a count, a zero width) reached the run."""
    config = tmp_path / "run.yaml"
    config.write_text(line + "\n")
    out = tmp_path / "run"
    assert main(["protect", "--config", str(config), "--dataset", "digits", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not out.exists()
