"""Plain training vs protected training (alternate 0.5 and joint) on mnist5k, same budget, 3 seeds.

    python benchmarks/pipeline_results.py [--seeds 0 1 2] [--epochs 8] [--docs]

Runs ``passportnorm train`` and ``passportnorm protect`` (both schedules) with the defaults
(ResNet18 at width 0.25 on mnist5k), then verifies every plain model with every owner key (an
independent model must never be verified), and measures time per epoch and peak memory of each
kind of training as ratios to plain training in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _docs import update_section  # noqa: E402

from passportnorm.pipeline import RunOptions, run_protect, run_train, run_verify  # noqa: E402

VARIANTS = {"plain": None, "alternate 0.5": ("alternate", 0.5), "joint": ("joint", 0.5)}

MEMORY_PROBE = r"""
import resource, sys, warnings, torch
warnings.simplefilter("ignore")
from passportnorm import zoo, protect
from passportnorm.train import Trainer, TrainConfig
torch.set_num_threads(2)
variant, steps = sys.argv[1], int(sys.argv[2])
# random tensors shaped like mnist5k: loading the real CSV has a larger transient peak than training
from torch.utils.data import TensorDataset
from passportnorm.data.registry import DatasetSplits
images, labels = torch.randn(4000, 1, 28, 28), torch.randint(0, 10, (4000,))
data = DatasetSplits("mnist5k-shaped", TensorDataset(images, labels), TensorDataset(images[:100], labels[:100]), 10, (1, 28, 28))
model = zoo.build("resnet18", in_channels=1, num_classes=10, width=0.25)
if variant != "plain":
    model = protect(model, data.train.tensors[0][:16], signature="mem", passports="shuffle", weak_layers="skip")
trainer = Trainer(model, data, TrainConfig(schedule="joint" if variant == "joint" else "alternate"))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
batches = trainer._batches(0)
for _ in range(steps):
    trainer.step(next(batches))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(after - before)
"""


def peak_training_memory_kib(variant: str, steps: int = 20) -> int:
    """Growth of the process's peak RSS over ``steps`` training steps, in a fresh process."""
    name = {"plain": "plain", "alternate 0.5": "alternate", "joint": "joint"}[variant]
    out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, name, str(steps)], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="runs/bench/pipeline")
    parser.add_argument("--docs", action="store_true")
    args = parser.parse_args()

    runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for seed in args.seeds:
        for name, schedule in VARIANTS.items():
            out = Path(args.out) / f"{name.split()[0]}-seed{seed}"
            opts = RunOptions(seed=seed, epochs=args.epochs, device=args.device, out=str(out))
            print(f"{name}, seed {seed} ...", flush=True)
            with contextlib.redirect_stdout(io.StringIO()):
                if schedule is None:
                    metrics = run_train(opts)
                else:
                    opts.schedule, opts.ratio = schedule
                    metrics = run_protect(opts)
            metrics["out"] = str(out)
            runs[name].append(metrics)

    # every plain (independent) model against every owner key: must never verify
    independent = []
    for plain in runs["plain"]:
        for name in ("alternate 0.5", "joint"):
            for owner in runs[name]:
                with contextlib.redirect_stdout(io.StringIO()):
                    report = run_verify(Path(plain["out"]) / "released", Path(owner["out"]) / "owner-key", device=args.device)
                independent.append(report)
    never = sum(not r.verified for r in independent)
    worst_p = min(r.signature_p_value for r in independent)
    max_detect = max(r.signature_detection for r in independent)

    memory = {name: peak_training_memory_kib(name) for name in VARIANTS}
    plain_epoch = statistics.mean(statistics.mean(row["seconds"] for row in m["history"]) for m in runs["plain"])
    lines = [
        "| training | released acc (mean +- sd) | passport-aware acc | signature detection | owner verified | s/epoch | time ratio | peak-memory ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    summary = {}
    for name, metrics_list in runs.items():
        released = [m["history"][-1]["passport_free_accuracy"] for m in metrics_list]
        epoch_s = statistics.mean(statistics.mean(row["seconds"] for row in m["history"]) for m in metrics_list)
        row = {
            "released_accuracy": released,
            "seconds_per_epoch": epoch_s,
            "time_ratio": epoch_s / plain_epoch,
            "memory_kib": memory[name],
            "memory_ratio": memory[name] / memory["plain"],
        }
        if name == "plain":
            aware = detect = verified = "-"
        else:
            aware_values = [m["history"][-1]["passport_aware_accuracy"] for m in metrics_list]
            detections = [m["verification"]["signature_detection"] for m in metrics_list]
            verified_count = sum(m["verification"]["verified"] for m in metrics_list)
            row.update(aware_accuracy=aware_values, detection=detections, verified=verified_count)
            aware = f"{100 * statistics.mean(aware_values):.2f}%"
            detect = f"{100 * statistics.mean(detections):.2f}% (min {100 * min(detections):.2f}%)"
            verified = f"{verified_count}/{len(metrics_list)}"
        summary[name] = row
        sd = statistics.stdev(released) if len(released) > 1 else 0.0
        lines.append(
            f"| {name} | {100 * statistics.mean(released):.2f}% +- {100 * sd:.2f} | {aware} | {detect} | {verified} | "
            f"{epoch_s:.1f} | {row['time_ratio']:.2f}x | {row['memory_ratio']:.2f}x |"
        )
    lines.append("")
    lines.append(
        f"Independent models (each plain model verified with each owner key, {len(independent)} pairs): "
        f"verified {len(independent) - never}/{len(independent)}; highest signature detection {100 * max_detect:.1f}%, "
        f"smallest signature p-value {worst_p:.3g}."
    )
    table = "\n".join(lines)
    print(table)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "summary.json").write_text(json.dumps({"runs": summary, "memory_kib": memory}, indent=2) + "\n")
    if args.docs:
        header = (
            f"### Plain vs protected training (resnet18 width 0.25, mnist5k, {args.epochs} epochs, seeds "
            f"{', '.join(map(str, args.seeds))}, same data order, optimiser and budget)\n\n"
            "Command: `python benchmarks/pipeline_results.py --docs`. Released accuracy is the stripped model's "
            "test accuracy (plain: the plain model's); detection and verdict come from `passportnorm verify` on the "
            "released model with its owner key and the test data. Time is training time per epoch (evaluation "
            "excluded); peak memory is the growth of the process's peak RSS over 20 training steps in a fresh process (inputs shaped like mnist5k).\n\n"
        )
        update_section("RESULTS.md", "pipeline", header + table)


if __name__ == "__main__":
    main()
