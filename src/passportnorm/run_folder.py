"""What a run folder holds, which parts are secret, and the guard that keeps a key from being lost.

``protect`` writes public files (``released/``, ``certificate.json``, ``metrics.json``,
``report.md``, ``history.csv``) and secret ones (``owner-key/`` and ``secret/``: the run's
secret seed and its checkpoint, which holds every passport). Secret folders are created
readable by the owner only. A folder that already holds an earlier run's outputs is refused
unless the caller resumes that run or asks to overwrite it: a published certificate must never
end up pointing at a key that was silently replaced.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import ConfigError
from .fileio import restrict_to_owner, write_json_atomic
from .protect import secret_seed

__all__ = ["SEED_SOURCES", "keep_secret_seed", "prepare_run_folder", "run_secret_seed", "secret_folder"]

SEED_SOURCES = {
    "os-csprng": "drawn from the OS CSPRNG; kept in owner-key/ and secret/ only",
    "user": (
        "given by the user (an experiment: secret only if nobody else knows it); "
        "kept in owner-key/ and secret/"
    ),
}
_EARLIER_OUTPUTS = ("owner-key", "released", "certificate.json", "secret/checkpoint.pt", "checkpoint.pt")
_SECRETS_FILE = "run-secrets.json"


def secret_folder(out: Path) -> Path:
    """``out/secret``, created owner-only (0700)."""
    folder = Path(out) / "secret"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    restrict_to_owner(folder)
    return folder


def prepare_run_folder(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse an output path that is a file, or that holds an earlier run, unless resuming or overwriting."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(
            f"--out {out} is a file, not a folder; pass a folder path (it is created when missing)"
        )
    if resume and overwrite:
        raise ConfigError("--resume continues the run in --out and --overwrite replaces it; give one of them")
    found = [name for name in _EARLIER_OUTPUTS if (out / name).exists()]
    if found and not (resume or overwrite):
        raise ConfigError(
            f"{out} already holds an earlier run ({', '.join(found)}); its key and certificate would be "
            "lost: "
            "continue it with --resume, replace it with --overwrite, or choose another --out"
        )


def run_secret_seed(out: Path, given: int | None, resume: bool) -> tuple[int, str]:
    """The run's secret seed and its source: read back when resuming, else given or drawn from the OS CSPRNG.

    ``keep_secret_seed`` writes it to ``out/secret/run-secrets.json`` (0600) before training
    starts, so a run interrupted at any point resumes with the same passports and triggers.
    """
    path = Path(out) / "secret" / _SECRETS_FILE
    if resume:
        if not path.is_file():
            legacy = Path(out) / "checkpoint.pt"
            hint = (
                f" ({legacy} was written by an older passportnorm that kept no secret seed; start over "
                "with --overwrite)"
                if legacy.is_file()
                else "; run without --resume first"
            )
            raise ConfigError(f"cannot resume: {path} is missing{hint}")
        try:
            saved = json.loads(path.read_text())
            seed, source = int(saved["secret_seed"]), str(saved["source"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ConfigError(
                f"cannot resume: {path} is unreadable ({error!r}); start over with --overwrite"
            ) from error
        if given is not None and int(given) != seed:
            raise ConfigError(
                f"cannot resume with another --secret-seed than the run in {out} used; drop --secret-seed"
            )
        return seed, source
    return secret_seed(given)


def keep_secret_seed(out: Path, seed: int, source: str) -> None:
    """Write the run's secret seed (owner-only) once the run's inputs are known to be good."""
    path = secret_folder(out) / _SECRETS_FILE
    write_json_atomic(path, {"secret_seed": str(seed), "source": source})
    restrict_to_owner(path)
