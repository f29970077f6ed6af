"""The paper's comparison, reproducible: plain training, DeepIPR V1/V2 and passport-aware
normalization ("pan") trained with the same data, order, optimiser, budget and seeds.

For every (seed, scheme) it trains, releases and verifies, then measures what a user choosing a
scheme weighs: released accuracy, accuracy with the owner's passports, signature detection,
accuracy with forged passports (ambiguity II, 10% of the bits flipped), training time per
epoch, and the released model's size and inference time, each as a ratio to plain. Each
finished run is written to ``out/<scheme>-seed<k>/result.json``; a rerun skips finished runs
and resumes an interrupted one from its checkpoint.
"""

from __future__ import annotations

import copy
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .. import zoo
from ..attacks.ambiguity import forge_flipped_signature
from ..attacks.runner import attacker_split
from ..progress import print_epoch
from ..zoo.norms import NORM_KINDS
from ..data import load_dataset
from ..device import resolve_device
from ..errors import ConfigError
from ..evaluation import accuracy
from ..fileio import write_json_atomic, write_text_atomic
from ..key import attach_key, extract_key
from ..protect import passport_mode, protect, strip
from ..train import TrainConfig, Trainer
from ..verify import verify, verify_attached
from .deepipr import protect_deepipr, release_deepipr

__all__ = ["COMPARE_SCHEMES", "PLACEMENTS", "CompareOptions", "run_compare", "compare_table"]

COMPARE_SCHEMES = ("plain", "deepipr-v1", "deepipr-v2", "pan")
# how each scheme trains, as published: pan alternates (the paper), DeepIPR V2 backpropagates
# both branches at once (the authors' code), DeepIPR V1 has only its passport branch
_SCHEDULE = {"plain": "alternate", "pan": "alternate", "deepipr-v2": "joint", "deepipr-v1": "aware"}
# which norms carry passports: all of them, or DeepIPR's choice (AlexNet's last 3 convs, ResNet18's layer4)
PLACEMENTS = {
    "all": {},
    "deepipr": {"alexnet": ["features.9", "features.12", "features.15"], "resnet18": ["layer4.*"]},
}


@dataclass
class CompareOptions:
    dataset: str = "mnist5k"
    data_dir: str | None = None
    points: int | None = None
    arch: str = "resnet18"
    width: float = 0.25
    norm: str = "bn"
    deepipr_v2_norm: str | None = None  # V2's norm when not --norm: its authors ran V2 with GroupNorm
    schemes: tuple[str, ...] = COMPARE_SCHEMES
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 8
    batch_size: int = 64
    lr: float = 0.05
    placement: str = "all"
    passports: str = "shuffle"
    signature: str = "(c) passportnorm owner"
    flip: float = 0.1
    forge_epochs: int = 3
    attacker_share: float = 0.1
    device: str = "auto"
    out: str = "runs/compare"

    def validate(self) -> None:
        unknown = [s for s in self.schemes if s not in COMPARE_SCHEMES]
        if unknown or not self.schemes:
            raise ConfigError(f"unknown scheme {unknown[0] if unknown else '(none)'!r}; choose from {', '.join(COMPARE_SCHEMES)}")
        if self.placement not in PLACEMENTS:
            raise ConfigError(f"unknown placement {self.placement!r}; choose {' or '.join(PLACEMENTS)}")
        if self.placement != "all" and self.arch not in PLACEMENTS[self.placement]:
            raise ConfigError(f"placement {self.placement!r} is defined for {', '.join(PLACEMENTS[self.placement])}, "
                              f"not {self.arch!r}; use --placement all")
        if not self.seeds:
            raise ConfigError("compare needs at least one seed")
        for flag, norm in (("--norm", self.norm), ("--deepipr-v2-norm", self.deepipr_v2_norm)):
            if norm is not None and norm not in NORM_KINDS:
                raise ConfigError(f"{flag} {norm!r} is not a norm; choose one of {', '.join(NORM_KINDS)}")


def _inference_ratio(released: torch.nn.Module, plain: torch.nn.Module, batch: torch.Tensor, rounds: int = 5, reps: int = 5) -> float:
    """Median forward time of ``released`` over that of an untrained plain model of the same
    architecture (speed does not depend on the weights), interleaved round by round."""
    times = {"released": [], "plain": []}
    with torch.no_grad():
        for model in (released, plain):
            model.eval()(batch)  # warm-up
        for _ in range(rounds):
            for name, model in (("released", released), ("plain", plain)):
                start = time.perf_counter()
                for _ in range(reps):
                    model(batch)
                times[name].append((time.perf_counter() - start) / reps)
    return statistics.median(times["released"]) / statistics.median(times["plain"])


def _released_size(model: torch.nn.Module) -> tuple[int, int]:
    """(parameters, all stored values: parameters and buffers such as statistics and passports)."""
    parameters = sum(p.numel() for p in model.parameters())
    stored = sum(t.numel() for t in model.state_dict().values())
    return parameters, stored


def _one_run(opts: CompareOptions, scheme: str, seed: int, data, device: torch.device) -> dict[str, Any]:
    out = Path(opts.out) / f"{scheme}-seed{seed}"
    norm = opts.deepipr_v2_norm if scheme == "deepipr-v2" and opts.deepipr_v2_norm else opts.norm
    config = {"in_channels": data.input_shape[0], "num_classes": data.num_classes, "width": opts.width,
              "norm": norm}
    torch.manual_seed(seed)
    model = zoo.build(opts.arch, **config)
    example = data.train.tensors[0][:16]
    include = PLACEMENTS[opts.placement].get(opts.arch)
    options = dict(signature=opts.signature, passports=opts.passports, seed=seed, include=include, weak_layers="skip")
    if scheme == "pan":
        model = protect(model, example, **options)
    elif scheme.startswith("deepipr"):
        model = protect_deepipr(model, example, scheme=scheme.split("-")[1], **options)
    train_config = TrainConfig(epochs=opts.epochs, batch_size=opts.batch_size, lr=opts.lr, schedule=_SCHEDULE[scheme], seed=seed)
    trainer = Trainer(model, data, train_config, out_dir=out, device=device)
    trainer.fit(
        resume=(out / "checkpoint.pt").is_file(), on_epoch=lambda row: print_epoch({"run": out.name, **row})
    )
    model = trainer.model.cpu().eval()
    test = data.test
    result: dict[str, Any] = {"scheme": scheme, "seed": seed, "norm": norm, "history": trainer.history,
                              "seconds_per_epoch": statistics.mean(r["seconds"] for r in trainer.history)}
    if scheme == "plain":
        released = model
    elif scheme == "deepipr-v1":
        released = release_deepipr(model)
        # V1 ships its passports inside the model, so the model itself is what gets verified
        report = verify_attached(copy.deepcopy(released), data=test)
        suspect = copy.deepcopy(released)
    else:
        released = strip(model) if scheme == "pan" else release_deepipr(model)
        key = extract_key(model)
        report = verify(released, key, data=test)
        suspect = attach_key(released, key)
    result["released_accuracy"] = accuracy(released, test)
    if scheme != "plain":
        result.update(verification_accuracy=report.passport_aware_accuracy, signature_detection=report.signature_detection,
                      verified=report.verified, signature_bits=report.signature_bits)
        attacker = attacker_split(data.train, opts.attacker_share, seed)
        forged = forge_flipped_signature(suspect, attacker, flip=opts.flip, epochs=opts.forge_epochs, seed=seed)
        with passport_mode(suspect):
            result["forged_accuracy"] = accuracy(suspect, test)
        result["forged_target_detection"] = forged["target_detection"]
    result["parameters"], result["stored_values"] = _released_size(released)
    plain_twin = zoo.build(opts.arch, **config)
    result["plain_parameters"], result["plain_stored_values"] = _released_size(plain_twin)
    result["inference_ratio"] = _inference_ratio(released, plain_twin, test.tensors[0][:256])
    result["released_architecture_is_plain"] = (
        [type(m).__name__ for m in released.modules()] == [type(m).__name__ for m in plain_twin.modules()]
        and list(released.state_dict()) == list(plain_twin.state_dict())
    )
    write_json_atomic(out / "result.json", result)
    return result


def run_compare(opts: CompareOptions) -> dict[str, Any]:
    """Train and measure every scheme for every seed; writes compare.json and compare.md in ``opts.out``."""
    opts.validate()
    device = resolve_device(opts.device)
    runs: list[dict[str, Any]] = []
    for seed in opts.seeds:
        data = load_dataset(opts.dataset, opts.data_dir, seed=seed, points=opts.points)
        for scheme in opts.schemes:
            done = Path(opts.out) / f"{scheme}-seed{seed}" / "result.json"
            if done.is_file():
                runs.append(json.loads(done.read_text()))
                print(f"{scheme}, seed {seed}: finished earlier ({done})", flush=True)
                continue
            print(f"{scheme}, seed {seed} ...", flush=True)
            runs.append(_one_run(opts, scheme, seed, data, device))
    table = compare_table(runs, opts.schemes)
    summary = {"options": {k: v for k, v in asdict(opts).items()}, "runs": runs, "table": table}
    write_json_atomic(Path(opts.out) / "compare.json", summary)
    write_text_atomic(Path(opts.out) / "compare.md", table + "\n")
    return summary


def _stat(values: list[float], scale: float = 100.0, digits: int = 2, suffix: str = "%") -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    mean = statistics.mean(values) * scale
    if len(values) == 1:
        return f"{mean:.{digits}f}{suffix}"
    return f"{mean:.{digits}f}{suffix} +- {statistics.stdev(values) * scale:.{digits}f}"


def compare_table(runs: list[dict[str, Any]], schemes: tuple[str, ...]) -> str:
    """One markdown row per scheme: means +- standard deviations over seeds; ratios to plain per seed."""
    plain = {r["seed"]: r for r in runs if r["scheme"] == "plain"}
    lines = [
        "| scheme | released acc | verification acc (owner's passports) | signature detection | forged passports acc "
        "(ambiguity II, 10% flipped) | train s/epoch vs plain | released parameters vs plain | stored values vs plain | "
        "inference vs plain | released = plain architecture |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for scheme in schemes:
        rows = [r for r in runs if r["scheme"] == scheme]
        if not rows:
            continue
        time_ratio = [r["seconds_per_epoch"] / plain[r["seed"]]["seconds_per_epoch"] for r in rows if r["seed"] in plain]
        lines.append(
            f"| {scheme} | {_stat([r['released_accuracy'] for r in rows])} | "
            f"{_stat([r.get('verification_accuracy') for r in rows])} | {_stat([r.get('signature_detection') for r in rows])} | "
            f"{_stat([r.get('forged_accuracy') for r in rows])} | {_stat(time_ratio, 1, 2, 'x')} | "
            f"{_stat([r['parameters'] / r['plain_parameters'] for r in rows], 1, 3, 'x')} | "
            f"{_stat([r['stored_values'] / r['plain_stored_values'] for r in rows], 1, 3, 'x')} | "
            f"{_stat([r['inference_ratio'] for r in rows], 1, 2, 'x')} | "
            f"{'yes' if all(r['released_architecture_is_plain'] for r in rows) else 'no'} |"
        )
    return "\n".join(lines)
