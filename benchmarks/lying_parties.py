"""Every lie of docs/SECURITY.md's threat model, scripted on the default model, with its verdict.

    python benchmarks/lying_parties.py [--docs]

The public model P is `passportnorm train` (ResNet18 x0.25 on mnist5k, 8 epochs); O is a
claimant's retrofit of it (`protect --weights P --epochs 2`), S a stranger's fine-tune of P
(`train --weights P --epochs 2 --lr 0.01 --seed 1`), A the default owner (`protect`, 8 epochs).
The runs of benchmarks/retrofit.py (runs/bench/retrofit) are reused when they were made with the
same settings. Each lie is told the way tests/test_lying_parties.py tells it; the time-stamp lies
(a self-made TSA, a lifted token) need the tests' local TSA and are shown there.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import warnings
from pathlib import Path
from typing import Any

import torch
from _docs import machine, update_section
from _runs import finished_run

import passportnorm as pn
from passportnorm.attacks.runner import run_attack
from passportnorm.certificate import Certificate
from passportnorm.attacks.spell import spell_by_rearranging
from passportnorm.data import load_dataset
from passportnorm.data.triggers import TriggerSet, generate_triggers
from passportnorm.dispute import Claim, dispute
from passportnorm.key import OwnerKey, extract_key
from passportnorm.pipeline import RunOptions, run_verify
from passportnorm.release import load_released
from passportnorm.verdict import binomial_p_value, format_p_value
from passportnorm.verify import verify, verify_blackbox



def _runs(root: Path) -> dict[str, Path]:
    plain = RunOptions(seed=0, out=str(root / "plain"), epochs=8)
    finished_run(plain, protected=False)
    weights = str(root / "plain" / "released" / "model.safetensors")
    finished_run(RunOptions(seed=0, out=str(root / "retrofit"), epochs=2, weights=weights, secret_seed=0), True)
    finished_run(RunOptions(seed=1, out=str(root / "stranger"), epochs=2, weights=weights, lr=0.01), False)
    finished_run(RunOptions(seed=0, out=str(root / "scratch"), epochs=8, secret_seed=0), True)
    return {name: root / name for name in ("plain", "retrofit", "stranger", "scratch")}


def _retrofit_rows(runs: dict[str, Path]) -> list[dict[str, Any]]:
    rows = []
    for suspect, lie in (
        ("plain", "claims the public model it retrofitted (O's key on P)"),
        ("stranger", "claims a stranger's fine-tune of that public model (O's key on S)"),
    ):
        reports = [
            run_verify(
                runs[suspect] / "released",
                runs["retrofit"] / "owner-key",
                use_data=data,
                reference_dir=runs["retrofit"] / "released" if reference else None,
                ancestor=runs["plain"] / "released" if ancestor else None,
            )
            for data in (True, False)
            for reference in (False, True)
            for ancestor in (False, True)
        ]
        rates = [r.signature_detection for r in reports]
        rows.append(
            {
                "party": "false claimant",
                "lie": lie,
                "measured": f"all 8 flag combinations: {min(rates):.1%}-{max(rates):.1%} of 1184 bits",
                "verdict": f"verified {sum(r.verified for r in reports)}/8",
            }
        )
    key = OwnerKey.load(runs["retrofit"] / "owner-key")
    hidden = OwnerKey(key.tensors, dataclasses.replace(key.manifest, ancestor=None))
    public, release = _released(runs["plain"]), _released(runs["retrofit"])
    report = verify(public, hidden, reference=release)
    rows.append(_row("false claimant", "the same, with the ancestor deleted from the key", report))
    hidden = run_attack("obfuscate", runs["retrofit"] / "released", runs["retrofit"] / "owner-key",
                        runs["retrofit"].parent / "hidden-retrofit", ancestor=str(runs["plain"] / "released"))
    assert hidden.model is not None
    report = verify(hidden.model, key.with_ancestor(public), reference=release)
    row = _row("thief", "obfuscates the retrofit owner's release (`attack obfuscate`); the owner verifies "
               "with `--reference` and `--ancestor`", report)
    row["measured"] += f"; {len(report.alignment['rearranged'])} permuted layers not counted"
    rows.append(row)
    return rows


def _released(run: Path) -> torch.nn.Module:
    return load_released(run / "released")[0].eval()


def _row(party: str, lie: str, report: Any) -> dict[str, Any]:
    return {
        "party": party,
        "lie": lie,
        "measured": f"{report.signature_matches}/{report.signature_bits} bits (a claim needs "
        f"{report.required_matches}), p = {format_p_value(report.signature_p_value, report.signature_log10_p_value)}",
        "verdict": "**verified**" if report.verified else "not verified",
    }


def _forgery_rows(runs: dict[str, Path], example: torch.Tensor) -> list[dict[str, Any]]:
    public = _released(runs["plain"])
    rows = []
    for mode in ("flip", "permute"):
        release, key = spell_by_rearranging(public, example, mode)
        report = verify(public, key, reference=release)
        lie = (
            f"{mode}s the public model's channels (free, function unchanged) to spell its bits, names no "
            "ancestor, and verifies P through its own release (`attack spell`)"
        )
        row = _row("false claimant", lie, report)
        permuted = [report.per_layer[p] for p in (report.alignment or {}).get("rearranged", []) if p in report.per_layer]
        if permuted:
            row["measured"] += f"; the {len(permuted)} layers permuted back, not counted, read {sum(permuted) / len(permuted):.1%}"
        rows.append(row)
    return rows


def _labelled_by(model: torch.nn.Module, triggers: TriggerSet) -> TriggerSet:
    with torch.no_grad():
        labels = model(triggers.inputs).argmax(1)
    return TriggerSet(triggers.inputs, labels, triggers.num_classes, "labelled by the stolen model")


def _thief_rows(runs: dict[str, Path], root: Path, example: torch.Tensor) -> list[dict[str, Any]]:
    owner_key = OwnerKey.load(runs["scratch"] / "owner-key")
    released = _released(runs["scratch"])
    owner = Claim("owner", owner_key, Certificate.load(runs["scratch"] / "certificate.json"), released)
    result = run_attack("reprotect", runs["scratch"] / "released", runs["scratch"] / "owner-key", root / "thief")
    thief_key, thief_certificate = result.thief_claim
    backdated = dataclasses.replace(thief_certificate, created_utc="2001-01-01T00:00:00+00:00")
    thief = Claim("thief", thief_key, backdated, result.model)
    rows = [_dispute_row("re-protects the stolen release and backdates its certificate to 2001", released,
                         result.model, owner, thief)]
    hidden = run_attack("obfuscate", runs["scratch"] / "released", runs["scratch"] / "owner-key", root / "hidden")
    assert hidden.model is not None
    report = verify(hidden.model, owner_key, data=load_dataset("mnist5k", seed=0).test, reference=released)
    row = _row("thief", "permutes, flips and rescales the owner's channels (`attack obfuscate`); the owner "
               "verifies with `--reference`", report)
    row["measured"] += f"; {len(report.alignment['rearranged'])} permuted layers not counted"
    rows.append(row)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        relabel = pn.protect(copy.deepcopy(released), example, signature="(c) Thief", seed=11, passports="random")
    labels = _labelled_by(released, generate_triggers(50, (1, 28, 28), 10, seed=5))
    copycat_key = extract_key(relabel, trigger=labels)
    copycat_cert = dataclasses.replace(Certificate.issue(copycat_key, released), created_utc="2001-01-01T00:00:00+00:00")
    copycat = Claim("thief", copycat_key, copycat_cert, copy.deepcopy(released))
    rows.append(_dispute_row("serves the stolen release as is, with a trigger set labelled by its own answers "
                             "and a certificate backdated to 2001", released, released, owner, copycat))
    return rows


def _dispute_row(lie: str, released: Any, suspect: Any, owner: Claim, thief: Claim) -> dict[str, Any]:
    winners = {dispute(suspect, *pair).winner for pair in ((owner, thief), (thief, owner))}
    decision = dispute(suspect, owner, thief)
    return {
        "party": "thief",
        "lie": lie,
        "measured": decision.decided_by,
        "verdict": f"dispute: **{' / '.join(sorted(w or 'nobody' for w in winners))}** (both claim orders)",
    }


def _verifier_and_label_rows(runs: dict[str, Path]) -> list[dict[str, Any]]:
    data = load_dataset("mnist5k", seed=0)
    key = OwnerKey.load(runs["scratch"] / "owner-key")
    answers = set()
    for mode in ("train", "eval"):
        for given in (None, data.test):
            suspect = _released(runs["scratch"]).train(mode == "train")
            answers.add(verify(suspect, key, data=given, trigger=key.trigger).trigger_matches)
    rows = [
        {
            "party": "verifier",
            "lie": "asks without data (`--no-data`), or hands over the model in training mode",
            "measured": f"trigger answers in the 4 ways: {sorted(answers)} of {len(key.trigger)}",
            "verdict": "the same evidence" if len(answers) == 1 else "**evidence depends on the flag**",
        }
    ]
    public = _released(runs["plain"])
    inputs, labels = data.test.tensors[0][:60], data.test.tensors[1][:60]
    order = torch.randperm(60, generator=torch.Generator().manual_seed(3))
    chosen = TriggerSet(inputs[order[30:]], labels[order[30:]], 10, "folder:natural", "chosen",
                        inputs[order[:30]], labels[order[:30]])
    report = verify_blackbox(public, chosen)
    old = binomial_p_value(report.trigger_matches, report.trigger_count, 0.1)
    rows.append(
        {
            "party": "false claimant",
            "lie": "labels natural test images with their true class as its 'trigger set' (black-box claim "
            "on the independent P)",
            "measured": f"{report.trigger_matches}/{report.trigger_count} answered; against 1/10: p = {old:.3g}; "
            f"against the measured null ({report.trigger_null}): p = {report.trigger_p_value:.3g}",
            "verdict": "**verified**" if report.verified else "not verified",
        }
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench/retrofit")
    parser.add_argument("--docs", action="store_true", help="write the table into docs/SECURITY.md")
    args = parser.parse_args()
    root = Path(args.out)
    runs = _runs(root)
    example = load_dataset("mnist5k", seed=0).train.tensors[0][:16]
    rows = _retrofit_rows(runs) + _forgery_rows(runs, example) + _thief_rows(runs, root, example)
    rows += _verifier_and_label_rows(runs)
    lines = [
        f"Command: `python benchmarks/lying_parties.py --docs` ({machine()}; P: `passportnorm train`, "
        "ResNet18 x0.25 on mnist5k, 8 epochs; O: its retrofit, `protect --weights P --epochs 2`; S: a "
        "stranger's fine-tune of P, 2 epochs at lr 0.01; the owner: the default `protect`, 8 epochs; the "
        "thief: `attack reprotect`).",
        "",
        "| party | the lie | what was measured | verdict |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['party']} | {r['lie']} | {r['measured']} | {r['verdict']} |" for r in rows]
    table = "\n".join(lines)
    print(table)
    if args.docs:
        update_section("SECURITY.md", "lying-parties", table)


if __name__ == "__main__":
    main()
