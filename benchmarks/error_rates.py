"""Error rates, not examples: true-positive rate at 1% and 0.1% false-positive rate over many null
models, for passports (white-box bits, black-box triggers, the verdict) and for IPGuard, a
fingerprinting peer, on the same suspects; ROC curves as a plot.

    python benchmarks/error_rates.py [--owners 10] [--nulls 100] [--epochs 10] [--docs]

On sklearn's digits with the zoo's small_cnn (x1.0; every run takes seconds on a CPU):
``--owners`` models protected with `passportnorm protect` (seeds 0.., secret seeds 0..), each also
fingerprinted by IPGuard (baselines/ipguard.py, 100 boundary points grown from test inputs the owner's seed draws).
Positives, per owner: its release, FTAL and RTAL fine-tunes (5 epochs, lr 0.01, on 50% of the
training split), 50% global magnitude pruning, and a distilled student (a fresh small_cnn trained
10 epochs on the release's soft labels). Nulls, for every owner's key and fingerprint: ``--nulls``
independently trained plain models (`passportnorm train`, seeds 1000..), every other owner's
release, FTAL fine-tunes of 10 of the plain models, and 10 plain models of another architecture
(small_cnn x0.5, on which no key fits). A score is higher for "more like a copy": -log10 of the
signature p-value, -log10 of the trigger p-value, IPGuard's matching rate. The TPR at FPR f is
the share of positives above the lowest threshold that keeps at most a share f of null pairs above it.
Runs are kept in runs/bench/error-rates and reused.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import torch
from _docs import DOCS, machine, update_section
from _runs import finished_run
from torch import nn

from passportnorm import zoo
from passportnorm.attacks.distill import distill
from passportnorm.attacks.finetune import finetune
from passportnorm.attacks.prune import prune_model
from passportnorm.attacks.runner import attacker_split
from passportnorm.baselines.ipguard import Fingerprint, boundary_points, matching_rate
from passportnorm.data import load_dataset
from passportnorm.errors import PassportNormError
from passportnorm.key import OwnerKey
from passportnorm.pipeline import RunOptions
from passportnorm.release import load_released
from passportnorm.roc import roc_points, tpr_at_fpr
from passportnorm.verify import verify

ARCH, DATASET, WIDTH = "small_cnn", "digits", 1.0
METHODS = {
    "passports: signature bits (white-box)": "signature",
    "passports: trigger set (black-box)": "trigger",
    "IPGuard: matching rate (black-box)": "ipguard",
}
POSITIVE_KINDS = ("release", "FTAL", "RTAL", "prune 50%", "distilled")


def run(out: Path, seed: int, epochs: int, protected: bool, width: float = WIDTH) -> nn.Module:
    """A finished run's released model (trained now unless one with these settings is there)."""
    options = RunOptions(
        arch=ARCH,
        dataset=DATASET,
        width=width,
        epochs=epochs,
        seed=seed,
        secret_seed=seed,
        signature=f"(c) owner {seed}",
        out=str(out),
    )
    with contextlib.redirect_stdout(io.StringIO()):
        finished_run(options, protected)
    return load_released(out / "released")[0].eval()


def positives(release: nn.Module, data: Any, seed: int) -> dict[str, nn.Module]:
    """The owner's release and what a thief makes of it."""
    share = attacker_split(data.train, 0.5, seed)
    torch.manual_seed(seed)
    student = zoo.build(ARCH, in_channels=data.input_shape[0], num_classes=data.num_classes, width=WIDTH)
    with contextlib.redirect_stdout(io.StringIO()):
        tuned = {
            mode: finetune(release, None, share, data.test, mode=mode, epochs=5, seed=seed)["model"]
            for mode in ("ftal", "rtal")
        }
    return {
        "release": release,
        "FTAL": tuned["ftal"],
        "RTAL": tuned["rtal"],
        "prune 50%": prune_model(release, 0.5),
        "distilled": distill(release, student, share, epochs=10, seed=seed).eval(),
    }


def scores(
    model: nn.Module, key: OwnerKey, fingerprint: Fingerprint, data: Any, judged: bool
) -> dict[str, Any]:
    """Every method's score of ``model`` as a copy of the key's and the fingerprint's owner; the
    verdict with the test data where ``judged`` (positives), else without (nulls: the accuracy
    conditions then cannot fail, so a null verdict is only ever more lenient)."""
    try:
        report = verify(model, key, data=data.test if judged else None, trigger=key.trigger)
        signature, trigger, verified = (
            report.signature_log10_p_value,
            report.trigger_log10_p_value,
            report.verified,
        )
    except PassportNormError:  # the key does not fit this model (another architecture): no evidence at all
        signature = trigger = 0.0
        verified = False
    return {
        "signature": -(signature or 0.0),
        "trigger": -(trigger or 0.0),
        "ipguard": matching_rate(model, fingerprint),
        "verified": bool(verified),
    }


def roc_plot(pairs: dict[str, tuple[list[float], list[float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4.5))
    for name, (positive, null) in pairs.items():
        fpr, tpr = roc_points(positive, null)
        axis.step([1e-4] + fpr, [0.0] + tpr, where="post", label=name)
    axis.set_xscale("log")
    axis.set_xlim(1e-4, 1.0)
    axis.axvline(0.01, color="grey", linestyle=":")
    axis.axvline(0.001, color="grey", linestyle=":")
    axis.set_xlabel("false-positive rate (null pairs)")
    axis.set_ylabel("true-positive rate")
    axis.set_title("Ownership evidence on digits / small_cnn")
    axis.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--owners", type=int, default=10)
    parser.add_argument("--nulls", type=int, default=100, help="independent plain models")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--points", type=int, default=100, help="IPGuard fingerprint points")
    parser.add_argument("--out", default="runs/bench/error-rates")
    parser.add_argument("--docs", action="store_true")
    args = parser.parse_args()
    command = shlex.join(["python", "benchmarks/error_rates.py", *sys.argv[1:]])
    out, data = Path(args.out), load_dataset(DATASET)

    print(f"{args.owners} owners, their suspects and fingerprints ...", flush=True)
    owners = []
    for seed in range(args.owners):
        release = run(out / f"owner-{seed}", seed, args.epochs, protected=True)
        key = OwnerKey.load(out / f"owner-{seed}" / "owner-key")
        chosen = torch.randperm(len(data.test), generator=torch.Generator().manual_seed(seed))[: args.points]
        starts = data.test.tensors[0][chosen]
        fingerprint = boundary_points(release, starts, seed=seed)
        owners.append((key, fingerprint, release, positives(release, data, seed)))
    print(f"{args.nulls} independent models and the other nulls ...", flush=True)
    plain = [
        run(out / f"plain-{1000 + s}", 1000 + s, args.epochs, protected=False) for s in range(args.nulls)
    ]
    narrow = [run(out / f"narrow-{2000 + s}", 2000 + s, args.epochs, False, width=0.5) for s in range(10)]
    share = attacker_split(data.train, 0.5, 1)
    with contextlib.redirect_stdout(io.StringIO()):
        relatives = [
            finetune(m, None, share, data.test, mode="ftal", epochs=5, seed=1)["model"] for m in plain[:10]
        ]

    pos: dict[str, list[dict]] = {kind: [] for kind in POSITIVE_KINDS}
    null: dict[str, list[dict]] = {
        "independent seeds": [],
        "other owners' releases": [],
        "fine-tuned independents": [],
        "another architecture": [],
    }
    for number, (key, fingerprint, _, suspects) in enumerate(owners):
        print(f"scoring owner {number} ...", flush=True)
        for kind, model in suspects.items():
            pos[kind].append(scores(model, key, fingerprint, data, judged=True))
        others = [o[2] for i, o in enumerate(owners) if i != number]
        for family, models in (
            ("independent seeds", plain),
            ("other owners' releases", others),
            ("fine-tuned independents", relatives),
            ("another architecture", narrow),
        ):
            null[family] += [scores(m, key, fingerprint, data, judged=False) for m in models]

    all_pos = [s for rows in pos.values() for s in rows]
    all_null = [s for rows in null.values() for s in rows]
    lines = [
        f"| method | TPR at 1% FPR | TPR at 0.1% FPR | {' | '.join(f'1%: {k}' for k in POSITIVE_KINDS)} |",
        "|---|---:|---:|" + "---:|" * len(POSITIVE_KINDS),
    ]
    summary: dict[str, Any] = {}
    curves = {}
    for name, field in METHODS.items():
        null_scores, pos_scores = [s[field] for s in all_null], [s[field] for s in all_pos]
        curves[name] = (pos_scores, null_scores)
        per_kind = [tpr_at_fpr([s[field] for s in pos[k]], null_scores, 0.01) for k in POSITIVE_KINDS]
        at1, at01 = tpr_at_fpr(pos_scores, null_scores, 0.01), tpr_at_fpr(pos_scores, null_scores, 0.001)
        summary[name] = {
            "tpr_at_1pct": at1,
            "tpr_at_0.1pct": at01,
            "per_kind_at_1pct": dict(zip(POSITIVE_KINDS, per_kind)),
        }
        lines.append(f"| {name} | {at1:.0%} | {at01:.0%} | {' | '.join(f'{v:.0%}' for v in per_kind)} |")
    verified_pos = [sum(s["verified"] for s in pos[k]) / len(pos[k]) for k in POSITIVE_KINDS]
    fpr_verdict = sum(s["verified"] for s in all_null) / len(all_null)
    tpr_verdict = sum(s["verified"] for s in all_pos) / len(all_pos)
    lines.append(
        f"| passports: the verdict (default rule, fixed threshold; its FPR {fpr_verdict:.2%}, nulls judged "
        f"without data) | "
        f"{tpr_verdict:.0%} (overall) | - | {' | '.join(f'{v:.0%}' for v in verified_pos)} |"
    )
    models = args.nulls + 10 + 10 + args.owners - 1
    lines += [
        "",
        f"Null pairs: {len(all_null)} ({', '.join(f'{k} {len(v)}' for k, v in null.items())}) from "
        f"{models} models that are not the owner's, for each of {args.owners} owners; positives: "
        f"{len(all_pos)} ({len(POSITIVE_KINDS)} suspects per owner). Highest null scores: "
        + "; ".join(
            f"{name.split(':')[0]} {name.split(': ')[1].split(' (')[0]} {max(c[1]):.3g}"
            for name, c in curves.items()
        )
        + ".",
    ]
    table = "\n".join(lines)
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(
        json.dumps({"summary": summary, "positives": pos, "nulls": null}, indent=2) + "\n"
    )
    if args.docs:
        (DOCS / "robustness").mkdir(parents=True, exist_ok=True)
        roc_plot(curves, DOCS / "robustness" / "roc.png")
        header = (
            f"Command: `{command}` ({machine()}; {ARCH} x{WIDTH} on {DATASET}, {args.epochs} epochs; the "
            "set-up is the benchmark's docstring).\n\n"
        )
        update_section(
            "ROBUSTNESS.md", "error-rates", header + table + "\n\n![ROC curves](robustness/roc.png)"
        )


if __name__ == "__main__":
    main()
