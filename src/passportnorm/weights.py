"""Start from the user's trained weights (``--weights FILE``) without ever running code from the file.

Accepted: a safetensors file, or a ``torch.save``'d state dict read with ``weights_only=True``
(PyTorch's restricted unpickler: tensors and plain containers only). A plain pickle, or a
torch.save'd whole model, is refused with a one-line reason: unpickling either can run code.
Common wrappers are unwrapped: ``{"state_dict": ...}``, ``{"model": ...}`` and DDP's
``module.`` prefix. Every key and shape must match the model; the first mismatch is named.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from .errors import ModelFileError
from .fileio import load_tensors, sha256_file

__all__ = ["load_weights"]


def _read(path: Path, flag: str) -> Mapping[str, object]:
    with open(path, "rb") as handle:
        head = handle.read(8)
    if zipfile.is_zipfile(path):  # torch.save's format: read with the restricted unpickler
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # UnpicklingError and friends: the archive holds more than tensors
            raise ModelFileError(
                f"{flag} {path} holds Python objects beyond tensors (a whole pickled model?), which "
                "passportnorm "
                "never unpickles; save model.state_dict() with torch.save or safetensors instead"
            ) from error
    if head[:1] == b"\x80":
        raise ModelFileError(
            f"{flag} {path} is a plain pickle, which can run code and is never loaded; "
            "save model.state_dict() with safetensors or torch.save instead"
        )
    try:
        return load_tensors(path)
    except ValueError as error:
        raise ModelFileError(f"{flag} {path}: {error}") from error


def _unwrap(state: Mapping[str, object], path: Path, flag: str) -> dict[str, Tensor]:
    for wrapper in ("state_dict", "model"):
        inner = state.get(wrapper)
        if isinstance(inner, Mapping):
            state = inner
    tensors = {k: v for k, v in state.items() if isinstance(v, Tensor)}
    if not tensors or len(tensors) != len(state):
        raise ModelFileError(f"{flag} {path} is not a state dict (a mapping of names to tensors)")
    if all(k.startswith("module.") for k in tensors):  # saved from DistributedDataParallel
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


def load_weights(model: nn.Module, path: str | Path, flag: str = "--weights") -> str:
    """Load ``path`` into ``model`` in place; returns the file's SHA-256 (the release records it).
    ``flag`` names the option the file came from, in errors."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{flag} {path} does not exist")
    state = _unwrap(_read(path, flag), path, flag)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        what = (
            f"it has no {missing[0]!r}"
            if missing
            else f"it has {unexpected[0]!r}, which the model has not"
            if unexpected
            else f"{wrong[0]!r} is {tuple(state[wrong[0]].shape)}, the model's is "
            f"{tuple(expected[wrong[0]].shape)}"
        )
        raise ModelFileError(f"{flag} {path} does not fit this architecture: {what}")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    return sha256_file(path)
