"""``passportnorm bench`` for docs/RESULTS.md: small_cnn on mnist5k and PointNet on mnist5k-points.

    python benchmarks/bench.py [--device auto] [--docs]

Each table is one ``passportnorm bench`` run (every figure a ratio to a plain model measured in the
same process); the scaling rows start 1 and 2 processes under torchrun (gloo on CPU).
"""

from __future__ import annotations

import argparse

from _docs import machine, update_section

from passportnorm.bench import BenchOptions, bench_table, run_bench

RUNS = {"small_cnn": "mnist5k", "pointnet": "mnist5k-points"}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--docs", action="store_true", help="write the tables into docs/RESULTS.md")
    args = parser.parse_args()
    for arch, dataset in RUNS.items():
        where = machine(args.device)
        result = run_bench(
            BenchOptions(
                arch=arch,
                dataset=dataset,
                device=args.device,
                precision=args.precision,
                out=f"runs/bench/bench-{arch}-{args.device}",
            )
        )
        table = bench_table(result)
        print(table, flush=True)
        command = f"passportnorm bench --arch {arch} --dataset {dataset} --device {args.device}" + (
            "" if args.precision == "fp32" else f" --precision {args.precision}"
        )
        header = (
            f"Command: `{command}`, run by `python benchmarks/bench.py --docs` ({where}; width 0.25, "
            f"batch 64, {args.precision}; step timings are medians of 5 interleaved rounds of 5 steps; "
            "epochs on the dataset's 4000 training samples, evaluation included; scaling: one epoch "
            "under torchrun, gloo, the cores shared out between the processes).\n\n"
        )
        name = f"bench-{arch}" + ("" if result["device"] == "cpu" else "-cuda")
        if args.docs:
            update_section("RESULTS.md", name, header + table)


if __name__ == "__main__":
    main()
