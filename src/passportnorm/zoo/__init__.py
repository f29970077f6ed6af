"""Models by name: ``passportnorm.zoo.build("small_cnn", in_channels=1, num_classes=10)``."""

from .registry import (
    MODELS,
    TASKS,
    available_models,
    build,
    model_recipe,
    model_task,
    register_model,
    size_options,
)

__all__ = [
    "MODELS",
    "TASKS",
    "available_models",
    "build",
    "model_recipe",
    "model_task",
    "register_model",
    "size_options",
]
