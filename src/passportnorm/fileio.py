"""Safe, atomic file handling shared by released models, keys, certificates and checkpoints.

Tensors go through safetensors, never pickle; a folder is written under a temporary name and
renamed into place, so an interrupted or failed write leaves no half-written output behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from .errors import TrainingError

__all__ = [
    "atomic_folder",
    "write_json_atomic",
    "write_text_atomic",
    "sha256_file",
    "tensors_fingerprint",
    "save_tensors",
    "load_tensors",
    "looks_like_pickle",
    "read_folder_manifest",
    "restrict_to_owner",
]


@contextmanager
def atomic_folder(target: str | Path, private: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``target``; on success it replaces ``target``.

    ``private`` keeps the staging folder owner-only (0700, as mkdtemp makes it) from its first
    moment, so what is written into it (a key) is never readable by others, not even while it is
    written; public folders get the usual mode."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    if not private:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)
    try:
        yield staging
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def restrict_to_owner(path: str | Path) -> None:
    """Owner-only permissions (folders 0700, files 0600, recursively): for keys, secrets, checkpoints.

    Where the file system ignores POSIX modes (some Windows or network mounts), this is a no-op.
    """
    path = Path(path)
    os.chmod(path, 0o700 if path.is_dir() else 0o600)
    if path.is_dir():
        for child in path.rglob("*"):
            os.chmod(child, 0o700 if child.is_dir() else 0o600)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write beside ``path`` and rename over it: readers see the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json_atomic(path: str | Path, payload: Any) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2) + "\n")


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tensors_fingerprint(tensors: Mapping[str, Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes in name order: equal iff the weights are equal."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def save_tensors(
    tensors: Mapping[str, Tensor], path: str | Path, metadata: dict[str, str] | None = None
) -> None:
    save_file(
        {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, str(path), metadata=metadata
    )


def looks_like_pickle(path: str | Path) -> bool:
    """True for pickle streams and torch.save zip archives, which must never be loaded here.

    A pickle starts with the PROTO opcode ``0x80`` and its protocol (2-5), a zip with ``PK``. A
    safetensors file starts with its header's length (8 bytes, little-endian) and then ``{``: its
    first byte is 0x80 whenever that length is 128 modulo 256 (a key of 3200 header bytes was once
    refused as a pickle), so the header is recognised first.
    """
    with open(path, "rb") as handle:
        head = handle.read(9)
    if head[8:9] == b"{":
        return False
    return (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")) or head[:2] == b"PK"


def load_tensors(path: str | Path) -> dict[str, Tensor]:
    """Load a safetensors file; raises ValueError with a plain reason when it is not one."""
    path = Path(path)
    if looks_like_pickle(path):
        raise ValueError(
            "it is a pickle or torch.save archive, which passportnorm never loads (it can run code)"
        )
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, RuntimeError) as error:
        raise ValueError(f"not a readable safetensors file ({error})") from error


def read_folder_manifest(
    folder: Path,
    manifest_name: str,
    tensors_name: str,
    fmt: str,
    version: int,
    error: type[Exception],
    what: str,
) -> dict[str, Any]:
    """Check a (manifest.json + tensors.safetensors) folder's presence, JSON, format and version.

    Every failure raises ``error`` with one line naming the file at fault; ``what`` names the
    kind of folder for the messages (for example "an owner key").
    """
    manifest_path = folder / manifest_name
    if folder.is_file():
        raise error(
            f"{folder} is a file, not {what}: pass the folder with {manifest_name} and {tensors_name} "
            "(single files such as .pt pickles are never loaded: they can run code)"
        )
    if not folder.is_dir():
        raise error(f"{folder} does not exist; pass the folder that holds {what}")
    for path in (manifest_path, folder / tensors_name):
        if not path.is_file():
            raise error(f"{path} is missing; {what} is a folder with {manifest_name} and {tensors_name}")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as problem:
        raise error(f"{manifest_path} is not valid JSON ({problem}); the folder is corrupted") from problem
    if not isinstance(manifest, dict) or manifest.get("format") != fmt:
        raise error(f"{manifest_path} is not {what} (format {fmt!r})")
    if manifest.get("version") != version:
        raise error(
            f"{manifest_path} has format version {manifest.get('version')!r}; this passportnorm reads "
            f"{version}"
        )
    return manifest


def write_checkpoint(path: Path, payload: dict[str, Any], owner_only: bool = False) -> None:
    """``torch.save`` into a temporary file renamed over ``path``: an interrupted save never leaves half a
    checkpoint; ``owner_only`` for checkpoints that hold secrets (a protected model's passports)."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    if owner_only:
        restrict_to_owner(tmp)
    os.replace(tmp, path)


def read_checkpoint(
    path: Path, config: Mapping[str, Any], defaults: Mapping[str, Any] | None = None, map_location: Any = None
) -> dict[str, Any]:
    """A checkpoint that ``write_checkpoint`` wrote with ``config`` under ``"config"``; a truncated or foreign
    file, or one written with other settings, is one line naming it. ``defaults`` fill in settings added
    after the checkpoint was written."""
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # a truncated or foreign file
        raise TrainingError(
            f"{path} is not a usable checkpoint ({type(error).__name__}); delete it to start over"
        ) from error
    saved = dict(defaults or {}) | payload.get("config", {})
    changed = [name for name, value in config.items() if name in saved and saved[name] != value]
    if changed:
        raise TrainingError(
            f"{path} was written with other settings ({', '.join(changed)}); resume with the same options "
            "or write to another folder"
        )
    return payload
