"""Nothing is lost, and nothing is certified that does not verify.

``protect`` refuses a folder holding an earlier run unless told to resume or overwrite it, says
at the end whether its release verifies (exit 1 and no certificate when not), and ``certify``
certifies only a key and model that verify together. Bad input is one line and exit code 2.
"""

import hashlib
import json

import pytest
import torch

from passportnorm.cli import main
from cli_args import train_args
from passportnorm.release import load_released, save_released

TINY = ["--dataset", "digits", "--arch", "small_cnn", "--width", "1.0", "--epochs", "2", "--batch-size", "32",
        "--trigger-count", "20", "--secret-seed", "3", "--signature", "(c) R"]
TOO_FEW_BITS = ["--width", "0.25", "--epochs", "1"]  # 48 bits: no claim can reach 2^-128


def _digest(folder) -> dict[str, tuple[str, int]]:
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("folder") / "run"
    assert main(["protect", *TINY, "--out", str(out)]) == 0
    return out


def _one_line_error(capsys, code, *fragments):
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("passportnorm: error:"), err
    for fragment in fragments:
        assert fragment in err, err


def test_protect_refuses_a_used_folder_without_touching_the_key(run, capsys):
    before = _digest(run / "owner-key"), (run / "certificate.json").read_text()
    code = main(["protect", *TINY, "--out", str(run)])
    _one_line_error(capsys, code, "already holds an earlier run", "--resume", "--overwrite")
    assert (_digest(run / "owner-key"), (run / "certificate.json").read_text()) == before
    code = main(["train", *train_args(TINY), "--out", str(run)])
    _one_line_error(capsys, code, "already holds an earlier run")
    code = main(["protect", *TINY, "--out", str(run), "--resume", "--overwrite"])
    _one_line_error(capsys, code, "give one of them")


def test_an_output_path_that_is_a_file_is_refused(tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    code = main(["protect", *TINY, "--out", str(target)])
    _one_line_error(capsys, code, "is a file, not a folder")
    assert target.read_text() == "mine"


def test_a_release_that_does_not_verify_gets_exit_1_a_hint_and_no_certificate(tmp_path, capsys):
    out = tmp_path / "weak"
    assert main(["protect", *TINY, *TOO_FEW_BITS, "--out", str(out)]) == 1
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("protect: NOT VERIFIED, so no certificate was issued") and "--epochs 2 --overwrite" in last
    assert "misses the threshold" in last and "--width" in last
    assert not (out / "certificate.json").exists() and (out / "owner-key" / "key.json").is_file()
    assert json.loads((out / "metrics.json").read_text())["verified"] is False


def test_overwriting_with_a_run_that_does_not_verify_removes_the_stale_certificate(tmp_path):
    out = tmp_path / "again"
    assert main(["protect", *TINY, "--out", str(out)]) == 0 and (out / "certificate.json").is_file()
    assert main(["protect", *TINY, *TOO_FEW_BITS, "--out", str(out), "--overwrite"]) == 1
    assert not (out / "certificate.json").exists()  # it committed to the key that was just replaced


def test_resume_of_a_finished_run_keeps_its_certificate(run):
    before = (run / "certificate.json").read_text()
    assert main(["protect", *TINY, "--out", str(run), "--resume"]) == 0
    assert (run / "certificate.json").read_text() == before  # a published time must not move


def test_certify_checks_the_pair_before_certifying(run, tmp_path, capsys):
    good = tmp_path / "good.json"
    assert main(["certify", "--key", str(run / "owner-key"), "--model", str(run / "released"), "--out", str(good)]) == 0
    assert json.loads(good.read_text())["key_sha256"] == json.loads((run / "certificate.json").read_text())["key_sha256"]

    plain = tmp_path / "plain"
    assert main(["train", *train_args(TINY), "--out", str(plain)]) == 0
    capsys.readouterr()
    refused = tmp_path / "refused.json"
    assert main(["certify", "--key", str(run / "owner-key"), "--model", str(plain / "released"), "--out", str(refused)]) == 1
    err = capsys.readouterr().err
    assert "certify refused" in err and "signature:" in err and not refused.exists()

    narrow = tmp_path / "narrow"
    assert main(["protect", *TINY, *TOO_FEW_BITS, "--out", str(narrow)]) == 1
    capsys.readouterr()
    other = tmp_path / "other.json"
    code = main(["certify", "--key", str(run / "owner-key"), "--model", str(narrow / "released"), "--out", str(other)])
    _one_line_error(capsys, code, "the key is for another architecture")
    assert not other.exists()
    code = main(["certify", "--key", str(run / "owner-key"), "--model", str(run / "released"), "--out", str(tmp_path)])
    _one_line_error(capsys, code, "is a folder")


def test_bad_references_and_narrow_suspects_are_one_line_errors(run, tmp_path, capsys):
    narrow = tmp_path / "narrow"
    assert main(["train", *train_args(TINY), "--width", "0.5", "--epochs", "1", "--out", str(narrow)]) == 0
    capsys.readouterr()
    key, released = str(run / "owner-key"), str(run / "released")
    # a reference of another architecture (half the channels of the key's model)
    code = main(["verify", "--model", released, "--key", key, "--reference", str(narrow / "released")])
    _one_line_error(capsys, code, "the reference must be the owner's release")
    # a suspect with fewer channels than the key, with and without a reference
    code = main(["verify", "--model", str(narrow / "released"), "--key", key])
    _one_line_error(capsys, code, "the key is for another architecture", "channels")
    code = main(["verify", "--model", str(narrow / "released"), "--key", key, "--reference", released])
    _one_line_error(capsys, code, "cannot align")


def test_a_certified_release_changed_by_one_weight_is_reported(run, tmp_path, capsys):
    model, meta = load_released(run / "released")
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1e-3
    save_released(model, tmp_path / "edited", meta["arch"], meta["model_config"], dataset=meta["dataset"])
    main(["verify", "--model", str(tmp_path / "edited"), "--key", str(run / "owner-key"), "--certificate",
          str(run / "certificate.json"), "--json"])
    certificate = json.loads(capsys.readouterr().out)["certificate"]
    assert certificate["suspect is the certified release, bit for bit"] is False
