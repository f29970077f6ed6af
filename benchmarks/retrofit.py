"""Retrofit: protecting an already trained model, against protecting from scratch.

    python benchmarks/retrofit.py [--docs]

Trains ResNet18 x0.25 plain on mnist5k for 8 epochs (``passportnorm train``), then protects the
trained weights with ``passportnorm protect --weights ... --epochs 2`` (the retrofit recipe:
wrong signs flipped with their channels, short responses moved, branches started as the trained
norms, interleaved schedule at a fifth of the learning rate), the same for 1 epoch and at ratio
0.25, and, for comparison, every wrong bit moved instead of flipped (what GroupNorm/LayerNorm
layers get), no preparation at all (cold branches), the from-scratch recipe on the trained weights, and the
default from-scratch owner (8 epochs). Times are each run's training seconds (evaluation after
each epoch and the retrofit preparation included), measured in this one process; run nothing
else meanwhile, since one disturbed epoch of the plain run moves every share. Then FTAL, RTAL
and pruning attack both retrofit owners and the from-scratch owner alike.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from _docs import machine, update_section

from passportnorm.attacks.runner import record, run_attack
from passportnorm.pipeline import RunOptions, run_protect, run_train

ATTACKS = [
    ("finetune", {"mode": "ftal"}, "FTAL"),
    ("finetune", {"mode": "rtal"}, "RTAL"),
    ("prune", {}, "prune"),
]


def _cold(model: Any, example: Any) -> dict[str, Any]:
    """No preparation: the branches as protect() builds them, the bits left to the fine-tune."""
    return {
        "flipped_layers": 0,
        "flipped_filters": 0,
        "moved_layers": 0,
        "largest_weight_change": 0.0,
        "output_change": 0.0,
        "largest_affine_gap": float("nan"),
    }


@contextlib.contextmanager
def _preparation(kind: str):
    """``retrofit`` as shipped, ``moved`` (no free flips: every bit moved, as in GroupNorm layers)
    or ``cold`` (no preparation at all)."""
    pipeline, module = sys.modules["passportnorm.pipeline"], sys.modules["passportnorm.retrofit"]
    shipped = pipeline.retrofit, module.flip_filters
    if kind == "cold":
        pipeline.retrofit = _cold
    if kind == "moved":
        module.flip_filters = lambda branch: None
    try:
        yield
    finally:
        pipeline.retrofit, module.flip_filters = shipped


def _run(
    out: Path, protected: bool, preparation: str = "retrofit", secret_seed: int = 0, **options: Any
) -> dict[str, Any]:
    """One CLI-equivalent run, quiet, with the retrofit preparation of that name."""
    with contextlib.redirect_stdout(io.StringIO()), _preparation(preparation):
        run = run_protect if protected else run_train
        run(
            RunOptions(
                seed=0,
                out=str(out),
                overwrite=True,
                **({"secret_seed": secret_seed} if protected else {}),
                **options,
            )
        )
    metrics = json.loads((out / "metrics.json").read_text())
    print(f"  {out.name}: {metrics['train_seconds']:.0f} s", flush=True)
    return metrics


def _row(label: str, metrics: dict[str, Any], plain: dict[str, Any]) -> dict[str, Any]:
    last, trained = metrics["history"][-1], plain["history"][-1]["passport_free_accuracy"]
    seconds = metrics["train_seconds"] + metrics.get("retrofit", {}).get("seconds", 0.0)
    return {
        "run": label,
        "epochs": len(metrics["history"]),
        "schedule": metrics["settings"].get("schedule", "-"),
        "lr": metrics["settings"]["lr"],
        "seconds": seconds,
        "share_of_plain_time": seconds / plain["train_seconds"],
        "released_accuracy": last["passport_free_accuracy"],
        "change_vs_trained": last["passport_free_accuracy"] - trained,
        "aware_accuracy": last.get("passport_aware_accuracy"),
        "detection": last.get("signature_detection"),
        "triggers": last.get("trigger_accuracy"),
        "verified": metrics.get("verified"),
    }


def _spread(root: Path, weights: str, plain: dict[str, Any], seeds: int) -> list[str]:
    """The retrofit's accuracy change over ``seeds`` secret seeds (other passports, signature bits
    and trigger sets on the same trained model): how much of one row's change is the draw."""
    trained = plain["history"][-1]["passport_free_accuracy"]
    lines = [
        "",
        f"The same retrofit over secret seeds 0-{seeds - 1} (other passports, bits and trigger sets; "
        "the change in released accuracy against the trained model, in points):",
        "",
        "| epochs | mean change | lowest, highest | mean share of plain time | verified |",
        "|---:|---:|---:|---:|---:|",
    ]
    for epochs in (2, 1):
        runs = [
            _run(root / f"seeds-{epochs}-{seed}", True, secret_seed=seed, epochs=epochs, weights=weights)
            for seed in range(seeds)
        ]
        changes = [100 * (m["history"][-1]["passport_free_accuracy"] - trained) for m in runs]
        share = (
            sum(m["train_seconds"] + m["retrofit"]["seconds"] for m in runs) / seeds / plain["train_seconds"]
        )
        verified = sum(bool(m.get("verified")) for m in runs)
        lines.append(
            f"| {epochs} | {sum(changes) / seeds:+.2f} | {min(changes):+.2f}, {max(changes):+.2f} | "
            f"{share:.0%} | {verified}/{seeds} |"
        )
    return lines


def _attacks(owner: Path, out: Path, epochs: int) -> dict[str, Any]:
    rows = {}
    for name, options, label in ATTACKS:
        shutil.rmtree(out / label, ignore_errors=True)
        with contextlib.redirect_stdout(io.StringIO()):
            settings = {"epochs": epochs, **options}
            result = record(run_attack(name, owner / "released", owner / "owner-key", out / label, **settings), settings)
        if name == "prune":
            rows[label] = {
                "highest_rate_still_verified": result["highest_rate_still_verified"],
                "detection_at_50": next(r["signature_detection"] for r in result["rows"] if r["rate"] == 0.5),
            }
        else:
            last = result["rows"][-1]
            rows[label] = {key: last[key] for key in ("attacker_accuracy", "signature_detection", "verified")}
    return rows


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _markdown(rows: list[dict[str, Any]], attacks: dict[str, dict], plain_seconds: float, epochs: int) -> str:
    lines = [
        f"Command: `python benchmarks/retrofit.py --docs` ({machine()}; ResNet18 x0.25 on mnist5k, seed 0; "
        f"the trained model: `passportnorm train --epochs 8`, {plain_seconds:.0f} s of training; every "
        "time below is a run's training seconds in the same process, the retrofit preparation included).",
        "",
        "| run | epochs | schedule, lr | time (share of the plain 8 epochs) | released accuracy "
        "(vs trained) | passport-aware | detection | trigger set | verified |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['run']} | {r['epochs']} | {r['schedule']}, {r['lr']:g} | {r['seconds']:.0f} s "
            f"({r['share_of_plain_time']:.0%}) | {_pct(r['released_accuracy'])} "
            f"({100 * r['change_vs_trained']:+.2f}) | "
            f"{_pct(r['aware_accuracy'])} | {_pct(r['detection'])} | {_pct(r['triggers'])} | "
            f"{'yes' if r['verified'] else '**no**'} |"
        )
    lines += [
        "",
        f"Attacks on the owners ({epochs} epochs each for FTAL and RTAL, 50% of the training split):",
        "",
        "| owner | FTAL: attacker's accuracy, detection, verdict | RTAL: the same | pruning: highest "
        "rate still verified (detection at 50%) |",
        "|---|---|---|---|",
    ]
    for owner, result in attacks.items():
        cells = [
            f"{_pct(a['attacker_accuracy'])}, {_pct(a['signature_detection'])}, "
            f"{'verified' if a['verified'] else '**not verified**'}"
            for a in (result["FTAL"], result["RTAL"])
        ]
        prune = result["prune"]
        lines.append(
            f"| {owner} | {cells[0]} | {cells[1]} | {prune['highest_rate_still_verified']} "
            f"({_pct(prune['detection_at_50'])}) |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--attack-epochs", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=5, help="secret seeds of the spread table")
    parser.add_argument("--out", default="runs/bench/retrofit")
    parser.add_argument("--docs", action="store_true", help="write the tables into docs/RESULTS.md")
    args = parser.parse_args()
    root = Path(args.out)
    plain = _run(root / "plain", False, epochs=8)
    weights = str(root / "plain" / "released" / "model.safetensors")
    runs = [
        ("retrofit (`--weights`, defaults)", _run(root / "retrofit", True, epochs=2, weights=weights)),
        ("retrofit, `--epochs 1`", _run(root / "retrofit-1", True, epochs=1, weights=weights)),
        ("retrofit, ratio 0.25", _run(root / "retrofit-0.25", True, epochs=2, weights=weights, ratio=0.25)),
        (
            "without the free flips: every wrong bit moved (what GroupNorm and LayerNorm layers get)",
            _run(root / "moved", True, "moved", epochs=2, weights=weights),
        ),
        (
            "the same without any preparation (cold branches)",
            _run(root / "cold", True, "cold", epochs=2, weights=weights),
        ),
        (
            "from-scratch recipe on the trained weights",
            _run(root / "scratch-recipe", True, epochs=2, weights=weights, schedule="alternate", lr=0.05),
        ),
        ("from scratch (the default owner)", _run(root / "scratch", True, epochs=8)),
    ]
    rows = [_row(label, metrics, plain) for label, metrics in runs]
    owners = (
        ("retrofit, 2 epochs", "retrofit"),
        ("retrofit, 1 epoch", "retrofit-1"),
        ("from scratch", "scratch"),
    )
    attacks = {
        label: _attacks(root / name, root / f"attacks-{name}", args.attack_epochs) for label, name in owners
    }
    (root / "summary.json").write_text(json.dumps({"rows": rows, "attacks": attacks}, indent=1))
    table = _markdown(rows, attacks, plain["train_seconds"], args.attack_epochs)
    table += "\n" + "\n".join(_spread(root, weights, plain, args.seeds))
    print(table)
    if args.docs:
        update_section("RESULTS.md", "retrofit", table)


if __name__ == "__main__":
    main()
