"""Models by name: ``passportnorm.zoo.build("small_cnn", in_channels=1, num_classes=10)``."""

from .registry import TASKS, available_models, build, model_task, register_model
from . import alexnet, pointnet, resnet, small_cnn  # noqa: F401  (registers)

__all__ = ["TASKS", "available_models", "build", "model_task", "register_model"]
