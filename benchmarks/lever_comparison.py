"""Which layer should carry a pre-norm norm's bits: its consumer or the writer of its stream? (issue 34)

    python benchmarks/lever_comparison.py [--seeds 0 1 2] [--epochs 8] [--docs]

The zoo's ViT x0.25 (``--arch vit``) on mnist5k, three ways, same data order, optimiser (its recipe:
Adam 0.002, cosine), alternating schedule, shuffle passports and budget:

- plain: no protection;
- consumer (the default pairing): all 9 LayerNorms, each through the layer that reads it (qkv,
  the MLP's first Linear, the head through the mean over tokens): 576 bits;
- writer: the 8 norms whose stream one Linear writes last (the attention's ``proj`` for norm2,
  the previous MLP's last Linear for norm1 and the final norm), given as ``pairs=`` so that the
  writer's rows carry the bits as a producer's would: 512 bits (``blocks.0.norm1`` reads the patch
  embedding plus fixed positions, which no single Linear writes, and is left out).

Recorded per seed: released accuracy, detection, seconds per epoch; then the thief's FTAL
(``attack finetune --mode ftal``, 5 epochs at lr 0.01 on half the training split) and the
detection left after it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path

from _docs import machine, update_section

import torch

import passportnorm as pn
from passportnorm import zoo
from passportnorm.attacks import finetune
from passportnorm.attacks.runner import attacker_split
from passportnorm.data import load_dataset
from passportnorm.evaluation import accuracy
from passportnorm.key import extract_key
from passportnorm.train import TrainConfig, Trainer

WRITERS = {"norm": "blocks.3.mlp.2"} | {f"blocks.{i}.norm2": f"blocks.{i}.attn.proj" for i in range(4)} | {
    f"blocks.{i}.norm1": f"blocks.{i - 1}.mlp.2" for i in range(1, 4)}


def _run(variant: str, seed: int, epochs: int, data) -> dict:
    torch.manual_seed(seed)
    model = zoo.build("vit", in_channels=1, num_classes=10, width=0.25)
    if variant != "plain":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = pn.protect(model, data.train.tensors[0][:16], signature=f"(c) lever {seed}", passports="shuffle",
                               seed=seed, pairs=WRITERS if variant == "writer" else None)
    started = time.perf_counter()
    history = Trainer(model, data, TrainConfig(epochs=epochs, seed=seed, **zoo.model_recipe("vit"))).fit()
    seconds = (time.perf_counter() - started) / epochs
    if variant == "plain":
        return {"released_accuracy": accuracy(model, data.test), "seconds_per_epoch": seconds}
    key, released = extract_key(model), pn.strip(model).eval()
    attacked = finetune(released, key, attacker_split(data.train, 0.5, seed), data.test, mode="ftal", epochs=5,
                        seed=seed)
    return {"released_accuracy": accuracy(released, data.test), "seconds_per_epoch": seconds, "bits": pn.capacity(model),
            "detection": pn.signature_detection(model).rate, "history": history,
            "ftal_detection": attacked["rows"][-1]["signature_detection"],
            "ftal_accuracy": attacked["rows"][-1]["attacker_accuracy"], "ftal_verified": attacked["rows"][-1]["verified"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--out", default="runs/bench/lever-comparison")
    parser.add_argument("--docs", action="store_true")
    args = parser.parse_args()
    data = load_dataset("mnist5k", seed=0)
    runs: dict[str, list[dict]] = {"plain": [], "consumer": [], "writer": []}
    for seed in args.seeds:
        for variant in runs:
            print(f"{variant}, seed {seed} ...", flush=True)
            runs[variant].append(_run(variant, seed, args.epochs, data))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.json").write_text(json.dumps(runs, indent=1, default=str))
    plain = [r["released_accuracy"] for r in runs["plain"]]
    lines = ["| lever | bits | released acc (mean) | minus plain, same seed (mean; per seed) | detection (min) | "
             "after FTAL 5 epochs: detection (min) | verified after FTAL | s/epoch |",
             "|---|---:|---:|---|---:|---:|---:|---:|"]
    for variant, rows in runs.items():
        acc = statistics.mean(r["released_accuracy"] for r in rows)
        epoch = statistics.mean(r["seconds_per_epoch"] for r in rows)
        if variant == "plain":
            lines.append(f"| plain | - | {100 * acc:.2f}% | - | - | - | - | {epoch:.1f} |")
            continue
        gaps = [100 * (r["released_accuracy"] - p) for r, p in zip(rows, plain)]
        lines.append(
            f"| {variant} | {rows[0]['bits']} | {100 * acc:.2f}% | {statistics.mean(gaps):+.2f} "
            f"({', '.join(f'{g:+.2f}' for g in gaps)}) | {100 * min(r['detection'] for r in rows):.1f}% | "
            f"{100 * min(r['ftal_detection'] for r in rows):.1f}% | {sum(r['ftal_verified'] for r in rows)}/{len(rows)} | "
            f"{epoch:.1f} |")
    table = "\n".join(lines)
    print(table)
    if args.docs:
        header = (f"### Consumer vs writer lever (vit x0.25, mnist5k, {args.epochs} epochs, seeds "
                  f"{', '.join(map(str, args.seeds))})\n\nCommand: `python benchmarks/lever_comparison.py --epochs {args.epochs} "
                  f"--seeds {' '.join(map(str, args.seeds))} --docs` "
                  f"({machine()}). What each lever is and why: docs/DESIGN.md section 3b; the benchmark's docstring "
                  "has the set-up.\n\n")
        update_section("RESULTS.md", "lever-comparison", header + table)


if __name__ == "__main__":
    main()
