"""A name -> builder registry, in the manner of timm's, so the CLI can build models by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from ..errors import ConfigError
from ..registry import Registry
from .hf import build_hf_model, hf_task, is_hf_model
from .hub import build_hub_model, is_hub_model
from .user_code import build_user_model, is_user_code

__all__ = [
    "MODELS",
    "register_model",
    "available_models",
    "build",
    "model_recipe",
    "model_task",
    "size_options",
    "TASKS",
]

TASKS = ("image", "pointcloud", "text")  # the datasets' tasks

MODELS: Registry[Callable[..., nn.Module]] = Registry(
    "model",
    modules=tuple(
        f"passportnorm.zoo.{name}" for name in ("alexnet", "gpt", "pointnet", "resnet", "small_cnn", "vit")
    ),
    hint="or tv:NAME / timm:NAME / hf:TYPE (torchvision, timm, transformers)",
)


def register_model(
    name: str, task: str = "image", **recipe: Any
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register ``builder`` as ``name``; ``task`` says what input it reads (images or point clouds),
    ``recipe`` how it trains where that differs from the CNNs' SGD (``optimizer="adam", lr=...``)."""
    return MODELS.register(name, task=task, **({"recipe": recipe} if recipe else {}))


def model_recipe(name: str) -> dict[str, Any]:
    """The training recipe registered with the zoo model ``name`` (``optimizer``, ``lr``); empty for
    the CNNs, hub models and the user's own (the task's SGD defaults)."""
    if is_hub_model(name) or is_hf_model(name) or is_user_code(name):
        return {}
    return dict(MODELS.traits(name).get("recipe", {}))


def available_models() -> list[str]:
    return sorted(MODELS.names())


def model_task(name: str) -> str:
    """``image``, ``pointcloud`` or ``text`` (token ids): the kind of input the model ``name`` reads
    (the user's own: any)."""
    if is_hub_model(name):
        return "image"
    if is_hf_model(name):
        return hf_task(name)
    if is_user_code(name):
        return "any"
    return MODELS.traits(name)["task"]


def size_options(name: str, input_shape: tuple[int, ...]) -> dict[str, int]:
    """What the model ``name`` must be told of its input's size to be built: a transformers vision
    model its ``image_size`` (its position embeddings are sized for it); the rest, nothing."""
    if is_hf_model(name) and model_task(name) == "image":
        return {"image_size": int(input_shape[-1])}
    return {}


def build(name: str, trust_code: bool = False, **cfg) -> nn.Module:
    """The model registered as ``name``, built with ``cfg`` (in_channels, num_classes, width, norm ...);
    ``tv:NAME`` and ``timm:NAME`` build torchvision and timm classifiers (see hub.py), ``hf:TYPE``
    a small transformers model (hf.py), and
    ``file.py:factory`` / ``module:factory`` the user's own, only with ``trust_code`` (user_code.py)."""
    if is_hub_model(name):
        return build_hub_model(name, **cfg)
    if is_hf_model(name):
        return build_hf_model(name, **cfg)
    if is_user_code(name):
        if not trust_code:
            raise ConfigError(
                f"{name!r} names user code; passportnorm runs it only when you name it yourself "
                f"(--arch {name})"
            )
        return build_user_model(name, **cfg)
    builder = MODELS[name]
    try:
        return builder(**cfg)
    except TypeError as error:
        raise ConfigError(f"model {name!r} does not accept these options: {error}") from error
