"""A transformer's residual stream against the claimant and the thief, with the numbers.

    python benchmarks/stream_claims.py [--widths 0.0625 0.25] [--trained-epochs 2] [--docs]

The claimant (`attack spell --modes stream`): makes a key on a public GPT P, publishes P in the
stream order that spells that key best, and verifies P through that release. The thief: permutes
or rotates the owner's release (`attack obfuscate`), and the owner verifies with ``--reference``.
Both at each ``--widths`` on a random-init GPT (the set-up of tests/test_residual_stream.py and
tests/test_stream_rotation.py), and at the zoo's width on P trained ``--trained-epochs`` on pydocs
(`passportnorm train --arch gpt --dataset pydocs`; runs/bench/stream-claims is reused). A row gives
the bits matched, what a claim needs without the log2(width!) charge on a stream order and with it,
how well the stream's alignment fits (1.0: a copy), and the verdict.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import torch
from _docs import machine, update_section
from _runs import finished_run
from torch import nn

from passportnorm import zoo
from passportnorm.attacks.obfuscate import obfuscate
from passportnorm.attacks.spell import spell_by_rearranging
from passportnorm.binding import required_matches
from passportnorm.data import load_dataset
from passportnorm.key import OwnerKey
from passportnorm.pipeline import RunOptions
from passportnorm.release import load_released
from passportnorm.verdict import VerdictRule, format_p_value
from passportnorm.verify import verify


def random_models(widths: list[float]) -> list[tuple[str, nn.Module]]:
    """(name, P) for random-init GPTs at each zoo width (the tests' set-up)."""
    found = []
    for width in widths:
        torch.manual_seed(0)
        model = zoo.build("gpt", in_channels=64, num_classes=256, width=width).eval()
        found.append((f"random init, width {stream_width(model)}", model))
    return found


def trained_models(epochs: int, out: Path) -> tuple[nn.Module, nn.Module, nn.Module, Any]:
    """P and an independent GPT (`passportnorm train`, seeds 0 and 1), the owner (`passportnorm
    protect`, seed 0) on pydocs for ``epochs``: the released P, the other, the owner's release and key."""

    def run(name: str, seed: int, protected: bool) -> Path:
        options = RunOptions(
            arch="gpt",
            dataset="pydocs",
            epochs=epochs,
            seed=seed,
            secret_seed=seed,
            out=str(out / f"{name}-seed{seed}"),
        )
        return Path(finished_run(options, protected)["out"])

    public, other, owner = run("plain", 0, False), run("plain", 1, False), run("owner", 0, True)
    released = [load_released(folder / "released")[0].eval() for folder in (public, other, owner)]
    return (*released, OwnerKey.load(owner / "owner-key"))


def stream_width(model: nn.Module) -> int:
    """The residual stream's width: the token embedding's."""
    return next(m for m in model.modules() if isinstance(m, nn.Embedding)).embedding_dim


def claimant_row(public: nn.Module, ids: torch.Tensor, rule: VerdictRule) -> dict[str, Any]:
    """The claimant's best-spelling stream order, read the way a verifier reads it."""
    claimed, key = spell_by_rearranging(public, ids[:4], "stream", signature="(c) M", seed=7)
    return _row(verify(public, key, reference=claimed, data=_data(ids), rule=rule), rule)


def thief_rows(
    release: nn.Module, key: Any, independent: nn.Module, ids: torch.Tensor, rule: VerdictRule
) -> dict[str, dict[str, Any]]:
    """The owner's release permuted, then rotated, by a thief, and an independent GPT: each read
    with the owner's key against the release."""
    permuted, _ = obfuscate(release, ids[:2], flip=0.0, rescale=None, seed=5)
    rotated, _ = obfuscate(release, ids[:2], permute=False, flip=0.0, rescale=None, rotate=True, seed=4)
    suspects = {"release": release, "permuted": permuted, "rotated": rotated, "independent": independent}
    return {
        name: _row(
            verify(
                suspect, key, reference=None if name == "release" else release, data=_data(ids), rule=rule
            ),
            rule,
        )
        for name, suspect in suspects.items()
    }


def _data(ids: torch.Tensor) -> torch.utils.data.TensorDataset:
    return torch.utils.data.TensorDataset(ids, ids)


def _row(report: Any, rule: VerdictRule) -> dict[str, Any]:
    bits, threshold = report.signature_bits, rule.signature_threshold("hash")
    alignment = report.alignment or {}
    return {
        "bits": bits,
        "matches": report.signature_matches,
        "p_value": format_p_value(report.signature_p_value, report.signature_log10_p_value),
        "needed_uncharged": required_matches(bits, threshold),
        "needed_charged": required_matches(bits, threshold, report.signature_search_log2),
        "charged_log2": round(report.signature_search_log2, 1),
        "stream_fit": round(alignment.get("confidence", {}).get("residual stream", 0.0), 3),
        "stream_permuted_back": alignment.get("stream_permuted", 0),
        "stream_rotated_back": alignment.get("stream_rotated", 0),
        "alignment_used": bool(alignment.get("used")),
        "verified": report.verified,
        "reason": report.reasons[-1] if report.reasons else "",
    }


LIES = {
    "release": "owner: the release as published, its own key (no reference)",
    "claimant": "false claimant: publishes P in the stream order spelling its key best, verifies P by it",
    "permuted": "thief: permutes the release's stream; the owner verifies with --reference",
    "rotated": "thief: folds the gains, rotates the release's stream; the owner verifies with --reference",
    "independent": "nobody: an independent GPT of P's size, read with the owner's key against the release",
}


def table(results: list[tuple[str, dict[str, dict[str, Any]]]]) -> str:
    lines = [
        "| P | party: the lie | bits matched (p) | a claim needs: uncharged / charged | stream alignment "
        "| verdict |",
        "|---|---|---:|---:|---|---|",
    ]
    for name, rows in results:
        for lie, row in rows.items():
            if not row["alignment_used"]:
                alignment = (
                    "none" if row["stream_fit"] == 0 else f"not used (best fit {row['stream_fit']:.3f})"
                )
            elif row["stream_rotated_back"]:
                alignment = f"rotated back, fit {row['stream_fit']:.3f}: no bit counts"
            elif row["stream_permuted_back"]:
                alignment = f"order put back, fit {row['stream_fit']:.3f}, charged 2^{row['charged_log2']:g}"
            bits = f"{row['matches']}/{row['bits']} ({row['p_value']})" if row["bits"] else "none counted"
            needs = f"{row['needed_uncharged']} / {row['needed_charged']}" if row["bits"] else "-"
            verdict = "**verified**" if row["verified"] else "not verified"
            lines.append(f"| {name} | {LIES[lie]} | {bits} | {needs} | {alignment} | {verdict} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--widths", type=float, nargs="*", default=[0.0625, 0.25], help="random-init GPTs (zoo width)"
    )
    parser.add_argument("--trained-epochs", type=int, default=2, help="0: no trained P")
    parser.add_argument("--out", default="runs/bench/stream-claims")
    parser.add_argument("--docs", action="store_true")
    args = parser.parse_args()
    command = shlex.join(["python", "benchmarks/stream_claims.py", *sys.argv[1:]])
    ids, rule = load_dataset("pydocs").test.tensors[0][:8], VerdictRule()
    results = []
    for name, public in random_models(args.widths):
        print(f"{name} ...", flush=True)
        results.append((name, {"claimant": claimant_row(public, ids, rule)}))
    if args.trained_epochs > 0:
        public, independent, release, key = trained_models(args.trained_epochs, Path(args.out))
        name = f"trained {args.trained_epochs} epochs on pydocs, width {stream_width(public)}"
        print(f"{name} ...", flush=True)
        rows = thief_rows(release, key, independent, ids, rule)
        results.append((name, {"claimant": claimant_row(public, ids, rule), **rows}))
    text = table(results)
    print(text)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "summary.json").write_text(json.dumps(dict(results), indent=2) + "\n")
    if args.docs:
        header = (
            f"Command: `{command}` ({machine()}; 8 pydocs test prompts of 64 bytes as the alignment's "
            f"data; the claim bound 2^-{rule.security_bits}; a stream order's charge is log2(width!)).\n\n"
        )
        update_section("SECURITY.md", "stream-claims", header + text)


if __name__ == "__main__":
    main()
