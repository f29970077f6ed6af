"""Released-model folders: ``model.safetensors`` (the stripped weights) + ``model.json`` (how to build it).

A released model is the original architecture with the original parameter names, so anyone
can load it into the zoo model named in ``model.json``. Loading never unpickles anything.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from torch import nn

from . import zoo
from .channels import resize_module
from .errors import ModelFileError, PassportNormError
from .fileio import (
    atomic_folder,
    load_tensors,
    read_folder_manifest,
    save_tensors,
    tensors_fingerprint,
    write_json_atomic,
)
from .protect import is_protected
from .weights import load_weights
from .zoo.user_code import is_user_code

__all__ = ["RELEASED_FORMAT", "load_model_like", "load_released", "released_fingerprint", "save_released"]

RELEASED_FORMAT = "passportnorm.released-model"
RELEASED_VERSION = 1


def released_fingerprint(model: nn.Module) -> str:
    """SHA-256 of a model's weights (state dict): the identity a certificate commits to."""
    return tensors_fingerprint(model.state_dict())


def save_released(
    model: nn.Module, folder: str | Path, arch: str, model_config: dict[str, Any], **extra: Any
) -> Path:
    """Write a released (stripped) zoo model; ``extra`` goes into model.json (dataset, seed ...)."""
    if is_protected(model):
        raise ModelFileError(
            "refusing to release a model that still carries passport-aware branches; strip() it first"
        )
    folder = Path(folder)
    with atomic_folder(folder) as staging:
        save_tensors(model.state_dict(), staging / "model.safetensors")
        write_json_atomic(
            staging / "model.json",
            {
                "format": RELEASED_FORMAT,
                "version": RELEASED_VERSION,
                "arch": arch,
                "model_config": model_config,
                "sha256_weights": released_fingerprint(model),
                **extra,
            },
        )
    return folder


def _reshape(model: nn.Module, state: dict[str, Any], paths: list[str], meta_path: Path) -> None:
    """Give the modules model.json lists as reshaped (a widened model, attacks/dummy.py) the widths
    of their tensors in the file; every other module must fit the architecture as built."""
    modules = dict(model.named_modules())
    for path in paths:
        if path not in modules:
            raise ModelFileError(
                f"{meta_path} lists reshaped module {path!r}, which {type(model).__name__} lacks"
            )
        prefix = f"{path}." if path else ""
        local = {
            k[len(prefix) :]: v
            for k, v in state.items()
            if k.startswith(prefix) and "." not in k[len(prefix) :]
        }
        resize_module(modules[path], local)


def _refuse_quantized(path: Path, state: dict[str, Any], expected: dict[str, Any]) -> None:
    """Integer weights where the architecture has float ones: a quantized model, which loading would
    silently turn into nonsense floats."""
    for name, value in state.items():
        if name in expected and expected[name].is_floating_point() and not value.is_floating_point():
            raise ModelFileError(
                f"{path} holds {name!r} as {str(value.dtype).replace('torch.', '')}: a quantized model; "
                "dequantize it into the float architecture first (`passportnorm attack quantize` writes "
                "model/ that way), then verify with --reference"
            )
        if name.endswith(("scale", "zero_point", "_packed_params")) and name not in expected:
            raise ModelFileError(
                f"{path} has {name!r}: a quantized model's state; dequantize it into the float architecture "
                "first (`passportnorm attack quantize` writes model/ that way), then verify with --reference"
            )


def load_released(folder: str | Path, trusted_arch: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """(model, model.json) from a released-model folder; every failure is one ModelFileError line.

    A folder naming the user's own model code (``file.py:factory``) is rebuilt only when the
    caller passes that same name as ``trusted_arch``: a model.json alone never runs code.
    """
    folder = Path(folder)
    meta_path, weights_path = folder / "model.json", folder / "model.safetensors"
    meta = read_folder_manifest(
        folder,
        "model.json",
        "model.safetensors",
        RELEASED_FORMAT,
        RELEASED_VERSION,
        ModelFileError,
        "a passportnorm released model",
    )
    try:
        state = load_tensors(weights_path)
    except ValueError as error:
        raise ModelFileError(f"{weights_path}: {error}") from error
    arch = meta.get("arch", "")
    if is_user_code(arch) and trusted_arch != arch:
        raise ModelFileError(
            f"{meta_path} names user code {arch!r}, which passportnorm runs only when you name it: "
            f"pass --arch {arch}"
        )
    try:
        model = zoo.build(arch, trust_code=trusted_arch == arch, **meta.get("model_config", {}))
    except (KeyError, PassportNormError) as error:
        raise ModelFileError(f"{meta_path}: cannot build the model it names ({error})") from error
    _reshape(model, state, meta.get("reshaped_modules", []), meta_path)
    expected = model.state_dict()
    _refuse_quantized(weights_path, state, expected)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        what = (
            f"missing {missing[0]!r}"
            if missing
            else f"unexpected {unexpected[0]!r}"
            if unexpected
            else f"{wrong[0]!r} has shape {tuple(state[wrong[0]].shape)}, {meta['arch']} needs "
            f"{tuple(expected[wrong[0]].shape)}"
        )
        raise ModelFileError(f"{weights_path} does not fit {meta['arch']} {meta.get('model_config')}: {what}")
    model.load_state_dict(state)
    return model, meta


def load_model_like(path: str | Path, like: nn.Module, trusted_arch: str | None = None) -> nn.Module:
    """A model read from ``path``: a released-model folder, or a weights file (safetensors, or a
    state dict read with ``weights_only``) loaded into a copy of ``like``'s architecture. For the
    ancestor of a retrofit, which may be a public checkpoint rather than a passportnorm release."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"--ancestor {path} does not exist; give the released folder or weights file")
    if path.is_dir():
        return load_released(path, trusted_arch=trusted_arch)[0].eval()
    model = copy.deepcopy(like)
    load_weights(model, path, flag="--ancestor")
    return model.eval()
