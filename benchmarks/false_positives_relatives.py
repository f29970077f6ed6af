"""No false "verified" among close relatives: retrofit keys against their ancestors and its other descendants.

    python benchmarks/false_positives_relatives.py [--lineages 5] [--epochs 4] [--docs]

Each lineage starts from a public model A (`passportnorm train`, its own seed); S is a stranger's
fine-tune of A (`train --weights A --epochs 2 --lr 0.01`), and O1, O2 are two owners' retrofits of
the same A (`protect --weights A --epochs 2`, each with its own secret seed and identity). Every
retrofit key is verified against its relatives (its ancestor, the stranger's fine-tune of it, the
other owner's retrofit of it; models of other lineages are independent, as in
benchmarks/false_positives.py) with and without the owner's release as ``--reference``, with and without data, with and without
``--ancestor`` (the ancestor the key records), through the same ``verify`` the CLI runs: each
must be refused. Each key against its own release with its ancestor is the positive control:
each owner claims its own release, and only it. Runs are kept under
``runs/bench/false-positives-relatives`` and reused when their settings match.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from pathlib import Path
from typing import Any

from _docs import machine, update_section
from _runs import finished_run
from false_positives import _row as verification_row

from passportnorm.data import load_dataset
from passportnorm.key import OwnerKey
from passportnorm.pipeline import RunOptions
from passportnorm.release import load_released
from passportnorm.verify import VerdictRule, verify

FLAGS = list(itertools.product((False, True), repeat=3))  # (reference, data, ancestor)


def _flag_name(reference: bool, data: bool, ancestor: bool) -> str:
    return "-".join(
        ("ref" if reference else "noref", "data" if data else "nodata", "anc" if ancestor else "noanc")
    )


def _lineage(root: Path, index: int, epochs: int) -> dict[str, Path]:
    """A public model, a stranger's fine-tune of it and two owners' retrofits of it (trained or reused)."""
    folder = root / f"lineage-{index}"
    finished_run(RunOptions(seed=200 + index, epochs=epochs, out=str(folder / "ancestor")), protected=False)
    weights = str(folder / "ancestor" / "released" / "model.safetensors")
    finished_run(
        RunOptions(seed=300 + index, epochs=2, lr=0.01, weights=weights, out=str(folder / "stranger")),
        protected=False,
    )
    for owner in (1, 2):
        secret = 20_000 + 10 * index + owner
        finished_run(
            RunOptions(
                seed=400 + 10 * index + owner,
                epochs=2,
                weights=weights,
                secret_seed=secret,
                signature=f"(c) lineage {index} owner {owner}",
                out=str(folder / f"owner-{owner}"),
            ),
            protected=True,
        )
    print(f"  lineage {index} ready", flush=True)
    return {name: folder / name for name in ("ancestor", "stranger", "owner-1", "owner-2")}


def _row(report) -> dict[str, Any]:
    """benchmarks/false_positives.py's record of one verification, and what the ancestor showed."""
    ancestor = report.ancestor or {}
    return verification_row(report) | {
        "ancestor_given": ancestor.get("given"),
        "ancestor_shows": ancestor.get("signature_shows"),
    }


def _checks(lineages: list[dict[str, Path]]) -> dict[str, list[dict[str, Any]]]:
    """Every retrofit key against every relative (and, as the control, its own release), in all 8 ways."""
    test = load_dataset("mnist5k", seed=0).test
    pairs, controls = [], []
    for i, lineage in enumerate(lineages):
        released = {name: load_released(path / "released")[0].eval() for name, path in lineage.items()}
        for owner in ("owner-1", "owner-2"):
            key = OwnerKey.load(lineage[owner] / "owner-key")
            own, ancestor = released[owner], released["ancestor"]
            for suspect, model in released.items():
                row: dict[str, Any] = {
                    "key": f"{i}/{owner}",
                    "suspect": f"{i}/{suspect}",
                    "kind": _kind(owner, suspect),
                }
                for reference, data, with_ancestor in FLAGS:
                    report = verify(
                        model,
                        key,
                        data=test if data else None,
                        trigger=key.trigger,
                        reference=own if reference else None,
                        ancestor=ancestor if with_ancestor else None,
                    )
                    row[_flag_name(reference, data, with_ancestor)] = _row(report)
                (controls if row["kind"] == "own release" else pairs).append(row)
            print(f"  key {i}/{owner} checked against its lineage's {len(released)} models", flush=True)
    return {"pairs": pairs, "controls": controls}


def _kind(owner: str, suspect: str) -> str:
    """How the suspect is related to the key's owner."""
    return {
        "ancestor": "its own ancestor",
        "stranger": "a stranger's fine-tune of its ancestor",
        owner: "own release",
    }.get(suspect, "the other owner's retrofit of the same ancestor")


def _summary(checks: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    names = [_flag_name(*flags) for flags in FLAGS]
    kinds = sorted({row["kind"] for row in checks["pairs"]})
    by_kind = {}
    for kind in kinds:
        cells = [row[n] for row in checks["pairs"] if row["kind"] == kind for n in names]
        by_kind[kind] = {
            "pairs": len(cells) // len(names),
            "verifications": len(cells),
            "verified": sum(c["verified"] for c in cells),
            "max_detection": max(c["detection"] for c in cells),
            "min_log10_p": min(c["log10_p"] for c in cells),
        }
    ancestor_cells = [
        row[n] for row in checks["pairs"] + checks["controls"] for n in names if n.endswith("-anc")
    ]
    controls = {n: sum(row[n]["verified"] for row in checks["controls"]) for n in names}
    return {
        "by_kind": by_kind,
        "keys": len(checks["controls"]),
        "controls": controls,
        "control_min_detection": min(row[n]["detection"] for row in checks["controls"] for n in names),
        "ancestor_shows": sum(bool(c["ancestor_shows"]) for c in ancestor_cells),
        "ancestor_checks": len(ancestor_cells),
    }


def _markdown(summary: dict[str, Any], command: str, epochs: int, lineages: int) -> str:
    s = summary
    total = sum(k["verifications"] for k in s["by_kind"].values())
    lines = [
        f"Command: `{command}` ({machine()}; {lineages} lineages, each: a public model A trained with `passportnorm "
        f"train` for {epochs} epochs, a stranger's fine-tune of A (2 epochs, lr 0.01) and two owners' retrofits of A "
        f"(`protect --weights A --epochs 2`, their own secret seeds and identities)). Each of the {s['keys']} retrofit "
        f"keys is verified against its three relatives in all 8 combinations of `--reference` (its "
        "owner's release), data and `--ancestor` (the ancestor its key records), through the same `verify` the CLI "
        f"runs: {total} verifications.",
        "",
        "| suspect, as related to the key's owner | pairs | verifications | verified | largest agreement | smallest p |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for kind, k in s["by_kind"].items():
        lines.append(
            f"| {kind} | {k['pairs']} | {k['verifications']} | **{k['verified']}** | {k['max_detection']:.1%} "
            f"| 10^{k['min_log10_p']:.1f} |"
        )
    verified_controls = sum(v for n, v in s["controls"].items() if n.endswith("-anc"))
    undecided = sum(v for n, v in s["controls"].items() if n.endswith("-noanc"))
    lines += [
        "",
        f"A claim needs p <= 10^{-VerdictRule().security_bits * math.log10(2):.1f}. The control, each key against its "
        f"own release: verified {verified_controls} of {4 * s['keys']} times with `--ancestor` (lowest agreement "
        f"{s['control_min_detection']:.1%} in any combination), and {undecided} of {4 * s['keys']} without it (a "
        "retrofit key is not decidable without the ancestor it records). Of the "
        f"{s['ancestor_checks']} reads of a key's own ancestor, {s['ancestor_shows']} showed the signature.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lineages", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=4, help="epochs of each public ancestor")
    parser.add_argument("--out", default="runs/bench/false-positives-relatives")
    parser.add_argument("--docs", action="store_true", help="write the table into docs/SECURITY.md")
    args = parser.parse_args()
    root = Path(args.out)
    lineages = [_lineage(root, index, args.epochs) for index in range(args.lineages)]
    checks = _checks(lineages)
    summary = _summary(checks)
    (root / "summary.json").write_text(json.dumps({"summary": summary, **checks}, indent=1))
    print(json.dumps(summary, indent=2))
    command = (
        "python benchmarks/false_positives_relatives.py --docs"
        + ("" if args.lineages == 5 else f" --lineages {args.lineages}")
        + ("" if args.epochs == 4 else f" --epochs {args.epochs}")
    )
    if args.docs:
        update_section(
            "SECURITY.md",
            "false-positives-relatives",
            _markdown(summary, command, args.epochs, args.lineages),
        )
    if any(k["verified"] for k in summary["by_kind"].values()):
        sys.exit("a relative was verified: see summary.json")


if __name__ == "__main__":
    main()
