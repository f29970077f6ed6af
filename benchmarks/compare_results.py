"""The paper's comparison on mnist5k: plain, DeepIPR V1, DeepIPR V2 and passport-aware normalization,
for AlexNet and ResNet18 at CPU widths, 3 seeds each; writes the "comparison" section of docs/RESULTS.md.

    python benchmarks/compare_results.py [--epochs 8] [--seeds 3] [--docs]

Each architecture is one ``passportnorm compare`` run (``run_compare``); finished runs in
``--out`` are reused, so an interrupted benchmark resumes where it stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _docs import machine, update_section  # noqa: E402

from passportnorm.baselines.compare import CompareOptions, run_compare  # noqa: E402

ARCHS = [("alexnet", 0.25), ("resnet18", 0.25)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="runs/bench/compare")
    parser.add_argument("--docs", action="store_true")
    args = parser.parse_args()
    sections = []
    for arch, width in ARCHS:
        print(f"{arch} x{width} ...", flush=True)
        opts = CompareOptions(dataset="mnist5k", arch=arch, width=width, seeds=tuple(range(args.seeds)), epochs=args.epochs,
                              device=args.device, out=str(Path(args.out) / arch))
        with contextlib.redirect_stderr(io.StringIO()):
            summary = run_compare(opts)
        print(summary["table"], flush=True)
        sections.append(f"#### {arch} (width {width})\n\n{summary['table']}")
    if args.docs:
        header = (
            f"### Plain vs DeepIPR vs passport-aware normalization (mnist5k, {args.epochs} epochs, seeds 0-{args.seeds - 1})\n\n"
            "Command: `python benchmarks/compare_results.py --docs` (each block is `passportnorm compare --dataset mnist5k "
            f"--arch A --width 0.25 --seeds {args.seeds} --epochs {args.epochs}`; {machine(args.device)}). Every scheme gets the same data order, "
            "SGD 0.05 with cosine decay, weight decay, epochs and seeds, the same norm layers (all but the grayscale first "
            "one), the same shuffle passports and signature bits, and the same sign loss (alpha 0.1, margin 0.1). "
            "Schedules as published: pan alternates free/aware steps, DeepIPR V2 backpropagates both branches at once, "
            "DeepIPR V1 has only its passport branch. Verification accuracy is the passport branch's test accuracy with "
            "the owner's passports (V1: the released model itself). Forged passports: ambiguity II with 10% of the bits "
            "flipped, 3 epochs on 10% of the training split, model frozen; lower is better for the owner. Ratios are per "
            "seed against the plain run (time per epoch) or an untrained plain model of the same architecture "
            "(parameters, stored values = parameters + buffers, inference on 256 test images). Means +- sd over seeds.\n\n"
        )
        update_section("RESULTS.md", "comparison", header + "\n\n".join(sections))


if __name__ == "__main__":
    main()
