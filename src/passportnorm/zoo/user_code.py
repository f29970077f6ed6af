"""The user's own model by name: ``--arch my_models.py:build`` or ``--arch mypackage.models:build``.

The factory is called with the ``in_channels`` and ``num_classes`` it accepts (by name, or all of
them through ``**kwargs``) and must return an ``nn.Module``. Running it runs the user's code, so
it happens only when the user names it: a released-model folder that names user code is rebuilt
only when the verifier passes the same ``--arch`` (see release.py); a model.json alone never
makes passportnorm import anything.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import ConfigError
from .hf import is_hf_model
from .hub import is_hub_model

__all__ = ["build_user_model", "is_user_code"]


def is_user_code(name: str) -> bool:
    """``module:factory`` or ``file.py:factory`` (``tv:``, ``timm:`` and ``hf:`` excepted)."""
    return ":" in name and not is_hub_model(name) and not is_hf_model(name)


def _module_of(target: str, spec: str):
    if target.endswith(".py"):
        path = Path(target).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(
                f"--arch {spec}: {path} does not exist; name a Python file and its factory, file.py:build"
            )
        name = f"passportnorm_user_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"
        if name in sys.modules:
            return sys.modules[name]
        loader_spec = importlib.util.spec_from_file_location(name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise ConfigError(f"{path} cannot be loaded as a Python module; name a .py file")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[name] = module
        try:
            loader_spec.loader.exec_module(module)
        except Exception as error:
            del sys.modules[name]
            raise ConfigError(
                f"--arch {spec}: importing {path} failed ({type(error).__name__}: {error})"
            ) from error
        return module
    try:
        return importlib.import_module(target)
    except ImportError as error:
        raise ConfigError(
            f"--arch {spec}: cannot import {target!r} ({error}); is it on PYTHONPATH?"
        ) from error


def build_user_model(spec: str, in_channels: int = 3, num_classes: int = 10, **ignored: Any) -> nn.Module:
    """Call the user's factory named by ``spec`` with the options it accepts; it must return an nn.Module."""
    target, _, factory_name = spec.rpartition(":")
    if not target or not factory_name:
        raise ConfigError(f"--arch {spec}: expected module.path:factory or path/to/file.py:factory")
    factory = getattr(_module_of(target, spec), factory_name, None)
    if not callable(factory):
        raise ConfigError(f"--arch {spec}: {target} has no callable {factory_name!r}")
    offered = {"in_channels": in_channels, "num_classes": num_classes}
    parameters = inspect.signature(factory).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    model = factory(**{k: v for k, v in offered.items() if takes_any or k in parameters})
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"--arch {spec}: the factory returned a {type(model).__name__}, not a torch.nn.Module"
        )
    return model
