"""``passportnorm attack NAME``: run one attack on a released model with the owner's key, write its evidence.

Writes ``DIR/result.json`` (every number, the threat model, what the attack cost the attacker
(cost.py) and, per row, whether it removed the proof by the field's rule (removal.py)),
``DIR/result.md`` (a table),
PNG plots where the attack has a curve, ``DIR/model/`` for attacks that produce a model (a
released-model folder) and ``DIR/forged-key/`` for attacks that produce a forged claim (a key
folder), so that ``passportnorm verify`` can be pointed at either.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset

from ..data.registry import recorded_dataset
from ..errors import ConfigError
from ..evaluation import accuracy
from ..fileio import write_json_atomic, write_text_atomic
from ..key import OwnerKey
from ..release import load_model_like, load_released, save_released
from .cost import AttackCost, ReadCounter, timed
from .registry import ATTACKS, Attack, AttackContext, AttackResult, Plot
from .removal import MAX_ACCURACY_LOSS, judge_removals

__all__ = ["ATTACKS", "attacker_split", "record", "run_attack"]


def attacker_split(train, share: float, seed: int) -> Subset:
    if not 0.0 < share <= 1.0:
        raise ConfigError(f"attacker data share {share} must be in (0, 1]")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed + 17))
    return Subset(train, order[: max(1, int(round(share * len(train))))].tolist())


def _plot(path: Path, plot: Plot) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for label, values in plot.series.items():
        axis.plot(plot.x, [float("nan") if v is None else v for v in values], marker="o", label=label)
    axis.set_xlabel(plot.xlabel)
    axis.set_ylim(-0.02, 1.02)
    axis.set_title(plot.title)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _table(rows: list[dict[str, Any]]) -> str:
    columns = list(rows[0])
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else ("-" if v is None else str(v))  # noqa: E731
    return "\n".join(
        ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        + ["| " + " | ".join(fmt(row[c]) for c in columns) + " |" for row in rows]
    )


def _context(
    attack: Attack, settings: dict[str, Any], model_dir: Path, key_dir: Path, out: Path
) -> AttackContext:
    """The released model (user code runs only when named), the key, the data and the attacker's share."""
    key = OwnerKey.load(key_dir)
    released, meta = load_released(model_dir, trusted_arch=settings["arch"])
    released.eval()
    if settings["ancestor"]:
        key = key.with_ancestor(load_model_like(settings["ancestor"], released, settings["arch"]))
    data = recorded_dataset(
        key.config,
        settings["dataset"],
        settings["data_dir"],
        fallback=meta,
        missing="no dataset recorded in the key or the model; pass --dataset",
    )
    attacker = ReadCounter(attacker_split(data.train, settings["share"], settings["seed"]))
    out.mkdir(parents=True, exist_ok=True)
    return AttackContext(attack.name, released, meta, key, key_dir, model_dir, data, attacker, out, settings)


def run_attack(
    name: str, model_dir: str | Path, key_dir: str | Path, out: str | Path, **options: Any
) -> AttackResult:
    """Run attack ``name``; ``options`` are its settings (``passportnorm attack NAME --help``), checked
    before anything is loaded."""
    attack = ATTACKS[name]
    settings = attack.settings({k: v for k, v in options.items() if v is not None})
    context = _context(attack, settings, Path(model_dir), Path(key_dir), Path(out))
    result, seconds, measuring = timed(lambda: attack.run(context))
    read = len(context.attacker.read) if isinstance(context.attacker, ReadCounter) else 0
    samples = int(result.numbers.pop("attacker_samples", read))
    result.cost = AttackCost(seconds - measuring, measuring, samples)
    if result.removal_applies:
        result.original_accuracy = accuracy(context.released, context.data.test)
        for rows in (result.rows, result.table_rows or []):
            judge_removals(result.original_accuracy, rows)
    _write(result, context, options)
    return result


def _write(result: AttackResult, context: AttackContext, options: dict[str, Any]) -> None:
    """result.json, result.md, the plots, and what the attack produced, each where verify or dispute
    takes it."""
    out, meta = context.out, context.meta
    if result.model is not None:
        shapes = {k: v.shape for k, v in context.released.state_dict().items()}
        reshaped = sorted(
            {k.rpartition(".")[0] for k, v in result.model.state_dict().items() if shapes.get(k) != v.shape}
        )
        config = dict(meta["model_config"])
        if result.num_classes is not None:
            config["num_classes"] = result.num_classes
        save_released(
            result.model.eval(),
            out / "model",
            meta["arch"],
            config,
            attack=context.name,
            attacked_from=str(context.model_dir),
            **({"reshaped_modules": reshaped} if reshaped else {}),
        )
    if result.forged_key is not None:
        result.forged_key.save(out / "forged-key")
    if result.thief_claim is not None:  # the thief's claim, as `passportnorm dispute --claim` takes it
        thief_key, thief_certificate = result.thief_claim
        thief_key.save(out / "thief-key")
        thief_certificate.save(out / "certificate.json")
    for plot in result.plots:
        _plot(out / plot.file, plot)
    write_json_atomic(out / "result.json", json.loads(json.dumps(record(result, options), default=str)))
    text = [
        f"# Attack: {result.attack}",
        "",
        f"Threat model: {result.threat_model}",
        "",
        _table(result.table_rows or result.rows),
        *_cost_lines(result),
    ]
    text += [f"\n![{p.file}]({p.file})" for p in result.plots]
    write_text_atomic(out / "result.md", "\n".join(text) + "\n")


def _cost_lines(result: AttackResult) -> list[str]:
    """What the attack cost and how the removal rule reads (removal.py, cost.py), under the table."""
    lines = [""]
    if result.cost is not None:
        cost = result.cost
        lines.append(
            f"Attacker's cost: {cost.attacker_seconds:.1f} s of its own work "
            f"({cost.evaluation_seconds:.1f} s of measuring left out), "
            f"{cost.attacker_samples} training samples read."
        )
    if result.original_accuracy is not None:
        lines.append(
            f"removed: the field's removal rule (the owner's proof gone and the attacker within "
            f"{100 * MAX_ACCURACY_LOSS:.0f} points of the release's {100 * result.original_accuracy:.1f}%)."
        )
    return lines if len(lines) > 1 else []


def record(result: AttackResult, options: dict[str, Any]) -> dict[str, Any]:
    """What result.json holds: the result, the options as given, and the files beside it."""
    return dict(
        result.to_dict(),
        options={k: v for k, v in options.items() if v is not None},
        plots=[plot.file for plot in result.plots],
        model_folder="model" if result.model is not None else None,
        forged_key_folder="forged-key" if result.forged_key is not None else None,
    )
