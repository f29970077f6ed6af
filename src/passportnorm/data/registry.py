"""Look datasets up by name; each loader returns train/test splits as tensors."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import TensorDataset

from ..errors import DatasetError

__all__ = ["DatasetSplits", "register_dataset", "available_datasets", "load_dataset"]


@dataclass
class DatasetSplits:
    """Train and test splits of one dataset and what a model needs to know about it."""

    name: str
    train: TensorDataset
    test: TensorDataset
    num_classes: int
    input_shape: tuple[int, ...]
    augment: Any = None  # callable(images, generator) -> images, applied to training batches
    normalize: Any = None  # callable(images in [0, 1]) -> images as the model sees them


_LOADERS: dict[str, Callable[..., DatasetSplits]] = {}


def register_dataset(name: str) -> Callable[[Callable[..., DatasetSplits]], Callable[..., DatasetSplits]]:
    def add(loader: Callable[..., DatasetSplits]) -> Callable[..., DatasetSplits]:
        _LOADERS[name] = loader
        return loader

    return add


def _register_builtin() -> None:
    from . import cifar, shipped  # noqa: F401  (importing them registers their datasets)


def available_datasets() -> list[str]:
    _register_builtin()
    return sorted(_LOADERS)


def load_dataset(name: str, data_dir: str | Path | None = None, seed: int = 0) -> DatasetSplits:
    """The dataset called ``name``; ``data_dir`` for those read from a local folder."""
    _register_builtin()
    if name not in _LOADERS:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(available_datasets())}")
    return _LOADERS[name](data_dir=data_dir, seed=seed)
