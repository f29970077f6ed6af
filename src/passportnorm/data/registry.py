"""Look datasets up by name; each loader returns train/test splits as tensors."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from torch.utils.data import TensorDataset

from ..choices import Task
from ..errors import ConfigError, DatasetError
from ..registry import Registry

__all__ = [
    "DatasetSplits",
    "DATASETS",
    "register_dataset",
    "available_datasets",
    "dataset_task",
    "first_inputs",
    "load_dataset",
    "load_recorded_dataset",
    "recorded_dataset",
]


@dataclass
class DatasetSplits:
    """Train and test splits of one dataset and what a model needs to know about it."""

    name: str
    train: Any  # a TensorDataset, or a dataset decoded on access (an image folder)
    test: Any
    num_classes: int
    input_shape: tuple[int, ...]
    augment: Any = None  # callable(images, generator) -> images, applied to training batches
    normalize: Any = None  # callable(images in [0, 1]) -> images as the model sees them
    task: Task = "image"  # or "pointcloud": clouds (3, points); "text": token ids (context,)


DATASETS: Registry[Callable[..., DatasetSplits]] = Registry(
    "dataset",
    modules=tuple(
        f"passportnorm.data.{name}"
        for name in ("cifar", "image_folder", "modelnet", "point_sets", "shipped", "text")
    ),
    error=DatasetError,
)


def register_dataset(
    name: str, task: str = "image"
) -> Callable[[Callable[..., DatasetSplits]], Callable[..., DatasetSplits]]:
    """Register ``loader(data_dir, seed[, points])`` as ``name``; point-cloud loaders take ``points``."""
    return DATASETS.register(name, task=task)


def available_datasets() -> list[str]:
    return sorted(DATASETS.names())


def dataset_task(name: str) -> Task:
    """``image``, ``pointcloud`` or ``text``: what the dataset ``name`` holds."""
    return cast(Task, DATASETS.traits(name)["task"])


# datasets whose loader takes an image size (decoded and resized on access); the others have a fixed one
RESIZABLE = {"imagefolder"}


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    seed: int = 0,
    points: int | None = None,
    image_size: int | None = None,
) -> DatasetSplits:
    """The dataset called ``name``; ``data_dir`` for those read from a local folder, ``points`` (N
    points per cloud) for point clouds, ``image_size`` for an image folder."""
    task = dataset_task(name)
    if task == "pointcloud":
        return DATASETS[name](data_dir=data_dir, seed=seed, points=points)
    if points:
        raise ConfigError(
            f"dataset {name!r} holds {task} data; --points applies to point-cloud datasets only"
        )
    if name in RESIZABLE:
        return DATASETS[name](
            data_dir=data_dir, seed=seed, **({"image_size": image_size} if image_size else {})
        )
    if image_size:
        raise ConfigError(
            f"dataset {name!r} has a fixed image size; --image-size applies to --dataset imagefolder"
        )
    return DATASETS[name](data_dir=data_dir, seed=seed)


def load_recorded_dataset(name: str, data_dir: str | Path | None, config: dict[str, Any]) -> DatasetSplits:
    """The dataset a key or release was made on, as its config recorded it (seed, points, image size)."""
    return load_dataset(
        name,
        data_dir,
        seed=config.get("seed", 0),
        points=config.get("points") or None,
        image_size=config.get("image_size") or None,
    )


def recorded_dataset(
    config: dict[str, Any],
    dataset: str | None = None,
    data_dir: str | Path | None = None,
    fallback: dict[str, Any] | None = None,
    missing: str = "no dataset recorded; pass --dataset",
) -> DatasetSplits:
    """The dataset a key or release was made on: ``dataset`` when named, else the one ``config`` (then
    ``fallback``) records, read as it was recorded; neither named nor recorded is one line (``missing``)."""
    name = dataset or config.get("dataset") or (fallback or {}).get("dataset")
    if name is None:
        raise ConfigError(missing)
    return load_recorded_dataset(name, data_dir or config.get("data_dir"), config)


def first_inputs(dataset: Any, count: int) -> Any:
    """The first ``count`` inputs of a dataset as one batch (tensors in memory, or decoded on access)."""
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[0][:count]
    import torch

    return torch.stack([dataset[i][0] for i in range(min(count, len(dataset)))])
