"""Point clouds through the same CLI: protect, verify, train, attack, resume, and bad input."""

import json

import pytest

from passportnorm.cli import main
from cli_args import train_args
from passportnorm.pipeline import RunOptions, resolve_task
from passportnorm.release import load_released
from resume import assert_resume_matches_uninterrupted

# PointNet without T-Nets keeps the CLI tests fast; the T-Net model's promises are in tests/models.py
TINY = ["--dataset", "shapes3d", "--arch", "pointnet_vanilla", "--points", "64", "--width", "0.25", "--epochs", "5", "--lr", "0.05", "--secret-seed", "0",
        "--batch-size", "32", "--trigger-count", "20", "--signature", "(c) points"]


@pytest.fixture(scope="module")
def protected_clouds(tmp_path_factory):
    out = tmp_path_factory.mktemp("clouds") / "protected"
    assert main(["protect", *TINY, "--out", str(out)]) == 0
    return out


def test_the_dataset_implies_the_task_model_and_triggers():
    resolved = resolve_task(RunOptions(dataset="shapes3d"))
    assert (resolved.task, resolved.arch, resolved.trigger) == ("pointcloud", "pointnet", "shapes")
    assert (resolved.triggers_per_batch, resolved.transform_layers) == (8, "skip")  # shapes are learned slowly
    resolved = resolve_task(RunOptions(dataset="mnist5k"))
    assert (resolved.task, resolved.arch, resolved.trigger) == ("image", "resnet18", "noise")
    assert resolved.triggers_per_batch == 2
    assert resolve_task(RunOptions(dataset="shapes3d", triggers_per_batch=3)).triggers_per_batch == 3


def test_protect_writes_a_verified_point_cloud_release(protected_clouds):
    metrics = json.loads((protected_clouds / "metrics.json").read_text())
    settings = metrics["settings"]
    assert (settings["task"], settings["arch"], settings["trigger"], settings["points"]) == ("pointcloud", "pointnet_vanilla", "shapes", 64)
    verification = metrics["verification"]
    assert verification["verified"] and verification["signature_detection"] > 0.95
    assert verification["identity"] == "(c) points" and verification["bits_follow_from_passports"]
    released, meta = load_released(protected_clouds / "released")
    assert type(released).__name__ == "PointNet" and meta["arch"] == "pointnet_vanilla"
    assert not any("Passport" in type(m).__name__ for m in released.modules())


def test_verify_and_a_plain_model(protected_clouds, tmp_path, capsys):
    key = str(protected_clouds / "owner-key")
    assert main(["verify", "--model", str(protected_clouds / "released"), "--key", key,
                 "--certificate", str(protected_clouds / "certificate.json")]) == 0
    capsys.readouterr()
    assert main(["verify", "--model", str(protected_clouds / "released"), "--key", key, "--recalibrate", "--json"]) == 0
    recalibrated = json.loads(capsys.readouterr().out)
    assert recalibrated["verified"] and recalibrated["passport_aware_accuracy"] > 0.5
    plain = tmp_path / "plain"
    assert main(["train", *train_args(TINY), "--out", str(plain)]) == 0
    capsys.readouterr()
    assert main(["verify", "--model", str(plain / "released"), "--key", key, "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["signature_p_value"] > 1e-6


@pytest.mark.parametrize("attack,extra", [("finetune", ["--epochs", "1"]), ("prune", ["--rates", "0,0.5"]),
                                          ("transfer", ["--epochs", "1"]), ("obfuscate", []), ("forge", [])])
def test_attacks_run_on_point_clouds(protected_clouds, tmp_path, attack, extra):
    out = tmp_path / attack
    args = ["attack", attack, "--model", str(protected_clouds / "released"), "--key", str(protected_clouds / "owner-key"),
            "--out", str(out), *extra]
    assert main(args) == 0
    rows = json.loads((out / "result.json").read_text())["rows"]
    if attack == "obfuscate":  # flips hide the bits; alignment to the release brings them back, while
        # PointNet's permuted layers (a conv chain: every one can move) count no bits after it (attack spell)
        unpermuted = [r for r in rows if r["layers_permuted"] == 0]
        assert unpermuted and all(r["aligned_signature_detection"] > 0.9 for r in unpermuted)
        every = next(r for r in rows if r["transform"] == "all three")
        assert every["signature_detection"] < 0.7 and not every["aligned_verified"]
        rotate = next(r for r in rows if r["transform"] == "rotate")  # PointNet has no residual stream
        assert rotate["stream_rotated"] is None and rotate["signature_detection"] == 1.0
    elif attack == "forge":  # the hash-bound forgery stays at chance agreement
        assert not rows[0]["forged_verified"] and rows[0]["best_agreement"] < 0.65
    else:
        assert rows and rows[0]["signature_detection"] > 0.9
    if attack == "transfer":
        assert "shapes3d -> mnist5k-points" in (out / "result.md").read_text()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--dataset", "shapes3d", "--arch", "resnet18"], "model 'resnet18' reads image inputs but 'shapes3d' holds pointcloud data; use --arch pointnet"),
        (["--dataset", "mnist5k", "--arch", "pointnet"], "use --arch resnet18"),
        (["--dataset", "shapes3d", "--task", "image"], "dataset 'shapes3d' holds pointcloud data, not image"),
        (["--dataset", "mnist5k", "--points", "64"], "--points applies to point-cloud datasets"),
        (["--dataset", "shapes3d", "--trigger", "pattern"], "trigger kind 'pattern' does not fit"),
        (["--dataset", "modelnet40", "--data-dir", "/nonexistent/modelnet"], "modelnet40: data folder /nonexistent/modelnet does not exist"),
    ],
)
def test_mismatched_options_are_one_line_errors(tmp_path, capsys, args, message):
    out = tmp_path / "never"
    assert main(["protect", *args, "--epochs", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (out / "released").exists()


def test_interrupted_point_cloud_run_resumes_to_the_same_release(tmp_path, monkeypatch):
    base = dict(dataset="shapes3d", arch="pointnet_vanilla", points=64, width=0.125, epochs=2, batch_size=64,
                trigger_count=20, signature="ok")
    assert_resume_matches_uninterrupted(tmp_path, monkeypatch, base, stop_at_step=30)  # 25 batches per epoch
