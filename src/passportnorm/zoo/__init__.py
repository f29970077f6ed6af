"""Models by name: ``passportnorm.zoo.build("small_cnn", in_channels=1, num_classes=10)``."""

from .registry import available_models, build, register_model
from . import alexnet, resnet, small_cnn  # noqa: F401  (registers)

__all__ = ["available_models", "build", "register_model"]
