"""No false "verified": every owner key against every independently trained model, in every flag combination.

    python benchmarks/false_positives.py [--arch resnet18] [--owners 20] [--plain 20] [--epochs 8] [--docs]

Trains ``--owners`` protected models with the CLI defaults (ResNet18 x0.25 on mnist5k), each with
its own training seed, secret seed and identity, and ``--plain`` unprotected ones. Then it
verifies every model with every owner key it does not belong to, with and without the owner's
release as ``--reference`` and with and without data, exactly as ``passportnorm verify`` does.
An independent model must be verified 0 times. It also reports the largest bit agreement and
the smallest p-value seen, the alignment's match confidence of independent models against real
copies (each owner's own release, obfuscated; and fine-tuned 2 epochs then obfuscated), and the
bit agreement the old matching on whole filters produced (the issue-15 false positive).

Runs are kept under ``runs/bench/false-positives`` (another ``--arch``: a folder of its own in it)
and reused when their settings match; another ``--arch`` writes its own section,
``false-positives-ARCH``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from _docs import machine, update_section
from _runs import changed_settings

from passportnorm.align import align_to_reference
from passportnorm.attacks.finetune import finetune
from passportnorm.attacks.obfuscate import obfuscate
from passportnorm.attacks.runner import attacker_split
from passportnorm.data import load_dataset
from passportnorm.detection import signature_detection
from passportnorm.errors import TrainingError
from passportnorm.key import OwnerKey, attach_key
from passportnorm.pipeline import RunOptions, run_protect, run_train
from passportnorm.release import load_released
from passportnorm.verify import VerdictRule, verify

COMBINATIONS = [(False, False), (False, True), (True, False), (True, True)]  # (reference, data)


def _trained(out: Path, options: RunOptions, protected: bool) -> Path:
    """Train the run unless ``out`` already holds a finished one with the same settings; resume an
    interrupted one; start over when what is there was made with other settings."""
    metrics = out / "metrics.json"
    if metrics.is_file() and not changed_settings(json.loads(metrics.read_text()), options):
        return out
    started = time.perf_counter()
    checkpoint = out / ("secret" if protected else "") / "checkpoint.pt"
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            options.resume, options.overwrite = checkpoint.is_file() and not metrics.is_file(), False
            if not options.resume:
                options.overwrite = True
            (run_protect if protected else run_train)(options)
        except TrainingError:  # a checkpoint of other settings: start over
            options.resume, options.overwrite = False, True
            (run_protect if protected else run_train)(options)
    print(f"  trained {out.name} in {time.perf_counter() - started:.0f} s", flush=True)
    return out


def _owner_options(index: int, epochs: int, out: Path, arch: str = "auto", dataset: str = "mnist5k") -> RunOptions:
    return RunOptions(arch=arch, dataset=dataset, seed=index, secret_seed=10_000 + index, signature=f"(c) owner {index:02d}", epochs=epochs,
                      out=str(out))


def _owner(root: Path, index: int, epochs: int, arch: str = "auto", dataset: str = "mnist5k") -> Path:
    out = root / f"owner-{index:02d}"
    return _trained(out, _owner_options(index, epochs, out, arch, dataset), True)


def _plain(root: Path, index: int, epochs: int, arch: str = "auto", dataset: str = "mnist5k") -> Path:
    out = root / f"plain-{index:02d}"
    return _trained(out, RunOptions(arch=arch, dataset=dataset, seed=100 + index, epochs=epochs, out=str(out)), False)


def _row(report) -> dict[str, Any]:
    alignment = report.alignment or {}
    return {
        "verified": report.verified,
        "matches": report.signature_matches,
        "bits": report.signature_bits,
        "detection": report.signature_detection,
        "log10_p": report.signature_log10_p_value,
        "alignment_confidence": alignment.get("lowest_confidence"),
        "alignment_used": alignment.get("used"),
        "passport_aware_accuracy": report.passport_aware_accuracy,
    }


def _forced_agreement(model, key, reference, example, exclude: bool) -> float:
    """Bit agreement after alignment, used whatever its confidence: the projection's soundness alone."""
    aligned, _ = align_to_reference(model, reference, key, example_input=example, exclude_passport_directions=exclude)
    return signature_detection(attach_key(aligned, key)).rate


def _pairs(owner: dict, suspects: list[dict], test) -> list[dict[str, Any]]:
    """One owner key against every suspect that is not its own release, in every combination."""
    rows = []
    key, reference = owner["key"], owner["released"]
    example = key.trigger.inputs[:2]
    for suspect in suspects:
        if suspect["name"] == owner["name"]:
            continue
        row: dict[str, Any] = {"key": owner["name"], "suspect": suspect["name"], "kind": suspect["kind"]}
        for use_reference, use_data in COMBINATIONS:
            report = verify(suspect["released"], key, data=test if use_data else None, trigger=key.trigger,
                            reference=reference if use_reference else None)
            row[f"{'ref' if use_reference else 'noref'}-{'data' if use_data else 'nodata'}"] = _row(report)
        for name, exclude in (("forced_alignment_agreement", True), ("old_alignment_agreement", False)):
            row[name] = _forced_agreement(suspect["released"], key, reference, example, exclude)
        rows.append(row)
    return rows


def _copies(owner: dict, data, epochs: int) -> list[dict[str, Any]]:
    """Real copies: the owner's release obfuscated, and fine-tuned (FTAL, 50% data) then obfuscated."""
    rows = []
    key, released = owner["key"], owner["released"]
    example = key.trigger.inputs[:16]
    attacked = finetune(released, key, attacker_split(data.train, 0.5, owner["seed"]), data.test, mode="ftal",
                        epochs=epochs, seed=owner["seed"])["model"]
    for kind, model in (("obfuscated", released), (f"FTAL {epochs} epochs + obfuscated", attacked)):
        hidden, _ = obfuscate(model, example, seed=owner["seed"])
        report = verify(hidden, key, data=data.test, trigger=key.trigger, reference=released)
        rows.append({"owner": owner["name"], "kind": kind, **_row(report)})
    return rows


def _checked(root: Path, owner: dict, suspects: list[dict], settings: dict[str, Any]) -> dict[str, Any]:
    """One key's pairs and copies, kept in ``checks/<owner>.json`` so that several processes can share
    the keys and a last call only adds up; reused while the settings match."""
    path = root / "checks" / f"{owner['name']}.json"
    if path.is_file():
        done = json.loads(path.read_text())
        if done["settings"] == settings:
            return done
    started = time.perf_counter()
    data = load_dataset(settings.get("dataset", "mnist5k"), seed=owner["seed"])
    done = {"settings": settings, "pairs": _pairs(owner, suspects, data.test),
            "copies": _copies(owner, data, settings["attack_epochs"])}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".tmp").write_text(json.dumps(done, indent=1))
    path.with_suffix(".tmp").replace(path)
    print(f"  key {owner['name']} checked against {len(suspects) - 1} models, "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    return done


def _summary(pairs: list[dict], copies: list[dict], owners: list[dict]) -> dict[str, Any]:
    combos = [f"{'ref' if r else 'noref'}-{'data' if d else 'nodata'}" for r, d in COMBINATIONS]
    cells = [row[c] for row in pairs for c in combos]
    aligned = [row[c] for row in pairs for c in combos if c.startswith("ref")]
    return {
        "owners": len(owners),
        "owners_verified_by_protect": sum(o["self_verified"] for o in owners),
        "pairs": len(pairs),
        "verifications": len(cells),
        "verified": {c: sum(row[c]["verified"] for row in pairs) for c in combos},
        "verified_by_kind": {k: sum(row[c]["verified"] for row in pairs for c in combos if row["kind"] == k)
                             for k in ("protected", "plain")},
        "max_detection": max(c["detection"] for c in cells),
        "min_log10_p": min(c["log10_p"] for c in cells),
        "max_independent_confidence": max(c["alignment_confidence"] for c in aligned),
        "alignments_used": sum(bool(c["alignment_used"]) for c in aligned),
        "max_forced_alignment_agreement": max(row["forced_alignment_agreement"] for row in pairs),
        "mean_forced_alignment_agreement": sum(row["forced_alignment_agreement"] for row in pairs) / len(pairs),
        "max_old_alignment_agreement": max(row["old_alignment_agreement"] for row in pairs),
        "mean_old_alignment_agreement": sum(row["old_alignment_agreement"] for row in pairs) / len(pairs),
        "old_alignment_would_verify": sum(row["old_alignment_agreement"] * row["noref-nodata"]["bits"]
                                          >= _required(row["noref-nodata"]["bits"]) for row in pairs),
        "copies": {kind: {"count": len(rows), "verified": sum(r["verified"] for r in rows),
                          "min_confidence": min(r["alignment_confidence"] for r in rows),
                          "min_detection": min(r["detection"] for r in rows)}
                   for kind in sorted({r["kind"] for r in copies}) for rows in [[r for r in copies if r["kind"] == kind]]},
        "required_confidence": VerdictRule().min_alignment_confidence,
    }


def _required(bits: int) -> int:
    from passportnorm.binding import required_matches

    return required_matches(bits, 2.0 ** -VerdictRule().security_bits)


def _markdown(summary: dict[str, Any], command: str, epochs: int, where: str, arch: str = "auto") -> str:
    s = summary
    total = sum(s["verified"].values())
    lines = [
        f"Command: `{command}` ({where}; {s['owners']} owners trained with the `passportnorm protect` defaults"
        f"{'' if arch == 'auto' else f' and `--arch {arch}`'} but {epochs} "
        f"epochs, each with its own training seed, secret seed and identity; {s['owners_verified_by_protect']} of them "
        f"verified by their own `protect` run; plus the plain models trained with `passportnorm train`). Every owner key "
        f"is checked against every model that is not its own release: {s['pairs']} pairs, {s['verifications']} "
        "verifications, through the same `verify` the CLI runs.",
        "",
        "| flags | verifications | verified |",
        "|---|---:|---:|",
    ]
    names = {"noref-nodata": "no `--reference`, `--no-data`", "noref-data": "no `--reference`, with data",
             "ref-nodata": "`--reference` (the key owner's release), `--no-data`", "ref-data": "`--reference`, with data"}
    for combo, count in s["verified"].items():
        lines.append(f"| {names[combo]} | {s['pairs']} | **{count}** |")
    lines += [
        f"| all | {s['verifications']} | **{total}** (protected suspects {s['verified_by_kind']['protected']}, "
        f"plain {s['verified_by_kind']['plain']}) |",
        "",
        "| measurement | value |",
        "|---|---|",
        f"| largest signature agreement of an independent model, any flags | {s['max_detection']:.1%} |",
        f"| smallest p-value of an independent model, any flags | 10^{s['min_log10_p']:.1f} (a claim needs "
        f"10^{-VerdictRule().security_bits * math.log10(2):.1f}) |",
        f"| alignment confidence of independent models (largest of {2 * s['pairs']}) | {s['max_independent_confidence']:.3f}"
        f" (alignment used {s['alignments_used']} times; needed {s['required_confidence']:g}) |",
    ]
    for kind, c in s["copies"].items():
        lines.append(f"| real copies, {kind}: lowest alignment confidence | {c['min_confidence']:.3f} "
                     f"({c['verified']}/{c['count']} verified, lowest detection {c['min_detection']:.1%}) |")
    lines += [
        f"| bit agreement after the alignment, used whatever its confidence (mean / largest) | "
        f"{s['mean_forced_alignment_agreement']:.1%} / {s['max_forced_alignment_agreement']:.1%} |",
        f"| the same with the old matching on whole filters (mean / largest) | {s['mean_old_alignment_agreement']:.1%} / "
        f"{s['max_old_alignment_agreement']:.1%}: {s['old_alignment_would_verify']} of {s['pairs']} pairs would have "
        "reached the claim bound |",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="auto", help="the owners' and plain models' --arch (default: ResNet18 x0.25)")
    parser.add_argument("--dataset", default="mnist5k", help="their data (pydocs for --arch gpt)")
    parser.add_argument("--owners", type=int, default=20)
    parser.add_argument("--plain", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--attack-epochs", type=int, default=2)
    parser.add_argument("--out", default="runs/bench/false-positives")
    parser.add_argument("--docs", action="store_true", help="write the table into docs/SECURITY.md")
    parser.add_argument("--shard", default="0/1", help="K/N: train only the runs whose index is K modulo N, then stop "
                        "(several processes fill --out side by side; a last call without --shard checks them all)")
    parser.add_argument("--check-shard", default="0/1",
                        help="K/N: check only the keys whose index is K modulo N, keep their results under "
                        "--out/checks, then stop (a last call adds them all up)")
    args = parser.parse_args()
    root = Path(args.out) if args.arch == "auto" else Path(args.out) / args.arch
    shard, shards = map(int, args.shard.split("/"))
    if shards > 1:
        for index in range(shard, max(args.owners, args.plain), shards):
            if index < args.owners:
                _owner(root, index, args.epochs, args.arch, args.dataset)
            if index < args.plain:
                _plain(root, index, args.epochs, args.arch, args.dataset)
        return
    owners, suspects = [], []
    for index in range(args.owners):
        out = _owner(root, index, args.epochs, args.arch, args.dataset)
        metrics = json.loads((out / "metrics.json").read_text())
        owners.append({"name": out.name, "seed": index, "key": OwnerKey.load(out / "owner-key"),
                       "released": load_released(out / "released")[0], "self_verified": bool(metrics["verified"])})
        suspects.append({"name": out.name, "kind": "protected", "released": owners[-1]["released"]})
    for index in range(args.plain):
        out = _plain(root, index, args.epochs, args.arch, args.dataset)
        suspects.append({"name": out.name, "kind": "plain", "released": load_released(out / "released")[0]})
    settings: dict[str, Any] = {name: getattr(args, name) for name in ("owners", "plain", "epochs", "attack_epochs")}
    settings |= {} if args.dataset == "mnist5k" else {"dataset": args.dataset}
    check, checks = map(int, args.check_shard.split("/"))
    print(f"checking {len(owners[check::checks])} keys against {len(suspects)} models", flush=True)
    checked = [_checked(root, owner, suspects, settings) for owner in owners[check::checks]]
    if checks > 1:
        return
    pairs = [row for done in checked for row in done["pairs"]]
    copies = [row for done in checked for row in done["copies"]]
    summary = _summary(pairs, copies, owners)
    (root / "summary.json").write_text(json.dumps({"summary": summary, "pairs": pairs, "copies": copies}, indent=1))
    print(json.dumps(summary, indent=2))
    command = "python benchmarks/false_positives.py --docs" + ("" if args.arch == "auto" else f" --arch {args.arch}") + (
        "" if args.dataset == "mnist5k" else f" --dataset {args.dataset}") + ("" if args.epochs == 8 else f" --epochs {args.epochs}") + (
        "" if args.owners == 20 else f" --owners {args.owners}") + ("" if args.plain == 20 else f" --plain {args.plain}")
    if args.docs:
        section = "false-positives" if args.arch == "auto" else f"false-positives-{args.arch}"
        update_section("SECURITY.md", section, _markdown(summary, command, args.epochs, machine(), args.arch))
    if sum(summary["verified"].values()):
        sys.exit("an independent model was verified: see summary.json")


if __name__ == "__main__":
    main()
