"""Does a refactor change any output? The same small commands at two revisions, outputs compared.

    python benchmarks/same_outputs.py --base REV [--out DIR]

Checks out REV in a temporary git worktree and runs, with each side's source and this venv:
``protect`` on digits (small CNN) and on mnist5k-points (PointNet), every ``passportnorm attack``
(1 epoch) against the base side's owner (so only the attack code differs), and ``compare`` (AlexNet,
1 epoch). Every JSON output is compared with timings, paths and the run's own options left out;
every other file (weights, keys) byte for byte; checkpoints are left out (they hold timings).
Prints one line per output that differs and a summary; exit 1 when anything differs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TINY = (
    "--dataset digits --arch small_cnn --width 1.0 --epochs 3 --batch-size 32 --secret-seed 0 "
    "--trigger-count 20 --signature x --device cpu"
).split()
CLOUDS = (
    "--dataset mnist5k-points --arch pointnet --width 0.25 --epochs 1 --secret-seed 0 --device cpu".split()
)
ATTACKS = [
    ["finetune", "--mode", "rtal"],
    ["transfer", "--target-classes", "5,6,7,8,9"],
    ["prune", "--rates", "0,0.5"],
    ["obfuscate"],
    ["ambiguity1"],
    ["ambiguity2", "--flips", "0,0.5"],
    ["erb", "--erb-mode", "ierb"],
    ["forge"],
    ["reprotect", "--passports", "shuffle"],
    ["quantize", "--quantize", "fp16,int8-dynamic"],
    ["distill"],
    ["fine-prune", "--rates", "0.3,0.9"],
    ["dummy-neurons", "--rates", "0.5"],
    ["combined", "--steps", "prune,finetune,dummy-neurons,obfuscate", "--rates", "0.2"],
]
COMPARE = (
    "--dataset digits --arch alexnet --width 0.25 --seeds 1 --epochs 1 --forge-epochs 1 --device cpu".split()
)
# what legitimately differs between two runs of the same code
VOLATILE = {"environment", "options", "attacked_from", "out", "sha256_key", "key_sha256", "created_utc", "table"}


def _run(source: Path, side: Path, name: str, args: list[str]) -> None:
    env = dict(os.environ, PYTHONPATH=str(source), OMP_NUM_THREADS="1")
    with open(side / f"{name}.log", "w") as out:
        subprocess.run(
            [sys.executable, "-m", "passportnorm", *args], env=env, stdout=out, stderr=out, check=False
        )


def _side(source: Path, side: Path, owner: Path) -> None:
    side.mkdir(parents=True)
    _run(source, side, "owner", ["protect", *TINY, "--out", str(side / "owner")])
    _run(source, side, "clouds", ["protect", *CLOUDS, "--out", str(side / "clouds")])
    target = ["--model", str(owner / "released"), "--key", str(owner / "owner-key"), "--epochs", "1"]
    for attack in ATTACKS:
        name = f"attack-{attack[0]}"
        _run(source, side, name, ["attack", *attack, *target, "--out", str(side / name)])
    _run(source, side, "compare", ["compare", *COMPARE, "--out", str(side / "compare")])


def _stable(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: _stable(v)
            for k, v in value.items()
            if k not in VOLATILE and "seconds" not in k and "ratio" not in k and "time" not in k
        }
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def _same(a: Path, b: Path) -> bool:
    if a.suffix == ".json":
        return _stable(json.loads(a.read_text())) == _stable(json.loads(b.read_text()))
    return hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()


def compare(base: Path, head: Path) -> list[str]:
    """The outputs of ``base`` that ``head`` lacks or gives otherwise (checkpoints, logs, plots and text
    left out)."""
    differing = []
    for path in sorted(base.rglob("*")):
        if not path.is_file() or path.suffix in (".log", ".png", ".md", ".csv", ".pt", ".html", ".tmp"):
            continue
        twin = head / path.relative_to(base)
        if not twin.is_file() or not _same(path, twin):
            differing.append(str(path.relative_to(base)))
    return differing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the revision to compare this working tree with")
    parser.add_argument("--out", help="folder for both sides' outputs (default: a temporary one)")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="same-outputs-"))
    worktree = out / "base-source"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(worktree), args.base], check=True
    )
    try:
        for name, source in (("base", worktree / "src"), ("head", ROOT / "src")):
            print(f"running the commands at {name} ...", flush=True)
            _side(source, out / name, out / "base" / "owner")
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)], check=False)
    differing = compare(out / "base", out / "head")
    for path in differing:
        print(f"differs: {path}")
    print(f"{len(differing)} outputs differ; both sides are in {out}")
    sys.exit(1 if differing else 0)


if __name__ == "__main__":
    main()
