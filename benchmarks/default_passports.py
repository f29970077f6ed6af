"""Which passport kind the CLI should default to: each kind as the owner's, against re-protection.

    python benchmarks/default_passports.py [--kinds random shuffle] [--epochs 8] [--docs]

For each owner kind, the default ``passportnorm protect`` (ResNet18 x0.25 on mnist5k, hash-bound
signature, seed 0) is trained with that kind; then a thief re-protects the release with each
kind of his own (2 epochs, lr 0.01, half the training data: docs/SECURITY.md's attack) and both
claims meet in a dispute. Recorded: the owner's released and passport-aware accuracy, detection,
the owner's verification of the thief's model (aligned to the owner's release) and the dispute.
Writes runs/bench/default-passports/results.json and, with --docs, a section of docs/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from pathlib import Path

from _docs import update_section
from security import _reprotect, _verdict

from passportnorm.certificate import Certificate
from passportnorm.data import load_dataset
from passportnorm.dispute import Claim, dispute
from passportnorm.key import OwnerKey
from passportnorm.pipeline import RunOptions, run_protect
from passportnorm.release import load_released
from passportnorm.verify import verify


def _owner(out: Path, kind: str, epochs: int) -> tuple:
    folder = out / f"owner-{kind}"
    if not (folder / "owner-key" / "key.json").is_file():
        print(f"training the owner with {kind} passports ...", flush=True)
        with contextlib.redirect_stdout(io.StringIO()):
            run_protect(
                RunOptions(out=str(folder), epochs=epochs, passports=kind, secret_seed=0, overwrite=True)
            )
    metrics = json.loads((folder / "metrics.json").read_text())
    return load_released(folder / "released")[0], OwnerKey.load(folder / "owner-key"), metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", nargs="+", default=["random", "shuffle"])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--out", default="runs/bench/default-passports")
    parser.add_argument("--docs", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    data = load_dataset("mnist5k", seed=0)
    rows, record = [], {}
    for owner_kind in args.kinds:
        model, key, metrics = _owner(out, owner_kind, args.epochs)
        last = metrics["history"][-1]
        owner = metrics["verification"]
        for thief_kind in args.kinds:
            print(f"owner {owner_kind}, thief {thief_kind} ...", flush=True)
            thief_model, thief_key = _reprotect(model, data, thief_kind, mode=key.signature_mode)
            report = verify(thief_model, key, data=data.test, reference=model).to_dict()
            decision = dispute(
                thief_model,
                Claim("thief", thief_key, Certificate.issue(thief_key, thief_model), thief_model),
                Claim("owner", key, Certificate.issue(key, model), model),
                data=data.test,
            ).to_dict()
            record[f"{owner_kind}/{thief_kind}"] = {
                "owner": owner,
                "after_attack": report,
                "dispute": decision,
            }
            free, aware = last["passport_free_accuracy"], last["passport_aware_accuracy"]
            rows.append(
                f"| {owner_kind} | {free:.2%} | {aware:.2%} | "
                f"{owner['signature_detection']:.1%} | {thief_kind} | {_verdict(report)} | "
                f"**{decision['winner'] or 'nobody'}** ({decision['decided_by']}) |"
            )
            print(rows[-1], flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
    table = "\n".join(
        [
            "| owner's passports | released acc | passport-aware acc | detection | thief's passports "
            "| owner's verify of the thief's model (aligned) | dispute |",
            "|---|---:|---:|---:|---|---|---|",
            *rows,
        ]
    )
    print(table)
    if args.docs:
        update_section(
            "RESULTS.md",
            "default-passports",
            "### Which passports by default: embedding and re-protection\n\n"
            f"Command: `python benchmarks/default_passports.py --docs` (owners: the default `passportnorm "
            f"protect` with `--passports KIND`, {args.epochs} epochs, seed 0; thief: docs/SECURITY.md's "
            "re-protection, 2 epochs at lr 0.01 on half the training data).\n\n" + table,
        )


if __name__ == "__main__":
    main()
