"""Which norms of the models people use can carry a branch: every torchvision classifier, 51 timm models
and 15 Hugging Face transformers families (small random-init configs, zoo/hf.py).

    python benchmarks/zoo_coverage.py [--docs] [--only NAME ...] [--no-training]

Each model is built with random weights and 10 classes (needs the zoo and hf extras); a language
model reads 16 token ids. Recorded per model:
norm layers, protectable layers, signature bits, the reasons for the rest (grouped), seconds to
protect, and the promises checked on an example input (64x64, or the size a model requires):

- 1: the protected model's outputs equal the original's bit for bit (eval);
- 2: ``strip`` gives back the same module classes, state-dict keys and shapes, and outputs;
- 8: names intact: the protected model keeps every original state-dict key, and each protected
  norm still answers ``model.<norm path>.weight`` as the original norm (parametrize's bar).

With training (default), six models take 100 steps of the alternating schedule on random data
with the CLI's default passports and weak-layer setting (--passports for others): finite losses
and the signature detection reached are recorded; --training-only reruns just those and keeps
the coverage rows already in --out.
Writes runs/bench/zoo-coverage/results.json and, with --docs, docs/COVERAGE.md.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

from _docs import DOCS

import torch
import torch.nn.functional as F

import passportnorm as pn
from passportnorm import zoo
from passportnorm.pairing import is_norm_layer
from passportnorm.pipeline import RunOptions
from passportnorm.protect import protected_layers
from passportnorm.zoo.hf import token_input
from passportnorm.zoo.hub import import_timm, import_torchvision

TIMM = ["resnet18", "resnet50", "efficientnet_b0", "mobilenetv3_small_100", "mobilenetv3_large_100", "regnety_002",
        "regnetx_002", "densenet121", "cspresnet50", "inception_v3", "repvgg_a0", "rexnet_100", "convnext_atto",
        "convnext_tiny", "levit_128s", "vit_tiny_patch16_224", "deit_tiny_patch16_224", "swin_tiny_patch4_window7_224",
        "mixer_b16_224", "resmlp_12_224", "ghostnet_100", "mnasnet_100", "hrnet_w18_small", "dla34", "dpn68", "vgg11_bn",
        "xception41", "tf_efficientnet_b0", "efficientnetv2_rw_t", "nf_resnet26", "coat_lite_tiny", "poolformer_s12",
        "edgenext_xx_small", "mobilevit_xxs", "efficientformer_l1", "tinynet_a", "lcnet_050", "hardcorenas_a",
        "fbnetc_100", "semnasnet_050", "selecsls42b", "res2net50_14w_8s", "resnest14d", "skresnet18",
        "seresnext26d_32x4d", "ecaresnet26t", "gernet_s", "cait_xxs24_224", "pit_ti_224", "xcit_nano_12_p16_224",
        "swinv2_cr_tiny_224"]
HF = ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "olmo2", "phi3", "gpt2", "gpt_neox", "opt",
      "bert", "roberta", "vit"]
TRAINING = ["tv:resnet50", "tv:mobilenet_v3_small", "tv:efficientnet_b0", "tv:convnext_tiny", "timm:efficientnet_b0",
            "timm:hrnet_w18_small"]


def _input_size(name: str, model: torch.nn.Module) -> int:
    """64, unless the model fixes its input size (ViTs, Swin, MaxViT, LeViT ...) or needs a larger one."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if cfg.get("fixed_input_size"):
        return int(cfg["input_size"][-1])
    if name.startswith("tv:") and any(k in name for k in ("vit_", "maxvit", "swin")):
        return 224
    try:
        with torch.no_grad():
            model(torch.randn(2, 3, 64, 64))
        return 64
    except RuntimeError:  # smaller than the model's smallest input (Inception: 75): its own size
        return int(cfg.get("input_size", (3, 299 if "inception" in name else 224))[-1])


def _promises(model: torch.nn.Module, protected: torch.nn.Module, x: torch.Tensor) -> dict[str, bool]:
    with torch.no_grad():
        reference = model(x)
        one = torch.equal(protected(x), reference)
        released = pn.strip(protected)
        two = (torch.equal(released(x), reference)
               and {k: v.shape for k, v in released.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
               and all(type(a) is type(b) for (_, a), (_, b) in zip(released.named_modules(), model.named_modules())))
    original_keys = set(model.state_dict())
    modules = dict(protected.named_modules())
    parameters = dict(protected.named_parameters())
    norms_read = all(modules[path].weight is parameters[f"{path}.weight"] for path in protected_layers(protected))
    classes_kept = all(isinstance(modules[path], type(m)) for path, m in model.named_modules())
    names_kept = {n for n, _ in model.named_parameters()} <= set(parameters)
    eight = original_keys <= set(protected.state_dict()) and norms_read and classes_kept and names_kept
    return {"1": bool(one), "2": bool(two), "8": bool(eight)}


def _group(reason: str) -> str:
    """A reason without its module paths and numbers, so that alike reasons count together."""
    head = reason.split(";")[0]
    parts = head.split("'")
    return "'".join(p if i % 2 == 0 else "..." for i, p in enumerate(parts))[:140]


def _row(name: str) -> dict[str, Any]:
    row: dict[str, Any] = {"model": name}
    try:
        torch.manual_seed(0)
        model = zoo.build(name, in_channels=3, num_classes=10, **zoo.size_options(name, (3, 64, 64))).eval()
        text = zoo.model_task(name) == "text"
        size = 16 if text else _input_size(name, model)
        x = token_input(2, size) if text else torch.randn(2, 3, size, size)
        row.update(input=size, parameters=sum(p.numel() for p in model.parameters()),
                   norms=sum(1 for path, m in model.named_modules() if path and is_norm_layer(m)))
        report = pn.find_pairs(model, x)
        row.update(protectable=len(report.pairs), bits=report.capacity,
                   crossed=sum(1 for p in report.pairs if p.crossed),
                   reasons=dict(collections.Counter(_group(u.reason) for u in report.unprotectable)))
        if report.pairs:
            started = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                protected = pn.protect(model, x, signature="(c) coverage", seed=0).eval()
            row["protect_seconds"] = time.perf_counter() - started
            row["promises"] = _promises(model, protected, x)
    except Exception as error:  # a crash is a result: recorded, never hidden
        row["crash"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
        row["traceback"] = traceback.format_exc(limit=3)
    return row


def _train(name: str, steps: int, passports: str) -> dict[str, Any]:
    """The alternating schedule on random data with one passport kind: finite? signature reached?"""
    torch.manual_seed(0)
    model = zoo.build(name, in_channels=3, num_classes=10)
    images, labels = torch.randn(64, 3, 64, 64), torch.randint(0, 10, (64,))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        weak_layers = RunOptions().weak_layers
        try:
            protected = pn.protect(model, images[:16], signature="(c) train", seed=0, passports=passports,
                                   weak_layers=weak_layers)
        except pn.NothingToProtectError:  # only weak layers (ConvNeXt: depthwise convs): what the error tells users
            weak_layers = "protect"
            protected = pn.protect(model, images[:16], signature="(c) train", seed=0, passports=passports,
                                   weak_layers=weak_layers)
    optimizer = torch.optim.SGD(protected.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    protected.train()
    losses, detection = [], None
    for step in range(steps):
        batch = torch.randint(0, 64, (16,))
        x, y = images[batch], labels[batch]
        for aware in (False, True):
            with pn.passport_mode(protected, enabled=aware):
                loss = F.cross_entropy(protected(x), y)
                if aware:
                    loss = loss + pn.sign_loss(protected)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            break
    detection = pn.signature_detection(protected).rate
    return {"model": name, "passports": passports, "weak_layers": weak_layers, "steps": step + 1, "finite": all(math.isfinite(v) for v in losses),
            "first_aware_loss": losses[1], "last_aware_loss": losses[-1], "detection": detection,
            "bits": pn.capacity(protected), "warnings": sorted({str(w.message)[:120] for w in caught})}


def _markdown(rows: list[dict], training: list[dict], command: str) -> str:
    def promises(row):
        got = row.get("promises")
        return "-" if got is None else " ".join(f"{k}{'✓' if v else '✗'}" for k, v in got.items())

    lines = [f"Command: `{command}` (random init, 10 classes, batch of 2 at 64x64 or the size a model fixes; "
             "promises: 1 protected = original bit for bit, 2 strip = original classes, keys and outputs, "
             "8 original state-dict keys kept and `model.<norm>.weight` readable)", ""]
    titles = {"tv": "torchvision", "timm": "timm", "hf": "Hugging Face transformers (input: 16 token ids; ViT 64x64)"}
    for source in titles:
        part = [r for r in rows if r["model"].startswith(source + ":")]
        with_norms = [r for r in part if r.get("norms")]
        covered = [r for r in with_norms if r.get("protectable")]
        crashes = [r for r in part if "crash" in r]
        holding = {k: sum(1 for r in covered if r.get("promises", {}).get(k)) for k in ("1", "2", "8")}
        lines += [f"### {titles[source]}: {len(part)} models", "",
                  f"{len(covered)} of {len(with_norms)} models with norm layers have at least one protectable layer; "
                  f"{len(crashes)} crashed; among the covered, promise 1 holds on {holding['1']}, promise 2 on "
                  f"{holding['2']}, promise 8 on {holding['8']}.", "",
                  "| model | norms | protectable | bits | protect s | promises | main reason for the rest |",
                  "|---|---:|---:|---:|---:|---|---|"]
        for r in part:
            if "crash" in r:
                lines.append(f"| {r['model']} | - | - | - | - | - | **crash**: {r['crash']} |")
                continue
            reason = max(r["reasons"].items(), key=lambda kv: kv[1]) if r["reasons"] else None
            reason_text = f"{reason[1]}x {reason[0]}" if reason else ""
            seconds = f"{r['protect_seconds']:.1f}" if "protect_seconds" in r else "-"
            lines.append(f"| {r['model']} | {r['norms']} | {r['protectable']} | {r['bits']} | {seconds} | "
                         f"{promises(r)} | {reason_text} |")
        lines.append("")
    if training:
        lines += [f"### {training[0].get('steps', 100)} alternating steps on random data", "",
                  f"The CLI's defaults: `{RunOptions().passports}` passports, weak layers `{RunOptions().weak_layers}` "
                  "(producers reading at most 3 channels per output channel: the RGB stem, depthwise convs). SGD lr 0.01, "
                  "momentum 0.9, batch 16 of 64 random 64x64 images with random labels (the task loss cannot fall: only "
                  "the signature can be learnt).",
                  "", "| model | passports | bits | steps | finite | aware loss (task + sign), first step | last | detection |",
                  "|---|---|---:|---:|---|---:|---:|---:|"]
        for t in training:
            if "crash" in t and t["crash"].startswith("NothingToProtectError"):
                lines.append(f"| {t['model']} | {t.get('passports', '')} | 0 | - | no protectable layer: nothing to train | | | |")
                continue
            if "crash" in t:
                lines.append(f"| {t['model']} | {t.get('passports', '')} | - | - | **crash**: {t['crash']} | | | |")
                continue
            weak = " (weak layers protected: no other)" if t.get("weak_layers") == "protect" else ""
            lines.append(f"| {t['model']}{weak} | {t['passports']} | {t['bits']} | {t['steps']} | {'yes' if t['finite'] else '**no**'} | "
                         f"{t['first_aware_loss']:.3g} | {t['last_aware_loss']:.3g} | {t['detection']:.1%} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", help="model names (tv:NAME, timm:NAME) instead of the full list")
    parser.add_argument("--no-training", action="store_true")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--passports", nargs="+", default=[RunOptions().passports], help="passport kinds to train with")
    parser.add_argument("--training-only", action="store_true", help="train the six models; keep the coverage rows "
                        "of the results.json in --out")
    parser.add_argument("--out", default="runs/bench/zoo-coverage")
    parser.add_argument("--docs", action="store_true", help="write docs/COVERAGE.md")
    parser.add_argument("--render", action="store_true", help="write docs/COVERAGE.md from the results.json in --out")
    parser.add_argument("--update", nargs="+", metavar="NAME", help="recompute these models' coverage rows in the "
                        "results.json in --out (after a fix), keep everything else, and render the docs")
    args = parser.parse_args()
    if args.render or args.update:
        stored = json.loads((Path(args.out) / "results.json").read_text())
        if args.update:
            import_torchvision(), import_timm()
            fresh = {name: _row(name) for name in args.update}
            stored["models"] = [fresh.pop(r["model"], r) for r in stored["models"]] + list(fresh.values())
            (Path(args.out) / "results.json").write_text(json.dumps(stored, indent=1))
        _write_docs(stored["models"], stored["training"])
        return
    tv = import_torchvision()
    import_timm()
    names = args.only or [f"tv:{n}" for n in tv.models.list_models(module=tv.models)] + [f"timm:{n}" for n in TIMM] + [
        f"hf:{n}" for n in HF]
    if args.training_only:
        names, rows = [], json.loads((Path(args.out) / "results.json").read_text())["models"]
    else:
        rows = []
    for number, name in enumerate(names, 1):
        rows.append(_row(name))
        r = rows[-1]
        print(f"[{number}/{len(names)}] {name}: " + (r.get("crash") or f"{r['protectable']}/{r['norms']} norms, "
              f"{r['bits']} bits, promises {r.get('promises')}"), flush=True)
    training = []
    if not args.no_training and not args.only:
        for name in TRAINING:
            for passports in args.passports:
                try:
                    training.append(_train(name, args.steps, passports))
                except Exception as error:
                    training.append({"model": name, "passports": passports,
                                     "crash": f"{type(error).__name__}: {str(error)[:200]}"})
                print(f"trained {name} ({passports}): {training[-1]}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"models": rows, "training": training}, indent=1))
    if args.docs:
        _write_docs(rows, training)


def _write_docs(rows: list[dict], training: list[dict]) -> None:
    command = "python benchmarks/zoo_coverage.py --docs"
    text = ("# Coverage: the models people use\n\n"
            "Generated by the command below; do not edit by hand. Progress on issues 16 and 34 is measured here.\n\n"
            + _markdown(rows, training, command) + "\n")
    (DOCS / "COVERAGE.md").write_text(text)


if __name__ == "__main__":
    main()
