"""Models from torchvision and timm by name: ``tv:resnet50``, ``timm:efficientnet_b0`` (random init).

They are optional (``pip install 'passportnorm[zoo]'``). torchvision's wheels on PyPI are CUDA
builds; next to the CPU torch wheel their compiled ops (detection's nms, roi_align, ...) cannot
load, and ``import torchvision`` fails while registering fake kernels for those missing ops.
Classification models are plain Python and need none of them, so :func:`import_torchvision`
imports torchvision without that registration when the ops are absent (timm imports torchvision
too). Detection ops then raise when called; nothing here calls them.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

from torch import nn

from ..errors import ConfigError

__all__ = ["HUB_PREFIXES", "build_hub_model", "import_timm", "import_torchvision", "is_hub_model"]

HUB_PREFIXES = ("tv:", "timm:")
_INSTALL = (
    "pip install 'passportnorm[zoo]' "
    "(with the CPU torch wheel, the torchvision release made for it: see README)"
)


def is_hub_model(name: str) -> bool:
    return name.startswith(HUB_PREFIXES)


def import_torchvision() -> types.ModuleType:
    """``torchvision``, imported without its compiled ops where they cannot load (CPU torch wheel)."""
    try:
        return importlib.import_module("torchvision")
    except ModuleNotFoundError as error:
        raise ConfigError(f"torchvision is not installed: {_INSTALL}") from error
    except RuntimeError as error:
        if "torchvision::" not in str(error):
            raise
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]  # the half-imported package, so the second import starts clean
    sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
    return importlib.import_module("torchvision")


def import_timm() -> types.ModuleType:
    import_torchvision()
    try:
        return importlib.import_module("timm")
    except ModuleNotFoundError as error:
        raise ConfigError(f"timm is not installed: {_INSTALL}") from error


def _first_conv(model: nn.Module) -> tuple[str, nn.Conv2d] | None:
    return next(((path, m) for path, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)


def _adapt_input_channels(model: nn.Module, in_channels: int, name: str) -> nn.Module:
    """Give a torchvision model's stem ``in_channels`` inputs (grayscale data): same conv, other width."""
    found = _first_conv(model)
    if found is None or found[1].in_channels == in_channels:
        return model
    path, conv = found
    if conv.groups != 1:
        raise ConfigError(
            f"{name}: its first convolution {path!r} is grouped; cannot give it {in_channels} input channels"
        )
    stem = nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,  # type: ignore[arg-type]  # a conv's own (h, w) tuples, typed tuple[int, ...]
        conv.stride,  # type: ignore[arg-type]
        conv.padding,  # type: ignore[arg-type]
        conv.dilation,  # type: ignore[arg-type]
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )
    model.set_submodule(path, stem)
    return model


def build_hub_model(name: str, in_channels: int = 3, num_classes: int = 1000, **ignored: Any) -> nn.Module:
    """A randomly initialised torchvision (``tv:NAME``) or timm (``timm:NAME``) classifier.

    ``width`` and ``norm`` of the built-in zoo do not apply and are ignored; use the user's own
    trained weights through a weights file rather than a download (nothing is fetched here).
    """
    source, _, model_name = name.partition(":")
    if source == "tv":
        models = import_torchvision().models
        if model_name not in models.list_models(module=models):
            raise ConfigError(
                f"torchvision has no classification model {model_name!r}; "
                "see torchvision.models.list_models()"
            )
        model = models.get_model(model_name, weights=None, num_classes=num_classes)
        return _adapt_input_channels(model, in_channels, name)
    timm = import_timm()
    if not timm.is_model(model_name):
        raise ConfigError(f"timm has no model {model_name!r}; see timm.list_models()")
    return timm.create_model(model_name, pretrained=False, num_classes=num_classes, in_chans=in_channels)
