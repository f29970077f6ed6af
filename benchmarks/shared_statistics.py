"""Why unprotected norms keep separate statistics: PointNet trained with one shared set, then repaired.

    python benchmarks/shared_statistics.py [--seed 0] [--epochs 15] [--reuse]

Trains the point-cloud benchmark's protected PointNet (mnist5k-points, same options as
``passportnorm protect --dataset mnist5k-points``) but with ``protect(..., separate_statistics=False)``,
the behaviour before aware_statistics.py: the two skipped xyz norms keep one set of running
statistics for both forwards. It then re-estimates only those norms' statistics, once per forward,
on the training split, and prints free/aware test accuracy before and after (no retraining).
Writes runs/bench/shared-statistics/result.json.
"""

from __future__ import annotations

import argparse
import copy
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from passportnorm import zoo
from passportnorm.aware_statistics import needs_aware_statistics
from passportnorm.data import load_dataset
from passportnorm.evaluation import accuracy
from passportnorm.fileio import write_json_atomic
from passportnorm.pipeline import RunOptions, _model_config, _train_config, _trigger, resolve_task
from passportnorm.protect import passport_mode, protect, protected_layers
from passportnorm.train import Trainer


def _shared_statistics_norms(model: nn.Module) -> list[str]:
    inside = tuple(path + "." for path in protected_layers(model))
    return [p for p, m in model.named_modules() if needs_aware_statistics(m) and not p.startswith(inside)]


@torch.no_grad()
def _statistics_for(model: nn.Module, paths: list[str], inputs: torch.Tensor, aware: bool) -> nn.Module:
    """A copy whose ``paths`` norms hold statistics of one forward only (cumulative average)."""
    repaired = copy.deepcopy(model).eval()
    modules = dict(repaired.named_modules())
    for path in paths:
        modules[path].reset_running_stats()
        modules[path].momentum = None
        modules[path].train()
    with passport_mode(repaired, aware):
        for start in range(0, len(inputs), 256):
            repaired(inputs[start : start + 256])
    return repaired.eval()


def _free_and_aware(model: nn.Module, data) -> tuple[float, float]:
    free = accuracy(model, data)
    with passport_mode(model):
        return free, accuracy(model, data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--out", default="runs/bench/shared-statistics")
    parser.add_argument("--reuse", action="store_true", help="continue or reuse the training run in --out")
    args = parser.parse_args()

    opts = resolve_task(RunOptions(dataset="mnist5k-points", seed=args.seed, secret_seed=args.seed, epochs=args.epochs, out=args.out))
    data = load_dataset(opts.dataset, None, seed=opts.seed)
    torch.manual_seed(opts.seed)
    model = zoo.build(opts.arch, **_model_config(opts, data))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = protect(model, data.train.tensors[0][:16], signature=opts.signature, passports=opts.passports, seed=opts.seed,
                        alpha=opts.alpha, weak_layers=opts.weak_layers, separate_statistics=False)
    trainer = Trainer(model, data, _train_config(opts), trigger=_trigger(opts, data), out_dir=Path(args.out), device="cpu")
    trainer.fit(resume=args.reuse)
    model.eval()

    shared = _shared_statistics_norms(model)
    inputs = data.train.tensors[0]
    free, aware = _free_and_aware(model, data.test)
    repaired_free = _free_and_aware(_statistics_for(model, shared, inputs, aware=False), data.test)[0]
    repaired_aware = _free_and_aware(_statistics_for(model, shared, inputs, aware=True), data.test)[1]
    result = {
        "seed": opts.seed, "epochs": args.epochs, "shared_statistics_norms": shared,
        "one_shared_set": {"free": free, "aware": aware},
        "re_estimated_per_forward": {"free": repaired_free, "aware": repaired_aware},
    }
    write_json_atomic(Path(args.out) / "result.json", result)
    print(f"norms with one set of statistics for both forwards: {', '.join(shared)}")
    print(f"one shared set:         free {100 * free:.1f}%, passport-aware {100 * aware:.1f}%")
    print(f"re-estimated per forward: free {100 * repaired_free:.1f}%, passport-aware {100 * repaired_aware:.1f}%")


if __name__ == "__main__":
    sys.exit(main())
