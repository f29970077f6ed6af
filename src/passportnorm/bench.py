"""``passportnorm bench``: what protection costs, as ratios to a plain model measured in the same process.

For one architecture, dataset, device and precision: a training unit through the Trainer's own
code (plain step; alternate pair; joint step; interleave step), inference (released, protected
passport-free and passport-aware), reading the signature, peak training memory, time per epoch
and the time the protected model needs to reach the plain model's final accuracy, and the time
per epoch of 1 against N processes under torchrun (gloo on CPU). Step timings interleave the
variants over rounds and report medians, so drift of the machine hits all of them alike.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import zoo
from .choices import Precision, Schedule
from .data import load_dataset
from .data.registry import DatasetSplits, first_inputs
from .detection import signature_detection
from .device import resolve_device
from .errors import ConfigError, PassportWarning
from .protect import passport_mode, protect, strip
from .train import TrainConfig, Trainer

__all__ = ["BenchOptions", "bench_table", "peak_training_memory", "run_bench", "seconds_per_call"]


@dataclass
class BenchOptions:
    arch: str = "small_cnn"
    dataset: str = "mnist5k"
    width: float = 0.25
    device: str = "auto"
    precision: Precision = "fp32"
    batch_size: int = 64
    epochs: int = 3  # of plain and of protected training, for time per epoch and time to plain's accuracy
    rounds: int = 5
    steps: int = 5  # timed per variant per round
    processes: list[int] = field(default_factory=lambda: [1, 2])  # [] skips the scaling runs
    out: str = "runs/bench"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """Mean wall-clock seconds of ``fn`` over ``repeats`` calls, the device synchronised around them."""
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / repeats


def _trainers(opts: BenchOptions, data: DatasetSplits, device: torch.device) -> dict[str, Trainer]:
    """A plain trainer and one protected trainer per schedule, each with its own copy of one model."""
    torch.manual_seed(0)
    model = zoo.build(
        opts.arch, in_channels=data.input_shape[0], num_classes=data.num_classes, width=opts.width
    )
    example = first_inputs(data.train, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PassportWarning)  # weak first layers: irrelevant to cost
        protected = protect(copy.deepcopy(model), example, signature="bench", seed=0)
    trainers = {"plain": Trainer(model, data, _config(opts, "alternate"), device=device)}
    for schedule in ("alternate", "joint", "interleave"):
        trainers[schedule] = Trainer(copy.deepcopy(protected), data, _config(opts, schedule), device=device)
    return trainers


def _config(opts: BenchOptions, schedule: Schedule) -> TrainConfig:
    return TrainConfig(
        epochs=opts.epochs, batch_size=opts.batch_size, schedule=schedule, precision=opts.precision
    )


def _step_times(opts: BenchOptions, trainers: dict[str, Trainer], device: torch.device) -> dict[str, float]:
    """Median seconds of one training unit per trainer, and of inference and reading the signature."""
    batch = next(trainers["plain"]._batches(0))
    probe = batch[0].to(device)
    released = strip(trainers["alternate"].model)
    protected = trainers["alternate"].model

    @torch.no_grad()
    def infer(model: torch.nn.Module, aware: bool = False) -> None:
        model.eval()
        with passport_mode(model) if aware else contextlib.nullcontext(), trainers["plain"]._autocast():
            model(probe)

    variants: dict[str, Callable[[], Any]] = {
        "train: plain step": lambda: trainers["plain"].step(batch),
        "train: alternate unit (free + aware step)": lambda: trainers["alternate"].step(batch),
        "train: joint step": lambda: trainers["joint"].step(batch),
        "train: interleave step (mean of free and aware)": lambda: trainers["interleave"].step(batch),
        "infer: plain": lambda: infer(trainers["plain"].model),
        "infer: released (stripped)": lambda: infer(released),
        "infer: protected, passport-free": lambda: infer(protected),
        "infer: protected, passport-aware": lambda: infer(protected, aware=True),
        "verify: read the signature": lambda: signature_detection(protected),
    }
    for fn in variants.values():  # warm-up: allocator, kernels, autocast caches
        fn(), fn()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(opts.rounds):
        for name, fn in variants.items():
            samples[name].append(seconds_per_call(fn, device, opts.steps))
    return {name: statistics.median(values) for name, values in samples.items()}


def peak_training_memory(trainer: Trainer, device: torch.device, units: int = 3) -> int:
    """Bytes one training unit needs at its peak. CUDA: ``torch.cuda.max_memory_allocated``. CPU:
    weights, gradients and momentum, plus the largest set of tensors autograd keeps for one backward,
    counted by storage, each once (exact and the same on every machine, unlike process RSS)."""
    batches = trainer._batches(0)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(units):
            trainer.step(next(batches))
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device))
    live: dict[int, int] = {}
    peaks: list[int] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        live[storage.data_ptr()] = storage.nbytes()
        return tensor

    optimise = trainer._optimise

    def counted(loss, where, optimizer=None):
        peaks.append(sum(live.values()))
        live.clear()
        optimise(loss, where, optimizer)

    trainer.__dict__["_optimise"] = counted  # an instance attribute shadows the method until deleted
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            for _ in range(units):
                trainer.step(next(batches))
    finally:
        del trainer._optimise
    weights = sum(p.numel() * p.element_size() for p in trainer.model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in trainer.model.buffers())
    return 3 * weights + buffers + max(peaks)


def _epochs(trainers: dict[str, Trainer]) -> dict[str, Any]:
    """Train plain and protected (alternate) for the configured epochs; time per epoch and the time
    the protected model needs to reach plain's final accuracy (its passport-free branch)."""
    histories = {}
    for name in ("plain", "alternate"):
        trainer = trainers[name]
        trainer.model.train()
        with contextlib.redirect_stderr(io.StringIO()):
            histories[name] = trainer.fit()
    target = histories["plain"][-1]["passport_free_accuracy"]
    elapsed, reached = 0.0, None
    for row in histories["alternate"]:
        elapsed += row["seconds"]
        if reached is None and row["passport_free_accuracy"] >= target:
            reached = elapsed
    per_epoch = {name: statistics.mean(r["seconds"] for r in rows) for name, rows in histories.items()}
    return {
        "plain_accuracy": target,
        "protected_accuracy": histories["alternate"][-1]["passport_free_accuracy"],
        "seconds_per_epoch": per_epoch,
        "plain_seconds": sum(r["seconds"] for r in histories["plain"]),
        "protected_seconds_to_plain_accuracy": reached,
    }


def _scaling(opts: BenchOptions) -> dict[str, dict[int, float]]:
    """Seconds of one epoch under torchrun with each process count, plain and protected (gloo on CPU)."""
    times: dict[str, dict[int, float]] = {"train": {}, "protect": {}}
    for count in opts.processes:
        for command in times:
            with tempfile.TemporaryDirectory() as out:
                args = [
                    sys.executable,
                    "-m",
                    "torch.distributed.run",
                    "--standalone",
                    f"--nproc_per_node={count}",
                    "-m",
                    "passportnorm",
                    command,
                    "--arch",
                    opts.arch,
                    "--dataset",
                    opts.dataset,
                    "--width",
                    str(opts.width),
                    "--epochs",
                    "1",
                    "--batch-size",
                    str(opts.batch_size),
                    "--device",
                    opts.device,
                    "--precision",
                    opts.precision,
                    "--out",
                    out,
                    "--seed",
                    "0",
                ]
                if command == "protect":
                    args += ["--secret-seed", "0"]
                env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // count))}
                done = subprocess.run(args, capture_output=True, text=True, env=env)
                if done.returncode not in (0, 1):  # 1: trained, but one epoch did not verify; timing stands
                    raise RuntimeError(
                        f"{command} with {count} processes failed: {done.stderr.strip()[-500:]}"
                    )
                history = json.loads((Path(out) / "metrics.json").read_text())["history"]
                times[command][count] = history[0]["seconds"]
        print(
            f"  {count} process(es): one epoch plain {times['train'][count]:.1f} s, "
            f"protected {times['protect'][count]:.1f} s",
            flush=True,
        )
    return times


def run_bench(opts: BenchOptions) -> dict[str, Any]:
    """Every figure of the module docstring; writes ``bench.json`` under ``opts.out`` and returns it."""
    if opts.epochs < 1 or opts.rounds < 1 or opts.steps < 1 or any(n < 1 for n in opts.processes):
        raise ConfigError("--epochs, --rounds, --steps and every --processes count must be at least 1")
    device = resolve_device(opts.device)
    data = load_dataset(opts.dataset, seed=0)
    print(
        f"bench: {opts.arch} on {opts.dataset}, {device}, {opts.precision}, batch {opts.batch_size}",
        flush=True,
    )
    print("  step, inference and signature timings ...", flush=True)
    steps = _step_times(opts, _trainers(opts, data, device), device)
    print("  peak memory ...", flush=True)
    memory = {
        name: peak_training_memory(trainer, device) for name, trainer in _trainers(opts, data, device).items()
    }
    print(f"  {opts.epochs} epochs plain, {opts.epochs} protected ...", flush=True)
    epochs = _epochs(_trainers(opts, data, device))  # fresh models and schedules, as a run starts
    scaling = _scaling(opts) if opts.processes else {}
    result = {
        "options": asdict(opts),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "seconds": steps,
        "peak_memory_bytes": memory,
        "epochs": epochs,
        "scaling_seconds_per_epoch": scaling,
    }
    Path(opts.out).mkdir(parents=True, exist_ok=True)
    (Path(opts.out) / "bench.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def bench_table(result: dict[str, Any]) -> str:
    """The result as a markdown table: each figure, its baseline (plain in the same process, or one
    process for the scaling rows) and the ratio."""
    s, base = (
        result["seconds"],
        {"train": "train: plain step", "infer": "infer: plain", "verify": "infer: plain"},
    )
    lines = ["| figure | measured | baseline | ratio |", "|---|---:|---:|---:|"]
    for name, value in s.items():
        plain = base[name.split(":")[0]]
        if name != plain:
            lines.append(
                f"| {name} | {1000 * value:.2f} ms | {1000 * s[plain]:.2f} ms ({plain}) | "
                f"{value / s[plain]:.2f}x |"
            )
    memory = result["peak_memory_bytes"]
    for schedule in ("alternate", "joint", "interleave"):
        lines.append(
            f"| peak training memory, {schedule} | {memory[schedule] / 2**20:.2f} MiB | "
            f"{memory['plain'] / 2**20:.2f} MiB (plain) | {memory[schedule] / memory['plain']:.2f}x |"
        )
    e = result["epochs"]
    per_epoch = e["seconds_per_epoch"]
    lines.append(
        f"| time per epoch, alternate (evaluation included) | {per_epoch['alternate']:.1f} s | "
        f"{per_epoch['plain']:.1f} s (plain) | {per_epoch['alternate'] / per_epoch['plain']:.2f}x |"
    )
    reached, plain_time = e["protected_seconds_to_plain_accuracy"], e["plain_seconds"]
    epochs = result["options"]["epochs"]
    label = f"time to plain's accuracy ({100 * e['plain_accuracy']:.2f}% after {epochs} epochs)"
    if reached is None:
        lines.append(
            f"| {label} | not reached ({100 * e['protected_accuracy']:.2f}%) | {plain_time:.1f} s | - |"
        )
    else:
        lines.append(
            f"| {label} | {reached:.1f} s | {plain_time:.1f} s (plain) | {reached / plain_time:.2f}x |"
        )
    for command, what in (("train", "plain"), ("protect", "protected")):
        times = {
            int(count): seconds
            for count, seconds in result["scaling_seconds_per_epoch"].get(command, {}).items()
        }
        counts = sorted(times)
        for count in counts[1:]:
            lines.append(
                f"| one epoch, {what}, {count} processes | {times[count]:.1f} s | {times[counts[0]]:.1f} s "
                f"({counts[0]} process) | {times[count] / times[counts[0]]:.2f}x |"
            )
    return "\n".join(lines)
