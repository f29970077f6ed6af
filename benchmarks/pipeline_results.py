"""Plain training vs protected training (alternate 0.5 and joint) on mnist5k, same budget, 3 seeds.

    python benchmarks/pipeline_results.py [--arch resnet18] [--dataset mnist5k] [--variants plain "alternate 0.5" joint]
                                          [--seeds 0 1 2] [--epochs 8] [--docs]

Runs ``passportnorm train`` and ``passportnorm protect`` (each schedule) with the defaults
(ResNet18 at width 0.25 on mnist5k, or ``--arch``), then verifies every plain model with every
owner key (an independent model must never be verified), and measures time per epoch and peak
memory of each kind of training as ratios to plain training in the same run. ``--arch vit``
writes its own section (``pipeline-vit``); ``--arch gpt --dataset pydocs`` adds the released
perplexity and its change against plain (section ``pipeline-gpt-pydocs``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shlex
import statistics
import sys
import warnings
from pathlib import Path

from _docs import machine, update_section
from _runs import finished_run

import torch

from passportnorm.pipeline import RunOptions, run_verify
from passportnorm.verify import VerdictRule

VARIANTS = {"plain": None, "alternate 0.5": ("alternate", 0.5), "joint": ("joint", 0.5),
            "interleave 0.5": ("interleave", 0.5),  # one step a batch, as plain: the same optimizer steps
            "alternate 0.25": ("alternate", 0.25)}  # every batch a passport-free step, every third an aware one too
DEFAULT_VARIANTS = ["plain", "alternate 0.5", "joint"]

def peak_training_memory_bytes(variant: str, arch: str = "resnet18", dataset: str = "mnist5k", steps: int = 4) -> int:
    """Memory one training unit of ``arch`` x0.25 needs at its peak (``passportnorm.bench``'s exact
    count on CPU) on 512 samples of ``dataset``. Alternate steps free the passport-free graph before the
    passport-aware forward; the joint step keeps both graphs until its single backward."""
    from dataclasses import replace

    from torch.utils.data import TensorDataset

    from passportnorm import protect, zoo
    from passportnorm.bench import peak_training_memory
    from passportnorm.data.registry import load_dataset
    from passportnorm.train import TrainConfig, Trainer

    torch.manual_seed(0)
    data = load_dataset(dataset)
    inputs, labels = (t[:512] for t in data.train.tensors)
    data = replace(data, train=TensorDataset(inputs, labels), test=TensorDataset(inputs, labels))
    model = zoo.build(arch, in_channels=data.input_shape[0], num_classes=data.num_classes, width=0.25)
    if variant != "plain":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = protect(model, inputs[:16], signature="mem", passports="shuffle", weak_layers="skip", seed=0)
    schedule = VARIANTS[variant][0] if VARIANTS[variant] else "alternate"
    trainer = Trainer(model, data, TrainConfig(schedule=schedule))
    return peak_training_memory(trainer, torch.device("cpu"), units=steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18", help="a zoo model (the CLI's --arch)")
    parser.add_argument("--dataset", default="mnist5k", help="the CLI's --dataset (pydocs for --arch gpt)")
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS),
                        help="plain is always run (the ratios' baseline)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--plain-epochs", type=int,
                        help="plain's epochs (default --epochs): 2x gives plain the updates and about the time of alternate")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="runs/bench/pipeline")
    parser.add_argument("--docs", action="store_true")
    parser.add_argument("--signature-mode", default="hash", choices=["hash", "text"],
                        help="the table in docs/RESULTS.md was made with text, the default before hash-bound signatures")
    parser.add_argument("--reuse", action="store_true", help="use finished runs found in --out instead of training again")
    parser.add_argument("--section", help="the docs section to write (default: named by arch, dataset and epochs)")
    args = parser.parse_args()
    command = shlex.join(["python", "benchmarks/pipeline_results.py", *sys.argv[1:]])

    plain_epochs = args.plain_epochs or args.epochs
    variants = {name: VARIANTS[name] for name in ["plain", *args.variants] if name in VARIANTS}
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    for seed in args.seeds:
        for name, schedule in variants.items():
            epochs = args.epochs if schedule is not None else plain_epochs
            folder = run_folder(name) + ("" if epochs == args.epochs else f"-{epochs}-epochs")
            out = Path(args.out) / f"{folder}-seed{seed}"
            opts = RunOptions(arch=args.arch, dataset=args.dataset, seed=seed, secret_seed=seed, epochs=epochs, device=args.device,
                              out=str(out), signature_mode=args.signature_mode)
            if schedule is not None:
                opts.schedule, opts.ratio = schedule
            print(f"{name}, seed {seed} ...", flush=True)
            runs[name].append(finished_run(opts, schedule is not None, reuse=args.reuse))

    # every plain (independent) model against every owner key: must never verify
    independent = []
    for plain in runs["plain"]:
        for name in [n for n in runs if n != "plain"]:
            for owner in runs[name]:
                with contextlib.redirect_stdout(io.StringIO()):
                    report = run_verify(Path(plain["out"]) / "released", Path(owner["out"]) / "owner-key", device=args.device,
                                        rule=VerdictRule(allow_text_signatures=args.signature_mode == "text"))
                independent.append(report)
    never = sum(not r.verified for r in independent)
    worst_p = min(r.signature_p_value for r in independent)
    max_detect = max(r.signature_detection for r in independent)

    memory = {name: peak_training_memory_bytes(name, args.arch, args.dataset) for name in variants}
    plain_epoch = statistics.mean(epoch_seconds(m) for m in runs["plain"])
    ratio_of = "time ratio" if plain_epochs == args.epochs else "training-time ratio (whole run)"
    lines = [
        f"| training | released acc (mean +- sd) | passport-aware acc | signature detection | owner verified | s/epoch | {ratio_of} | peak-memory ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    summary = {}
    for name, metrics_list in runs.items():
        released = [m["history"][-1]["passport_free_accuracy"] for m in metrics_list]
        epoch_s = statistics.mean(epoch_seconds(m) for m in metrics_list)
        row = {
            "released_accuracy": released,
            "seconds_per_epoch": epoch_s,
            "time_ratio": epoch_s * len(metrics_list[0]["history"]) / (plain_epoch * plain_epochs),
            "memory_bytes": memory[name],
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
    plain_released = [m["history"][-1]["passport_free_accuracy"] for m in runs["plain"]]
    for name in [n for n in runs if n != "plain"]:
        gaps = [100 * (m["history"][-1]["passport_free_accuracy"] - p) for m, p in zip(runs[name], plain_released)]
        summary[name]["released_minus_plain_points"] = gaps
        lines.append(f"{name}: released minus plain, same seed: {statistics.mean(gaps):+.2f} points "
                     f"(per seed {', '.join(f'{g:+.2f}' for g in gaps)}).")
    lines += perplexity_lines(runs, summary)
    table = "\n".join(lines)
    print(table)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "summary.json").write_text(json.dumps({"runs": summary, "memory_bytes": memory}, indent=2) + "\n")
    if args.docs:
        header = (
            f"### Plain vs protected training ({args.arch} width 0.25, {args.dataset}, {args.epochs} epochs"
            f"{'' if plain_epochs == args.epochs else f' (plain {plain_epochs})'}, seeds "
            f"{', '.join(map(str, args.seeds))}, same data order, optimiser and "
            f"{'budget' if plain_epochs == args.epochs else 'learning-rate schedule over each run'})\n\n"
            f"Command: `{command}` ({machine(args.device)}). Released accuracy is the stripped model's "
            "test accuracy (plain: the plain model's); detection and verdict come from `passportnorm verify` on the "
            "released model with its owner key and the test data. Time is training time per epoch (evaluation "
            "excluded; the median epoch of each run, then the mean over seeds; with plain's own epochs the ratio "
            "is of whole runs, median epoch times the epochs); peak memory is what one training unit holds at its peak (weights, gradients, momentum, "
            "buffers, and the tensors autograd saves for one backward, counted exactly; batch 64).\n\n"
        )
        section = "pipeline" if args.arch == "resnet18" else f"pipeline-{args.arch}"
        section += "" if args.dataset == "mnist5k" else f"-{args.dataset}"
        section += "" if args.epochs == 8 else f"-{args.epochs}-epochs"
        section += "" if plain_epochs == args.epochs else f"-plain-{plain_epochs}"
        update_section("RESULTS.md", args.section or section, header + table)


def run_folder(variant: str) -> str:
    """A variant's run folder: its schedule's name (ratio 0.5, the default), else schedule and ratio."""
    schedule, _, ratio = variant.partition(" ")
    return schedule if ratio in ("", "0.5") else f"{schedule}-{ratio}"


def epoch_seconds(metrics: dict) -> float:
    """A run's median epoch time: an epoch slowed by other work on the machine moves it little."""
    return statistics.median(row["seconds"] for row in metrics["history"])


def perplexity_lines(runs: dict[str, list[dict]], summary: dict[str, dict]) -> list[str]:
    """A language model's released perplexity per variant and its change against plain, same seed."""
    if "passport_free_perplexity" not in runs["plain"][0]["history"][-1]:
        return []
    final = lambda m: m["history"][-1]["passport_free_perplexity"]  # noqa: E731
    plain = [final(m) for m in runs["plain"]]
    lines = ["", f"Released perplexity (per byte): plain {statistics.mean(plain):.3f} ({', '.join(f'{p:.3f}' for p in plain)})."]
    for name in [n for n in runs if n != "plain"]:
        values = [final(m) for m in runs[name]]
        change = [100 * (v / p - 1) for v, p in zip(values, plain)]
        summary[name].update(released_perplexity=values, perplexity_change_percent=change)
        lines.append(f"{name}: perplexity {statistics.mean(values):.3f}, {statistics.mean(change):+.2f}% against plain "
                     f"(per seed {', '.join(f'{c:+.2f}%' for c in change)}).")
    summary["plain"]["released_perplexity"] = plain
    return lines


if __name__ == "__main__":
    main()
