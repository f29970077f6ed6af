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

import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from .. import zoo
from ..attacks.ambiguity import forge_flipped_signature
from ..attacks.runner import attacker_split
from ..choices import NormKind, PassportKind, check_choices, words
from ..data import load_dataset
from ..device import resolve_device
from ..errors import ConfigError
from ..evaluation import accuracy
from ..fileio import save_tensors, write_json_atomic, write_text_atomic
from ..option_checks import Range, check_ranges, typed_values
from ..passports import PASSPORT_KINDS
from ..progress import print_epoch
from ..protect import passport_mode
from ..train import TrainConfig, Trainer
from ..weights import load_weights
from ..zoo.norms import NORM_KINDS
from .deepipr import DeepIPRPassports
from .schemes import COMPARE_SCHEMES, SCHEMES

__all__ = ["COMPARE_SCHEMES", "PLACEMENTS", "CompareOptions", "run_compare", "compare_table", "scheme_recipe"]

# which norms carry passports: all of them, or DeepIPR's choice (AlexNet's last 3 convs, ResNet18's layer4)
PLACEMENTS = {
    "all": {},
    "deepipr": {"alexnet": ["features.9", "features.12", "features.15"], "resnet18": ["layer4.*"]},
}
# what a scheme's recipe sets: the optimiser and its schedule (TrainConfig's names), the training
# schedule of the two branches, the norm of every layer, and the passports
OPTIMISER_FIELDS = (
    "optimizer",
    "lr",
    "momentum",
    "weight_decay",
    "lr_schedule",
    "lr_milestones",
    "lr_step",
    "lr_gamma",
)
RECIPE_FIELDS = (*OPTIMISER_FIELDS, "schedule", "norm", "passports")
# DeepIPR's shuffle passports (DeepIPRPassports) from the seed's trained plain model and held-out images
PRETRAINED = "pretrained"
PLAIN_WEIGHTS = "model.safetensors"
DeepIPRRecipe = Literal["authors", "shared"]
DEEPIPR_RECIPES = words(DeepIPRRecipe)
Placement = Literal["all", "deepipr"]


def authors_deepipr_recipe(scheme: str, epochs: int) -> dict[str, Any]:
    """DeepIPR as its authors train it (kamwoh/DeepIPR): SGD 0.01, momentum 0.9, weight decay 1e-4,
    the rate x0.1 at half and three quarters of training (their 100 and 150 of 200 epochs), V2 on
    GroupNorm and V1 on BatchNorm, passports from a pretrained plain model."""
    milestones = tuple(sorted({m for m in (epochs // 2, epochs * 3 // 4) if 0 < m < epochs}))
    return {
        "optimizer": "sgd",
        "lr": 0.01,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "lr_schedule": "multistep",
        "lr_milestones": milestones,
        "lr_gamma": 0.1,
        "norm": "gn" if scheme == "deepipr-v2" else "bn",
        "passports": PRETRAINED,
    }


COMPARE_RANGES = {
    "points": Range(1),
    "width": Range(0, open_low=True, why="the model's channel multiplier, e.g. 0.25"),
    "epochs": Range(1),
    "batch_size": Range(1),
    "lr": Range(0, open_low=True),
    "passport_images": Range(1),
    "flip": Range(0, high=1, why="the share of passport values the forger changes"),
    "forge_epochs": Range(0),
    "attacker_share": Range(0, open_low=True, high=1.0000001, why="a share of the training split"),
}


@dataclass
class CompareOptions:
    dataset: str = "mnist5k"
    data_dir: str | None = None
    points: int | None = None
    arch: str = "resnet18"
    width: float = 0.25
    norm: NormKind = "bn"
    schemes: tuple[str, ...] = COMPARE_SCHEMES
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 8
    batch_size: int = 64
    lr: float = 0.05  # the shared recipe: SGD with momentum 0.9, weight decay 5e-4, cosine decay
    deepipr: DeepIPRRecipe = "authors"  # DeepIPR's own recipe, norms and passports; "shared": the shared ones
    recipes: dict[str, dict[str, Any]] = field(default_factory=dict)  # per scheme, replaces the above
    placement: Placement = "all"
    passports: PassportKind | Literal["pretrained"] = "shuffle"
    passport_images: int = 20  # held-out test inputs that pretrained passports are built from
    signature: str = "(c) passportnorm owner"
    flip: float = 0.1
    forge_epochs: int = 3
    attacker_share: float = 0.1
    device: str = "auto"
    out: str = "runs/compare"

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> CompareOptions:
        """Options from a config file or flags: ``seeds`` may be a count, ``schemes`` a comma list."""
        values = {k.replace("-", "_"): v for k, v in values.items()}
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(
                f"unknown compare option {unknown[0]!r}; known: {', '.join(cls.__dataclass_fields__)}"
            )
        if isinstance(values.get("seeds"), int):
            values["seeds"] = tuple(range(values["seeds"]))
        if isinstance(values.get("schemes"), str):
            values["schemes"] = tuple(s.strip() for s in values["schemes"].split(",") if s.strip())
        for name in ("seeds", "schemes"):
            if name in values:
                values[name] = tuple(values[name])
        options = cls(**typed_values(cls, values))
        check_ranges(options, COMPARE_RANGES)
        return options

    def validate(self) -> None:
        unknown = [s for s in self.schemes if s not in COMPARE_SCHEMES]
        if unknown or not self.schemes:
            raise ConfigError(
                f"unknown scheme {unknown[0] if unknown else '(none)'!r}; "
                f"choose from {', '.join(COMPARE_SCHEMES)}"
            )
        check_choices(self)
        if self.placement != "all" and self.arch not in PLACEMENTS[self.placement]:
            raise ConfigError(
                f"placement {self.placement!r} is defined for {', '.join(PLACEMENTS[self.placement])}, "
                f"not {self.arch!r}; use --placement all"
            )
        if not self.seeds:
            raise ConfigError("compare needs at least one seed")
        self._validate_recipes()

    def _validate_recipes(self) -> None:
        for scheme, recipe in self.recipes.items():
            if scheme not in COMPARE_SCHEMES or not isinstance(recipe, dict):
                raise ConfigError(
                    f"recipes: {scheme!r} is not a scheme with a mapping of settings; "
                    f"schemes are {', '.join(COMPARE_SCHEMES)}"
                )
            unknown = sorted(set(recipe) - set(RECIPE_FIELDS))
            if unknown:
                raise ConfigError(
                    f"recipes.{scheme}: unknown setting {unknown[0]!r}; known: {', '.join(RECIPE_FIELDS)}"
                )
        for scheme in self.schemes:
            recipe = scheme_recipe(self, scheme)
            if recipe["norm"] not in NORM_KINDS:
                raise ConfigError(
                    f"{scheme}: norm {recipe['norm']!r} is not a norm; choose one of {', '.join(NORM_KINDS)}"
                )
            if recipe["passports"] not in (*PASSPORT_KINDS, PRETRAINED):
                raise ConfigError(
                    f"{scheme}: passports {recipe['passports']!r}; choose "
                    f"{', '.join((*PASSPORT_KINDS, PRETRAINED))}"
                )
            _train_config(self, scheme, 0).validate()


def scheme_recipe(opts: CompareOptions, scheme: str) -> dict[str, Any]:
    """Everything that decides how ``scheme`` trains: the shared recipe, DeepIPR's own where
    ``opts.deepipr`` is "authors", then what ``opts.recipes`` sets for the scheme."""
    shared = TrainConfig(lr=opts.lr)  # the CLI's optimiser: SGD, momentum 0.9, weight decay 5e-4, cosine
    recipe: dict[str, Any] = {name: getattr(shared, name) for name in OPTIMISER_FIELDS}
    recipe.update(schedule=SCHEMES[scheme].schedule, norm=opts.norm, passports=opts.passports)
    if scheme.startswith("deepipr") and opts.deepipr == "authors":
        recipe.update(authors_deepipr_recipe(scheme, opts.epochs))
    recipe.update(opts.recipes.get(scheme, {}))
    recipe["lr_milestones"] = tuple(recipe["lr_milestones"])
    return recipe


def describe_recipe(scheme: str, recipe: dict[str, Any], epochs: int, batch_size: int) -> str:
    """One line a reader can rerun from: optimiser, rate schedule, branch schedule, norm, passports."""
    optimiser = (
        f"SGD lr {recipe['lr']:g} momentum {recipe['momentum']:g}"
        if recipe["optimizer"] == "sgd"
        else f"Adam lr {recipe['lr']:g}"
    )
    milestones = ", ".join(map(str, recipe["lr_milestones"]))
    rate = {
        "cosine": "cosine decay to 0",
        "multistep": f"x{recipe['lr_gamma']:g} at epochs {milestones or '(none)'}",
        "step": f"x{recipe['lr_gamma']:g} every {recipe['lr_step']} epochs",
    }[recipe["lr_schedule"]]
    branches = "" if scheme == "plain" else f"; {recipe['schedule']} steps; {recipe['passports']} passports"
    return (
        f"{optimiser}, weight decay {recipe['weight_decay']:g}, {rate}; batch {batch_size}, {epochs} epochs; "
        f"norm {recipe['norm']}{branches}"
    )


def _train_config(opts: CompareOptions, scheme: str, seed: int) -> TrainConfig:
    recipe = scheme_recipe(opts, scheme)
    return TrainConfig(
        epochs=opts.epochs,
        batch_size=opts.batch_size,
        seed=seed,
        schedule=recipe["schedule"],
        **{name: recipe[name] for name in OPTIMISER_FIELDS},
    )


def _inference_ratio(
    released: torch.nn.Module, plain: torch.nn.Module, batch: torch.Tensor, rounds: int = 5, reps: int = 5
) -> float:
    """Median forward time of ``released`` over that of an untrained plain model of the same
    architecture (speed does not depend on the weights), interleaved round by round."""
    times: dict[str, list[float]] = {"released": [], "plain": []}
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


def _passports(opts: CompareOptions, recipe: dict[str, Any], seed: int, data):
    """The scheme's passports: a kind by name, or DeepIPR's from this seed's trained plain model run
    on ``passport_images`` held-out test inputs drawn with the seed (the authors draw 20)."""
    if recipe["passports"] != PRETRAINED:
        return recipe["passports"]
    weights = Path(opts.out) / f"plain-seed{seed}" / PLAIN_WEIGHTS
    if not weights.is_file():
        raise ConfigError(
            f"pretrained passports need the plain run's {weights}; delete {weights.parent} to retrain it"
        )
    pretrained = zoo.build(opts.arch, **_model_config(opts, data, scheme_recipe(opts, "plain")["norm"]))
    load_weights(pretrained, weights)
    test_inputs = data.test.tensors[0]
    picks = torch.randperm(len(test_inputs), generator=torch.Generator().manual_seed(seed))[
        : opts.passport_images
    ]
    return DeepIPRPassports(inputs=test_inputs[picks], model=pretrained.eval())


def _one_run(opts: CompareOptions, scheme: str, seed: int, data, device: torch.device) -> dict[str, Any]:
    out = Path(opts.out) / f"{scheme}-seed{seed}"
    recipe = scheme_recipe(opts, scheme)
    config = _model_config(opts, data, recipe["norm"])
    torch.manual_seed(seed)
    model = zoo.build(opts.arch, **config)
    example = data.train.tensors[0][:16]
    include = PLACEMENTS[opts.placement].get(opts.arch)
    options = dict(
        signature=opts.signature,
        passports=_passports(opts, recipe, seed, data),
        seed=seed,
        include=include,
        weak_layers="skip",
    )
    model = SCHEMES[scheme].wrap(model, example, **options)
    trainer = Trainer(model, data, _train_config(opts, scheme, seed), out_dir=out, device=device)
    trainer.fit(
        resume=(out / "checkpoint.pt").is_file(), on_epoch=lambda row: print_epoch({"run": out.name, **row})
    )
    model = trainer.model.cpu().eval()
    test = data.test
    result: dict[str, Any] = {
        "scheme": scheme,
        "seed": seed,
        "norm": recipe["norm"],
        "history": trainer.history,
        "recipe": _as_recorded(recipe),
        "recipe_text": describe_recipe(scheme, recipe, opts.epochs, opts.batch_size),
        "seconds_per_epoch": statistics.mean(r["seconds"] for r in trainer.history),
    }
    if scheme == "plain":
        save_tensors(model.state_dict(), out / PLAIN_WEIGHTS)  # DeepIPR's pretrained passports come from it
    released, report, suspect = SCHEMES[scheme].release(model, test)
    result["released_accuracy"] = accuracy(released, test)
    if report is not None and suspect is not None:
        result.update(
            verification_accuracy=report.passport_aware_accuracy,
            signature_detection=report.signature_detection,
            verified=report.verified,
            signature_bits=report.signature_bits,
        )
        attacker = attacker_split(data.train, opts.attacker_share, seed)
        forged = forge_flipped_signature(
            suspect, attacker, flip=opts.flip, epochs=opts.forge_epochs, seed=seed
        )
        with passport_mode(suspect):
            result["forged_accuracy"] = accuracy(suspect, test)
        result["forged_target_detection"] = forged["target_detection"]
    result["parameters"], result["stored_values"] = _released_size(released)
    plain_twin = zoo.build(opts.arch, **config)
    result["plain_parameters"], result["plain_stored_values"] = _released_size(plain_twin)
    result["inference_ratio"] = _inference_ratio(released, plain_twin, test.tensors[0][:256])
    result["released_architecture_is_plain"] = [type(m).__name__ for m in released.modules()] == [
        type(m).__name__ for m in plain_twin.modules()
    ] and list(released.state_dict()) == list(plain_twin.state_dict())
    write_json_atomic(out / "result.json", result)
    return result


def run_compare(opts: CompareOptions) -> dict[str, Any]:
    """Train and measure every scheme for every seed; writes compare.json and compare.md in ``opts.out``."""
    opts.validate()
    device = resolve_device(opts.device)
    runs: list[dict[str, Any]] = []
    for seed in opts.seeds:
        data = load_dataset(opts.dataset, opts.data_dir, seed=seed, points=opts.points)
        if seed == opts.seeds[0]:
            _check_norms(opts, data)
        for scheme in _run_order(opts):
            done = Path(opts.out) / f"{scheme}-seed{seed}" / "result.json"
            if done.is_file():
                runs.append(_finished(opts, scheme, done))
                print(f"{scheme}, seed {seed}: finished earlier ({done})", flush=True)
                continue
            print(f"{scheme}, seed {seed} ...", flush=True)
            runs.append(_one_run(opts, scheme, seed, data, device))
    table = compare_table(runs, opts.schemes) + "\n\n" + recipes_text(opts)
    summary = {"options": {k: v for k, v in asdict(opts).items()}, "runs": runs, "table": table}
    write_json_atomic(Path(opts.out) / "compare.json", summary)
    write_text_atomic(Path(opts.out) / "compare.md", table + "\n")
    return summary


def _model_config(opts: CompareOptions, data, norm: str) -> dict[str, Any]:
    shape = {"in_channels": data.input_shape[0], "num_classes": data.num_classes}
    return {**shape, "width": opts.width, "norm": norm}


def _as_recorded(recipe: dict[str, Any]) -> dict[str, Any]:
    """The recipe as result.json holds it (JSON has lists, not tuples)."""
    return {**recipe, "lr_milestones": list(recipe["lr_milestones"])}


def _finished(opts: CompareOptions, scheme: str, path: Path) -> dict[str, Any]:
    """A finished run, reused only when it was trained as this comparison would train it."""
    run = json.loads(path.read_text())
    recipe = scheme_recipe(opts, scheme)
    wanted = {**_as_recorded(recipe), "epochs": opts.epochs}
    found = {**run.get("recipe", {}), "epochs": len(run.get("history", []))}
    changed = sorted(k for k in wanted if found.get(k) != wanted[k])
    if changed:
        raise ConfigError(
            f"{path.parent} was trained with other settings ({', '.join(changed)}); give another --out or "
            "delete that folder to retrain it"
        )
    return run


_NORM_CLASSES = {
    "bn": torch.nn.modules.batchnorm._BatchNorm,
    "gn": torch.nn.GroupNorm,
    "in": torch.nn.modules.instancenorm._InstanceNorm,
}


def _check_norms(opts: CompareOptions, data) -> None:
    """Every scheme's model really has the norm its recipe names: torchvision, timm and the user's
    own models keep their own norms, so a recipe's ``norm`` cannot change them."""
    for scheme in _run_order(opts):
        norm = scheme_recipe(opts, scheme)["norm"]
        model = zoo.build(opts.arch, **_model_config(opts, data, norm))
        kinds = {type(m).__name__ for m in model.modules() if isinstance(m, tuple(_NORM_CLASSES.values()))}
        if kinds and not any(isinstance(m, _NORM_CLASSES[norm]) for m in model.modules()):
            raise ConfigError(
                f"{opts.arch} keeps its own norms ({', '.join(sorted(kinds))}), so {scheme}'s norm {norm!r} "
                f"cannot apply; use a zoo model (resnet18, alexnet) or set recipes.{scheme}.norm (or "
                "--deepipr shared)"
            )


def _run_order(opts: CompareOptions) -> list[str]:
    """The requested schemes, plain first and added when pretrained passports need its model."""
    pretrained = any(scheme_recipe(opts, s)["passports"] == PRETRAINED for s in opts.schemes)
    return ["plain"] * ("plain" in opts.schemes or pretrained) + [s for s in opts.schemes if s != "plain"]


def recipes_text(opts: CompareOptions) -> str:
    """The recipe of each row, one line per scheme, for the table's reader."""
    return (
        "Recipes: "
        + "; ".join(
            f"**{s}**: {describe_recipe(s, scheme_recipe(opts, s), opts.epochs, opts.batch_size)}"
            for s in opts.schemes
        )
        + "."
    )


def _stat(
    values: list[float | None] | list[float], scale: float = 100.0, digits: int = 2, suffix: str = "%"
) -> str:
    measured = [v for v in values if v is not None]
    if not measured:
        return "-"
    mean = statistics.mean(measured) * scale
    if len(measured) == 1:
        return f"{mean:.{digits}f}{suffix}"
    return f"{mean:.{digits}f}{suffix} +- {statistics.stdev(measured) * scale:.{digits}f}"


def compare_table(runs: list[dict[str, Any]], schemes: tuple[str, ...]) -> str:
    """One markdown row per scheme: means +- standard deviations over seeds; ratios to plain per seed."""
    plain = {r["seed"]: r for r in runs if r["scheme"] == "plain"}
    lines = [
        "| scheme | released acc | verification acc (owner's passports) | signature detection | "
        "forged passports acc (ambiguity II, 10% flipped) | train s/epoch vs plain | "
        "released parameters vs plain | stored values vs plain | "
        "inference vs plain | released = plain architecture |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for scheme in schemes:
        rows = [r for r in runs if r["scheme"] == scheme]
        if not rows:
            continue
        time_ratio = [
            r["seconds_per_epoch"] / plain[r["seed"]]["seconds_per_epoch"] for r in rows if r["seed"] in plain
        ]
        lines.append(
            f"| {scheme} | {_stat([r['released_accuracy'] for r in rows])} | "
            f"{_stat([r.get('verification_accuracy') for r in rows])} | "
            f"{_stat([r.get('signature_detection') for r in rows])} | "
            f"{_stat([r.get('forged_accuracy') for r in rows])} | {_stat(time_ratio, 1, 2, 'x')} | "
            f"{_stat([r['parameters'] / r['plain_parameters'] for r in rows], 1, 3, 'x')} | "
            f"{_stat([r['stored_values'] / r['plain_stored_values'] for r in rows], 1, 3, 'x')} | "
            f"{_stat([r['inference_ratio'] for r in rows], 1, 2, 'x')} | "
            f"{'yes' if all(r['released_architecture_is_plain'] for r in rows) else 'no'} |"
        )
    return "\n".join(lines)
