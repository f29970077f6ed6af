"""How much data and time a distiller needs before the ownership proof is gone and its copy is good
enough to serve (the field's removal rule), against training the model from scratch.

    python benchmarks/distillation_curve.py [--shares 0.1 0.25 0.5 1.0] [--epochs 5 20] [--docs]

The owner and the from-scratch run are benchmarks/robustness.py's (runs/bench/robustness; trained
here unless they are there). Each cell is `passportnorm attack distill` (a fresh student of the
owner's architecture trained on the release's soft labels, temperature 4, SGD lr 0.05) with the
attacker's share of the training split and number of epochs; its row gives the student's accuracy,
both proofs (white-box bits through the release, black-box triggers), the removal rule's answer,
and the attacker's measured time and data as ratios to training from scratch.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shlex
import shutil
import sys
from pathlib import Path

from _docs import machine, update_section
from robustness import scratch_cost

from passportnorm.attacks.runner import record, run_attack
from passportnorm.pipeline import RunOptions, run_protect


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shares", type=float, nargs="+", default=[0.1, 0.25, 0.5, 1.0])
    parser.add_argument("--epochs", type=int, nargs="+", default=[5, 20])
    parser.add_argument("--owner-epochs", type=int, default=8)
    parser.add_argument("--out", default="runs/bench/robustness")
    parser.add_argument("--docs", action="store_true")
    args = parser.parse_args()
    command = shlex.join(["python", "benchmarks/distillation_curve.py", *sys.argv[1:]])
    out = Path(args.out)
    owner = out / "owner"
    if not (owner / "owner-key" / "key.json").is_file():
        print("training the owner's protected model (defaults) ...", flush=True)
        with contextlib.redirect_stdout(io.StringIO()):
            run_protect(RunOptions(epochs=args.owner_epochs, out=str(owner), secret_seed=0, overwrite=True))
    scratch = scratch_cost("resnet18", "mnist5k", args.owner_epochs, out / "scratch")
    lines = [
        "| attacker's data (share of the training split) | epochs | student's accuracy | white-box bits "
        "| triggers answered | owner's verdict | removed (field's rule) | attacker's time (vs from scratch) |",
        "|---:|---:|---:|---|---|---|---|---:|",
    ]
    for share in args.shares:
        for epochs in args.epochs:
            print(f"distill, share {share:g}, {epochs} epochs ...", flush=True)
            target = out / f"distill-{share:g}-{epochs}"
            shutil.rmtree(target, ignore_errors=True)
            settings = {"share": share, "epochs": epochs}
            with contextlib.redirect_stdout(io.StringIO()):
                result = record(
                    run_attack("distill", owner / "released", owner / "owner-key", target, **settings),
                    settings,
                )
            row, cost = result["rows"][0], result["cost"]
            verified = row["white_box_verified"] or row.get("black_box_verified")
            seconds = cost["attacker_seconds"]
            lines.append(
                f"| {cost['attacker_samples']} ({cost['attacker_samples'] / scratch['samples']:.0%}) | {epochs} | "
                f"{100 * row['attacker_accuracy']:.1f}% (release {100 * result['original_accuracy']:.1f}%) | "
                f"detection {100 * row['signature_detection']:.1f}% (p = {row['signature_p_value']}) | "
                f"{row.get('trigger_matches', '-')} (p = {row.get('trigger_p_value', '-')}) | "
                f"{'verified' if verified else '**not verified**'} | "
                f"{'**removed**' if row['removed'] else 'no'} | {seconds:.0f} s ({seconds / scratch['seconds']:.2f}x) |"
            )
    table = "\n".join(lines) + (
        f"\n\nFrom scratch (plain `passportnorm train`, {args.owner_epochs} epochs on all {scratch['samples']} "
        f"training samples): {scratch['seconds']:.0f} s."
    )
    print(table)
    if args.docs:
        header = f"Command: `{command}` ({machine()}; the set-up is the benchmark's docstring).\n\n"
        update_section("ROBUSTNESS.md", "distillation-curve", header + table)


if __name__ == "__main__":
    main()
