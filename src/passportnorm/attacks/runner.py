"""``passportnorm attack NAME``: run one attack on a released model with the owner's key, write its evidence.

Writes ``DIR/result.json`` (every number, the threat model), ``DIR/result.md`` (a table),
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

from ..data import load_dataset
from ..verify import VerdictRule
from ..errors import ConfigError
from ..fileio import write_json_atomic, write_text_atomic
from ..key import OwnerKey
from ..release import load_released, save_released

ATTACKS = (
    "finetune",
    "transfer",
    "prune",
    "obfuscate",
    "ambiguity1",
    "ambiguity2",
    "erb",
    "forge",
    "reprotect",
    "quantize",
    "distill",
    "fine-prune",
    "dummy-neurons",
    "combined",
)


def attacker_split(train, share: float, seed: int) -> Subset:
    if not 0.0 < share <= 1.0:
        raise ConfigError(f"attacker data share {share} must be in (0, 1]")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed + 17))
    return Subset(train, order[: max(1, int(round(share * len(train))))].tolist())


def _plot(path: Path, x: list, series: dict[str, list], xlabel: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for label, values in series.items():
        axis.plot(x, [float("nan") if v is None else v for v in values], marker="o", label=label)
    axis.set_xlabel(xlabel)
    axis.set_ylim(-0.02, 1.02)
    axis.set_title(title)
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


def _listed(options: dict[str, Any], name: str, default: str, kind: type = float) -> list:
    """A comma-separated option as a list (``default`` when not given); a bad entry is one line."""
    text = str(options.get(name) or default)
    try:
        return [kind(part.strip()) for part in text.split(",")]
    except ValueError:
        flag = "--" + name.replace("_", "-")
        raise ConfigError(f"{flag} {text!r} must be comma-separated {kind.__name__} values") from None


def _default_transfer_target(dataset: str, task: str) -> str:
    """Another shipped dataset of the same kind: digits for images, shapes or digit clouds for point clouds."""
    if task == "pointcloud":
        return "mnist5k-points" if dataset == "shapes3d" else "shapes3d"
    return "digits"


def _reprotect(released, key, key_dir, attacker, data, options, out: Path, rule) -> dict[str, Any]:
    """Re-protection with the owner's published certificate (``--certificate``, default: the one
    ``protect`` wrote next to the key) so that the dispute between the two claims is decided too."""
    from .reprotect import reprotect_attack
    from ..certificate import Certificate
    from ..pipeline import DEFAULT_TRIGGER

    given = options.get("certificate")
    path = Path(given) if given else Path(key_dir).parent / "certificate.json"
    certificate = Certificate.load(path) if given or path.is_file() else None
    return reprotect_attack(
        released,
        key,
        certificate,
        attacker,
        data,
        passports=options.get("passports") or "random",
        epochs=int(options.get("epochs") or 2),
        lr=float(options.get("lr") or 0.01),
        seed=int(options.get("seed") or 0) + 77,
        trigger_kind=DEFAULT_TRIGGER[data.task],
        rule=rule,
        checkpoints=out / "thief-checkpoints",
    )


def run_attack(
    name: str, model_dir: str | Path, key_dir: str | Path, out: str | Path, **options: Any
) -> dict[str, Any]:
    """Run attack ``name``; ``options`` are the attack's settings (see ``passportnorm attack --help``)."""
    from . import (
        ambiguity_one,
        ambiguity_two,
        class_split,
        erb_attack,
        finetune,
        forge_attack,
        obfuscation_attack,
        prune_sweep,
        transfer,
    )

    if name not in ATTACKS:
        raise ConfigError(f"unknown attack {name!r}; choose one of {', '.join(ATTACKS)}")
    key = OwnerKey.load(key_dir)
    released, meta = load_released(
        model_dir, trusted_arch=options.get("arch")
    )  # user code runs only when named
    released.eval()
    config = key.config
    seed = int(options.get("seed", 0))
    dataset = options.get("dataset") or config.get("dataset") or meta.get("dataset")
    if dataset is None:
        raise ConfigError("no dataset recorded in the key or the model; pass --dataset")
    points = config.get("points") or None
    data = load_dataset(
        dataset,
        options.get("data_dir") or config.get("data_dir"),
        seed=int(config.get("seed", 0)),
        points=points,
    )
    default_share = 0.1 if name in ("erb", "ambiguity1", "ambiguity2") else 0.5
    share = default_share if options.get("share") is None else float(options["share"])
    attacker = attacker_split(data.train, share, seed)
    example = data.train.tensors[0][:4]
    epochs = int(options.get("epochs") or 5)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    trigger = key.trigger
    rule = VerdictRule(allow_text_signatures=bool(options.get("allow_text_signatures")))
    model = forged_key = thief = None
    plots: list[str] = []

    if name == "finetune":
        mode = options.get("mode") or "ftal"
        result = finetune(
            released,
            key,
            attacker,
            data.test,
            mode=mode,
            epochs=epochs,
            seed=seed,
            trigger=trigger,
            rule=rule,
            checkpoint=out / "checkpoint.pt",
        )
        model, rows = result.pop("model"), result["rows"]
        _plot(
            out / "finetune.png",
            [r["epoch"] for r in rows],
            {
                "attacker accuracy": [r["attacker_accuracy"] for r in rows],
                "signature detection": [r["signature_detection"] for r in rows],
                "passport-aware accuracy": [r["passport_aware_accuracy"] for r in rows],
            },
            "epoch",
            f"fine-tuning ({mode.upper()})",
        )
        plots.append("finetune.png")
    elif name == "transfer":
        classes = options.get("target_classes")
        if classes:
            keep = [int(c) for c in str(classes).split(",")]
            train, test, count, task = (
                class_split(data.train, keep),
                class_split(data.test, keep),
                len(keep),
                f"{dataset} classes {classes}",
            )
        else:
            target_name = options.get("target_dataset") or _default_transfer_target(dataset, data.task)
            target = load_dataset(
                target_name, seed=seed, points=points if data.task == "pointcloud" else None
            )
            train, test, count, task = (
                target.train,
                target.test,
                target.num_classes,
                f"{dataset} -> {target.name}",
            )
        result = transfer(
            released,
            key,
            train,
            test,
            num_classes=count,
            task=task,
            epochs=epochs,
            seed=seed,
            rule=rule,
            checkpoint=out / "checkpoint.pt",
        )
        model, rows = result.pop("model"), result["rows"]
        meta = dict(meta, model_config=dict(meta["model_config"], num_classes=count))
    elif name == "prune":
        rates = _listed(options, "rates", "0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9")
        result = prune_sweep(released, key, data.test, rates=rates, trigger=trigger, rule=rule)
        rows = result["rows"]
        from .prune import prune_model

        model = prune_model(released, rates[-1])
        _plot(
            out / "prune.png",
            [r["rate"] for r in rows],
            {
                "attacker accuracy": [r["attacker_accuracy"] for r in rows],
                "passport-aware accuracy": [r["passport_aware_accuracy"] for r in rows],
                "trigger accuracy": [r["trigger_accuracy"] for r in rows],
                "signature detection": [r["signature_detection"] for r in rows],
            },
            "share of conv/linear weights pruned",
            "global magnitude pruning",
        )
        plots.append("prune.png")
    elif name == "obfuscate":
        result = obfuscation_attack(released, key, data.test, example, seed=seed, trigger=trigger, rule=rule)
        model, rows = (
            result.pop("model"),
            [{k: v for k, v in r.items() if k != "layers_skipped"} for r in result["rows"]],
        )
    elif name == "ambiguity1":
        result = ambiguity_one(released, key, attacker, data.test, epochs=epochs, seed=seed, rule=rule)
        forged_key = result.pop("forged_key")
        rows = [{k: v for k, v in result.items() if k not in ("attack", "threat_model")}]
    elif name == "ambiguity2":
        flips = _listed(options, "flips", "0,0.1,0.25,0.5")
        rows, result = [], {}
        for flip in flips:
            result = ambiguity_two(
                released, key, attacker, data.test, flip=flip, epochs=epochs, seed=seed, rule=rule
            )
            forged_key = result.pop("forged_key")
            rows.append({k: v for k, v in result.items() if k not in ("attack", "threat_model")})
        result = {"attack": "ambiguity2", "threat_model": result["threat_model"], "rows": rows}
        _plot(
            out / "ambiguity2.png",
            flips,
            {
                "forged accuracy": [r["forged_accuracy"] for r in rows],
                "target signature detection": [r["target_detection"] for r in rows],
                "bit dissimilarity to owner": [r["bit_dissimilarity_to_owner"] for r in rows],
            },
            "share of the owner's bits flipped in the target",
            "ambiguity II",
        )
        plots.append("ambiguity2.png")
    elif name == "erb":
        result = erb_attack(
            released,
            key,
            attacker,
            data.test,
            mode=options.get("erb_mode") or "cerb",
            share=share,
            epochs=epochs,
            seed=seed,
        )
        result.pop("model_with_forged_branch")
        rows = [{k: v for k, v in result.items() if k not in ("attack", "threat_model")}]
    elif name == "quantize":
        from .quantize import quantize_attack

        modes = tuple(_listed(options, "quantize", "int8-dynamic,int8-static,fp16", str))
        result = quantize_attack(
            released,
            key,
            data.test,
            attacker.dataset.tensors[0][attacker.indices[:256]],
            modes=modes,
            trigger=trigger,
            rule=rule,
        )
        model, rows = result.pop("model"), result["rows"]
        result["model_is"] = f"the {modes[-1]} model dequantized into the original architecture"
    elif name == "combined":
        from .combined import combined_attack

        steps = tuple(_listed(options, "steps", "prune,finetune,dummy-neurons,obfuscate", str))
        rates = _listed(options, "rates", "0.3,0.5,0.7,0.9")
        result = combined_attack(
            released,
            key,
            attacker,
            data.test,
            example,
            steps=steps,
            rates=rates,
            epochs=epochs,
            lr=float(options.get("lr") or 0.01),
            seed=seed,
            trigger=trigger,
            rule=rule,
        )
        model, rows = result.pop("model"), result["rows"]
        result["model_is"] = f"the chain's result at pruning share {rates[-1]} (verify it with --reference)"
    elif name == "dummy-neurons":
        from .dummy import dummy_neuron_attack

        shares = tuple(_listed(options, "rates", "0.1,0.5"))
        result = dummy_neuron_attack(
            released, key, data.test, example, shares=shares, seed=seed, trigger=trigger, rule=rule
        )
        model, rows = result.pop("model"), result["rows"]
        result["model_is"] = (
            f"the model widened by {shares[-1]:.0%} and obfuscated (verify it with --reference)"
        )
    elif name == "fine-prune":
        from .fineprune import fine_prune

        rates = _listed(options, "rates", "0.2,0.4,0.6,0.8")
        result = fine_prune(
            released,
            key,
            attacker,
            data.test,
            rates=rates,
            epochs=epochs,
            lr=float(options.get("lr") or 0.01),
            seed=seed,
            trigger=trigger,
            rule=rule,
        )
        model, rows = result.pop("model"), result["rows"]
        result["model_is"] = f"the model pruned at {rates[-1]} and fine-tuned"
    elif name == "distill":
        from .distill import distill_attack
        from .. import zoo

        arch = meta["arch"]
        fresh = zoo.build(arch, trust_code=options.get("arch") == arch, **meta.get("model_config", {}))
        result = distill_attack(
            released,
            fresh,
            key,
            attacker,
            data.test,
            arch=arch,
            epochs=int(options.get("epochs") or 10),
            lr=float(options.get("lr") or 0.05),
            seed=seed,
            rule=rule,
            checkpoint=out / "checkpoint.pt",
        )
        model, rows = result.pop("model"), result["rows"]
    elif name == "reprotect":
        result = _reprotect(released, key, key_dir, attacker, data, options, out, rule)
        model, thief, rows = result.pop("model"), result, result["rows"]
    else:  # forge
        result = forge_attack(
            released,
            key,
            data.test,
            example,
            signature=options.get("forge_signature") or "(c) Mallory",
            seed=seed,
            rule=rule,
        )
        forged_key = result.pop("forged_key")
        rows = [
            {
                "forged_verified": result["forged_verified"],
                "forged_decoded_text": result["forged_decoded_text"],
                "forged_signature_detection": result["forged"]["signature_detection"],
                "forged_passport_aware_accuracy": result["forged"]["passport_aware_accuracy"],
                "released_accuracy": result["forged"]["passport_free_accuracy"],
                "bit_dissimilarity_to_owner": result["bit_dissimilarity_to_owner"],
                "signature_mode": result["signature_mode"],
                "hash_rounds": result.get("hash_rounds"),
                "best_agreement": result.get("best_agreement"),
            }
        ]

    if model is not None:
        shapes = {k: v.shape for k, v in released.state_dict().items()}
        reshaped = sorted(
            {k.rpartition(".")[0] for k, v in model.state_dict().items() if shapes.get(k) != v.shape}
        )
        save_released(
            model.eval(),
            out / "model",
            meta["arch"],
            meta["model_config"],
            attack=name,
            attacked_from=str(model_dir),
            **({"reshaped_modules": reshaped} if reshaped else {}),
        )
    if forged_key is not None:
        forged_key.save(out / "forged-key")
    if thief is not None:  # the thief's claim, as `passportnorm dispute --claim` takes it
        thief.pop("thief_key").save(out / "thief-key")
        thief.pop("thief_certificate").save(out / "certificate.json")
    result.setdefault("rows", rows)
    result.update(
        options={k: v for k, v in options.items() if v is not None},
        plots=plots,
        model_folder="model" if model is not None else None,
        forged_key_folder="forged-key" if forged_key is not None else None,
    )
    write_json_atomic(out / "result.json", json.loads(json.dumps(result, default=str)))
    text = [f"# Attack: {result['attack']}", "", f"Threat model: {result['threat_model']}", "", _table(rows)]
    text += [f"\n![{p}]({p})" for p in plots]
    write_text_atomic(out / "result.md", "\n".join(text) + "\n")
    return result
