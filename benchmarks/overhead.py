"""Cost of the passport-aware branch, as ratios to a plain model timed in the same process.

    python benchmarks/overhead.py [--arch small_cnn|pointnet] [--device auto] [--rounds 5] [--profile] [--docs]

Measures, for small_cnn on MNIST-shaped batches (or the CPU-sized PointNet of the point-cloud
results on 256-point clouds, protected as the CLI does it): a training step of the plain model against a
protected model's passport-free step, its alternating step pair (the paper's 50% ratio) and its
joint step; eval inference of the released (stripped) model, of the protected model's free and
passport-aware branches; and signature detection. Rounds interleave the variants so that drift
of the machine hits all of them alike; the median per variant is reported. ``--profile`` adds
where the time of the free and passport-aware inference goes, by operator (torch.profiler).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from _docs import update_section

import passportnorm as pn
from passportnorm import zoo
from passportnorm.bench import seconds_per_call
from passportnorm.device import resolve_device


# the model as the results in docs/ train it, and the shape of one input
ARCHS = {
    "small_cnn": ({}, (1, 28, 28)),
    "pointnet": ({"in_channels": 3, "num_classes": 10, "width": 0.25}, (3, 256)),
}


def _operator_times(fn, repeats: int) -> dict[str, float]:
    """Self CPU milliseconds per call of ``fn``, by aten operator, largest first."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            fn()
    times = {e.key: e.self_cpu_time_total / 1000 / repeats for e in prof.key_averages()}
    return dict(sorted(times.items(), key=lambda item: -item[1]))


def _profile_table(profiles: dict[str, dict[str, float]], top: int = 6) -> str:
    """Markdown: the ``top`` operators of each profile, side by side, and the totals."""
    names = list(dict.fromkeys(op for times in profiles.values() for op in list(times)[:top]))
    lines = ["| operator (self CPU) | " + " | ".join(f"{branch} ms/call" for branch in profiles) + " |",
             "|---|" + "---:|" * len(profiles)]
    for op in names:
        lines.append(f"| {op} | " + " | ".join(f"{times.get(op, 0.0):.1f}" for times in profiles.values()) + " |")
    lines.append("| all operators | " + " | ".join(f"{sum(times.values()):.1f}" for times in profiles.values()) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=sorted(ARCHS), default="small_cnn")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="steps timed per variant per round")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", default=None, help="metrics file (default: runs/bench/overhead[-ARCH].json)")
    parser.add_argument("--profile", action="store_true",
                        help="also print self CPU time by operator for free and passport-aware inference")
    parser.add_argument("--docs", action="store_true", help="write the table into docs/RESULTS.md")
    args = parser.parse_args()
    suffix, arch_flag = ("", "") if args.arch == "small_cnn" else (f"-{args.arch}", f" --arch {args.arch}")
    args.out = args.out or f"runs/bench/overhead{suffix}.json"

    device = resolve_device(args.device)
    torch.manual_seed(0)
    cfg, shape = ARCHS[args.arch]
    plain = zoo.build(args.arch, **cfg).to(device)
    x = torch.randn(args.batch_size, *shape, device=device)
    y = torch.randint(0, 10, (args.batch_size,), device=device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pn.PassportWarning)  # weak (low fan-in) first layers: irrelevant to timing
        protected = pn.protect(plain, x[:8], signature="bench", passports="shuffle", seed=0,
                               weak_layers="skip" if args.arch == "pointnet" else "protect")
    released = pn.strip(protected)
    opt_plain = torch.optim.SGD(plain.parameters(), lr=0.01, momentum=0.9)
    opt_prot = torch.optim.SGD(protected.parameters(), lr=0.01, momentum=0.9)

    def plain_step():
        loss = F.cross_entropy(plain(x), y)
        opt_plain.zero_grad(set_to_none=True)
        loss.backward()
        opt_plain.step()

    def free_step():
        loss = F.cross_entropy(protected(x), y)
        opt_prot.zero_grad(set_to_none=True)
        loss.backward()
        opt_prot.step()

    def aware_step():
        with pn.passport_mode(protected):
            loss = F.cross_entropy(protected(x), y) + pn.sign_loss(protected)
        opt_prot.zero_grad(set_to_none=True)
        loss.backward()
        opt_prot.step()

    def alternate_pair():
        free_step()
        aware_step()

    def joint_step():
        free_loss = F.cross_entropy(protected(x), y)
        with pn.passport_mode(protected):
            aware_loss = F.cross_entropy(protected(x), y) + pn.sign_loss(protected)
        opt_prot.zero_grad(set_to_none=True)
        (free_loss + aware_loss).backward()
        opt_prot.step()

    probe = torch.randn(256, *shape, device=device)

    @torch.no_grad()
    def infer(model, aware=False):
        model.eval()
        if aware:
            with pn.passport_mode(model):
                model(probe)
        else:
            model(probe)

    variants = {
        "train: plain step": (plain_step, "train"),
        "train: protected, passport-free step": (free_step, "train"),
        "train: protected, alternate pair (free + aware)": (alternate_pair, "train"),
        "train: protected, joint step": (joint_step, "train"),
        "infer: plain": (lambda: infer(plain), "infer"),
        "infer: released (stripped)": (lambda: infer(released), "infer"),
        "infer: protected, passport-free": (lambda: infer(protected), "infer"),
        "infer: protected, passport-aware": (lambda: infer(protected, aware=True), "infer"),
        "verify: signature_detection": (lambda: pn.signature_detection(protected), "verify"),
    }
    for fn, kind in variants.values():  # warm-up
        fn() if kind != "train" else [fn() for _ in range(2)]
        plain.train(), protected.train()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, (fn, kind) in variants.items():
            plain.train(), protected.train()
            samples[name].append(seconds_per_call(fn, device, args.steps))
    plain.train()
    median = {name: statistics.median(v) for name, v in samples.items()}
    base = {"train": median["train: plain step"], "infer": median["infer: plain"], "verify": median["infer: plain"]}
    rows = []
    for name, (_, kind) in variants.items():
        rows.append({"variant": name, "ms": 1000 * median[name], "ratio": median[name] / base[kind], "baseline": kind})
    result = {
        "arch": args.arch,
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "rows": rows,
    }
    if args.profile:
        result["profile_ms_per_call"] = {
            branch: _operator_times(lambda: infer(protected, aware=branch == "passport-aware"), args.steps)
            for branch in ("passport-free", "passport-aware")
        }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")

    lines = [
        "| variant | median ms | ratio to plain |",
        "|---|---:|---:|",
    ]
    for row in rows:
        base_name = "plain step" if row["baseline"] == "train" else "plain inference"
        lines.append(f"| {row['variant']} | {row['ms']:.2f} | {row['ratio']:.2f}x {base_name} |")
    table = "\n".join(lines)
    if args.profile:
        table += ("\n\nWhere inference time goes (torch.profiler, the protected model's two forwards, "
                  f"{args.steps} calls each):\n\n" + _profile_table(result["profile_ms_per_call"]))
    print(table)
    if args.docs:
        command = " ".join(["python benchmarks/overhead.py" + arch_flag]
                           + (["--rounds", str(args.rounds)] if args.rounds != 5 else [])
                           + (["--profile"] if args.profile else []) + ["--docs"])
        header = (
            f"### Cost of the branch ({args.arch}, batch "
            f"{args.batch_size} train / 256 infer, {device}, {result['threads']} threads, torch {torch.__version__})\n\n"
            f"Command: `{command}` (medians of {args.rounds} interleaved rounds x {args.steps} steps).\n\n"
        )
        update_section("RESULTS.md", f"overhead{suffix}", header + table)


if __name__ == "__main__":
    main()
