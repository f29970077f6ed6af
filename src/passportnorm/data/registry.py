"""Look datasets up by name; each loader returns train/test splits as tensors."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import TensorDataset

from ..errors import ConfigError, DatasetError

__all__ = ["DatasetSplits", "register_dataset", "available_datasets", "dataset_task", "load_dataset"]


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
    task: str = "image"  # or "pointcloud": inputs are clouds (3, points)


_LOADERS: dict[str, Callable[..., DatasetSplits]] = {}
_TASKS: dict[str, str] = {}


def register_dataset(name: str, task: str = "image") -> Callable[[Callable[..., DatasetSplits]], Callable[..., DatasetSplits]]:
    """Register ``loader(data_dir, seed[, points])`` as ``name``; point-cloud loaders take ``points``."""

    def add(loader: Callable[..., DatasetSplits]) -> Callable[..., DatasetSplits]:
        _LOADERS[name] = loader
        _TASKS[name] = task
        return loader

    return add


def _register_builtin() -> None:
    from . import cifar, modelnet, point_sets, shipped  # noqa: F401  (importing them registers their datasets)


def available_datasets() -> list[str]:
    _register_builtin()
    return sorted(_LOADERS)


def dataset_task(name: str) -> str:
    """``image`` or ``pointcloud``: what the dataset ``name`` holds."""
    _register_builtin()
    if name not in _TASKS:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(available_datasets())}")
    return _TASKS[name]


def load_dataset(
    name: str, data_dir: str | Path | None = None, seed: int = 0, points: int | None = None
) -> DatasetSplits:
    """The dataset called ``name``; ``data_dir`` for those read from a local folder, ``points`` (N
    points per cloud) for point clouds."""
    if dataset_task(name) == "pointcloud":
        return _LOADERS[name](data_dir=data_dir, seed=seed, points=points)
    if points:
        raise ConfigError(f"dataset {name!r} holds images; --points applies to point-cloud datasets only")
    return _LOADERS[name](data_dir=data_dir, seed=seed)
