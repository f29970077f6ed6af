"""``passportnorm attack``: every attack end to end on a tiny budget, its outputs, and bad options."""

import json
import shutil

import pytest

from html_pages import assert_self_contained
from passportnorm.cli import main

TINY = ["--dataset", "digits", "--arch", "small_cnn", "--width", "1.0", "--epochs", "3", "--batch-size", "32", "--secret-seed", "0",
        "--trigger-count", "20", "--signature", "(c) Z"]


@pytest.fixture(scope="module")
def owner(tmp_path_factory):
    out = tmp_path_factory.mktemp("owner")
    assert main(["protect", *TINY, "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize(
    "name,extra,produces",
    [
        ("finetune", ["--mode", "rtal"], "model"),
        ("refit", ["--lrs", "0.3,0.01"], "model"),
        ("transfer", ["--target-classes", "5,6,7,8,9"], "model"),
        ("prune", ["--rates", "0,0.5"], "model"),
        ("obfuscate", [], "model"),
        ("ambiguity1", [], "forged-key"),
        ("ambiguity2", ["--flips", "0,0.5"], "forged-key"),
        ("erb", ["--erb-mode", "ierb"], None),
        ("forge", [], "forged-key"),
        ("reprotect", ["--passports", "shuffle"], "model"),
        ("quantize", ["--quantize", "fp16,int8-static"], "model"),
        ("distill", [], "model"),
        ("merge", ["--alphas", "0.5", "--optimizer", "adam", "--lr", "0.002"], "model"),
        ("fine-prune", ["--rates", "0.3,0.9"], "model"),
        ("dummy-neurons", ["--rates", "0.5"], "model"),
        ("eclipse", ["--rates", "0.5", "--cancel", "0"], "model"),
        ("combined", ["--steps", "fine-prune,quantize,dummy-neurons,obfuscate", "--rates", "0.2"], "model"),
    ],
)
def test_each_attack_writes_its_evidence(owner, tmp_path, capsys, name, extra, produces):
    out = tmp_path / name
    assert main(["attack", name, "--model", str(owner / "released"), "--key", str(owner / "owner-key"),
                 "--out", str(out), "--epochs", "1", *extra]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["threat_model"] and result["rows"]
    _assert_cost_and_removal_rule(name, result)
    assert (out / "result.md").read_text().startswith("# Attack:")
    assert "Attacker's cost:" in (out / "result.md").read_text()
    for plot in result["plots"]:
        assert (out / plot).stat().st_size > 1000
    if produces == "model":
        verify = ["verify", "--model", str(out / "model"), "--key", str(owner / "owner-key"), "--no-data"]
        assert main([*verify, "--reference", str(owner / "released")]) in (0, 1)
    elif produces == "forged-key":
        assert main(["verify", "--model", str(owner / "released"), "--key", str(out / "forged-key")]) in (0, 1)
    else:
        assert not (out / "model").exists() and not (out / "forged-key").exists()


def test_refit_and_merge_train_with_the_optimizer_asked_for_and_refuse_an_unknown_one(owner, tmp_path, capsys):
    base = ["--model", str(owner / "released"), "--key", str(owner / "owner-key"), "--epochs", "1"]
    assert main(["attack", "refit", *base, "--out", str(tmp_path / "adam"), "--lrs", "0.001", "--optimizer", "adam"]) == 0
    result = json.loads((tmp_path / "adam" / "result.json").read_text())
    assert "(Adam)" in result["threat_model"] and result["options"]["optimizer"] == "adam"
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:  # argparse's choices: one line, exit 2
        main(["attack", "merge", *base, "--out", str(tmp_path / "bad"), "--optimizer", "rmsprop"])
    assert refused.value.code == 2
    error = capsys.readouterr().err
    assert "--optimizer" in error and "rmsprop" in error and len(error.strip().splitlines()) == 1


# the distinct training samples each attack reads: all of the attacker's share, none, or part of it
READS = {"finetune": "share", "refit": "share", "transfer": "task", "prune": 0, "obfuscate": 0, "ambiguity1": "share",
         "ambiguity2": "share", "erb": "share", "forge": 0, "reprotect": "share", "quantize": 256, "distill": "share", "merge": "share",
         "fine-prune": "share", "dummy-neurons": 0, "eclipse": 0, "combined": "share"}
FORGERIES = ("ambiguity1", "ambiguity2", "erb", "forge")


def _assert_cost_and_removal_rule(name, result):
    """The runner's measured cost (cost.py) and the field's removal rule on every row (removal.py)."""
    from passportnorm.attacks.runner import attacker_split
    from passportnorm.data import load_dataset

    cost, train = result["cost"], load_dataset("digits").train
    share = len(attacker_split(train, 0.1 if name in ("ambiguity1", "ambiguity2", "erb") else 0.5, 0))
    expected = {"share": share, "task": len(train) // 2}.get(READS[name], READS[name])
    assert cost["attacker_samples"] == expected or (READS[name] == "task" and cost["attacker_samples"] > 0), cost
    assert cost["attacker_seconds"] > 0 and cost["evaluation_seconds"] > 0
    if name == "transfer":  # another task: no accuracy to compare with the original's
        assert "original_accuracy" not in result and all(r["removed"] is None for r in result["rows"] if "removed" in r)
        return
    assert 0.5 < result["original_accuracy"] <= 1.0
    removed = [row["removed"] for row in result["rows"]]
    assert all(r is None for r in removed) if name in FORGERIES else all(r in (True, False) for r in removed)
    for row in result["rows"]:
        if row["removed"]:  # the rule: proof gone, accuracy kept within 5 points
            assert result["original_accuracy"] - row["attacker_accuracy"] <= 0.05


def test_reprotection_claim_loses_the_dispute_in_folders_with_apostrophes_and_spaces(owner, tmp_path, capsys):
    """The thief's claim as `attack reprotect` writes it, disputed from the CLI with awkward folder names."""
    alice = tmp_path / "Alice's run"
    shutil.copytree(owner, alice)
    bob = tmp_path / "Bob 's copy"
    assert main(["attack", "reprotect", "--model", str(alice / "released"), "--key", str(alice / "owner-key"),
                 "--out", str(bob), "--epochs", "2"]) == 0
    assert {"thief-key", "certificate.json", "model"} <= {p.name for p in bob.iterdir()}
    capsys.readouterr()
    claims = ["--claim", str(alice / "owner-key"), str(alice / "certificate.json"), str(alice / "released"),
              "--claim", str(bob / "thief-key"), str(bob / "certificate.json"), str(bob / "model")]
    assert main(["dispute", "--suspect", str(bob / "model"), *claims, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["winner"] == "Alice's run", result["decided_by"]
    page = tmp_path / "dispute.html"
    assert main(["dispute", "--suspect", str(bob / "model"), *reversed_claims(claims), "--no-data",
                 "--html", str(page)]) == 0
    assert "**Decision: Alice's run**" in capsys.readouterr().out
    assert_self_contained(page.read_text(), "Decision: Alice's run", plots=1)


def test_widened_suspect_needs_the_reference_and_verifies_with_it(owner, tmp_path, capsys):
    out = tmp_path / "wide"
    assert main(["attack", "dummy-neurons", "--model", str(owner / "released"),
                 "--key", str(owner / "owner-key"),
                 "--out", str(out), "--rates", "0.5"]) == 0
    capsys.readouterr()
    verify = ["verify", "--model", str(out / "model"), "--key", str(owner / "owner-key")]
    assert main(verify) == 2
    err = capsys.readouterr().err
    assert "channels, the key expects" in err and "--reference" in err and err.count("\n") == 1
    # narrowed and aligned it is read again, but this chain's permuted layers count no bits (attack spell)
    assert main([*verify, "--reference", str(owner / "released"), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["alignment"]["used"] and report["alignment"]["narrowed"] and report["signature_bits"] == 0


def exit_code(argv: list[str]) -> int:
    """main's exit code, also where argparse refuses the arguments (it exits)."""
    try:
        return main(argv)
    except SystemExit as stop:
        return int(stop.code)


def reversed_claims(claims: list[str]) -> list[str]:
    return claims[4:] + claims[:4]


@pytest.mark.parametrize(
    "args,message",
    [
        (["prune", "--rates", "0,1.5"], "pruning rate 1.5 must be in [0, 1)"),
        (["finetune", "--share", "0"], "attacker data share 0.0 must be in (0, 1]"),
        (["sneeze"], "invalid choice: 'sneeze'"),
        (["combined", "--steps", "prune,sneeze"], "unknown combined step 'sneeze'"),
        (["fine-prune", "--rates", "0.2,half"], "--rates '0.2,half' must be comma-separated float values"),
        (["prune", "--mode", "ftal"], "unrecognized arguments: --mode ftal"),
        (["finetune", "--mode", "ftxx"], "invalid choice: 'ftxx'"),
    ],
)
def test_bad_attack_options_are_one_line(owner, tmp_path, capsys, args, message):
    code = exit_code(["attack", args[0], "--model", str(owner / "released"), "--key", str(owner / "owner-key"),
                 "--out", str(tmp_path / "x"), *args[1:]])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1


def test_key_for_another_model_is_one_line(owner, tmp_path, capsys):
    other = tmp_path / "other"
    assert main(["protect", *TINY, "--width", "0.25", "--epochs", "1", "--signature", "o", "--out", str(other)]) == 1  # too few bits to verify: no certificate, but a release
    capsys.readouterr()
    code = main(["attack", "prune", "--model", str(other / "released"), "--key", str(owner / "owner-key"),
                 "--out", str(tmp_path / "x"), "--rates", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "the key is for another architecture" in err and err.count("\n") == 1


def test_training_attacks_show_one_line_per_epoch_without_a_terminal(owner, tmp_path, capsys):
    """Output captured (not a terminal, so no progress bar): each finished epoch is still one line."""
    assert main(["attack", "finetune", "--model", str(owner / "released"), "--key", str(owner / "owner-key"),
                 "--out", str(tmp_path / "ft"), "--epochs", "2", "--mode", "ftal"]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip().startswith("epoch")]
    assert [line.split(",")[0].split()[-1] for line in lines] == ["1", "2"], lines


def test_the_library_refuses_what_the_attack_does_not_take_before_loading_anything(tmp_path):
    from passportnorm.attacks.runner import run_attack
    from passportnorm.errors import ConfigError

    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError, match="unknown attack 'sneeze'; choose one of .*finetune"):
        run_attack("sneeze", missing, missing, tmp_path / "x")
    with pytest.raises(ConfigError, match="attack 'prune' takes no --mode; its options: --rates"):
        run_attack("prune", missing, missing, tmp_path / "x", mode="ftal")
    with pytest.raises(ConfigError, match="--flips 'half' must be comma-separated float values"):
        run_attack("ambiguity2", missing, missing, tmp_path / "x", flips="half")
    assert not (tmp_path / "x").exists()


def test_each_attack_declares_its_options_once_and_the_cli_offers_exactly_those(capsys):
    from passportnorm.attacks.registry import ATTACKS, COMMON_OPTIONS

    assert len(ATTACKS.names()) == 18
    for name in ATTACKS.names():
        with pytest.raises(SystemExit):
            main(["attack", name, "--help"])
        flags = {word.rstrip(",") for word in capsys.readouterr().out.split() if word.startswith("--")}
        declared = {option.flag for option in ATTACKS[name].all_options()}
        assert declared | {"--model", "--key", "--out", "--html", "--help"} == flags, name
        assert {option.flag for option in COMMON_OPTIONS} <= declared


def test_an_attack_resumes_only_its_own_checkpoint(owner, tmp_path, capsys):
    """A rerun into the same folder continues (more epochs); one with other settings is refused, not mixed."""
    base = ["attack", "finetune", "--model", str(owner / "released"), "--key", str(owner / "owner-key"),
            "--out", str(tmp_path / "ft")]
    assert main([*base, "--epochs", "1", "--mode", "ftal"]) == 0
    assert main([*base, "--epochs", "2", "--mode", "ftal"]) == 0
    rows = json.loads((tmp_path / "ft" / "result.json").read_text())["rows"]
    assert [row["epoch"] for row in rows] == [0, 1, 2]
    capsys.readouterr()
    assert main([*base, "--epochs", "2", "--mode", "rtal"]) == 2
    err = capsys.readouterr().err
    assert "was written with other settings (mode)" in err and err.count("\n") == 1


def test_distillation_is_repeatable_its_student_starts_from_the_attack_seed(owner, tmp_path, capsys):
    """The fresh student was initialised from whatever the global RNG held, so two runs differed."""
    rows = []
    for run in ("a", "b"):
        assert main(["attack", "distill", "--model", str(owner / "released"), "--key", str(owner / "owner-key"),
                     "--out", str(tmp_path / run), "--epochs", "1"]) == 0
        rows.append(json.loads((tmp_path / run / "result.json").read_text())["rows"])
    assert rows[0] == rows[1]


def test_the_table_may_leave_columns_out_but_result_json_keeps_every_number(owner, tmp_path, capsys):
    out = tmp_path / "obf"
    assert main(["attack", "obfuscate", "--model", str(owner / "released"), "--key", str(owner / "owner-key"),
                 "--out", str(out)]) == 0
    assert all("layers_skipped" in row for row in json.loads((out / "result.json").read_text())["rows"])
    assert "layers_skipped" not in (out / "result.md").read_text()
