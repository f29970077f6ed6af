"""Trigger sets for black-box evidence (Adi et al., 2018): inputs with owner-chosen labels.

Mixed into training, they teach the released model answers that only the owner can predict;
later, anyone can query a suspect with them, no weights needed.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import DatasetError

__all__ = ["TriggerSet", "generate_triggers", "load_trigger_folder", "TRIGGER_KINDS"]

TRIGGER_KINDS = ("noise", "pattern", "shapes")


@dataclass
class TriggerSet:
    """Trigger inputs (already normalised like the task data) and their owner-chosen labels."""

    inputs: Tensor
    labels: Tensor
    num_classes: int
    source: str

    def __len__(self) -> int:
        return int(self.labels.numel())

    def to(self, device) -> TriggerSet:
        return TriggerSet(self.inputs.to(device), self.labels.to(device), self.num_classes, self.source)


def generate_triggers(
    count: int, input_shape: tuple[int, ...], num_classes: int, seed: int, kind: str = "noise"
) -> TriggerSet:
    """``count`` seeded triggers with uniformly random labels.

    ``noise``: i.i.d. N(0, 1) inputs (images: task data is standardised, so this is its scale;
    point clouds: a Gaussian blob).
    ``pattern`` (images): a flat background with one random block pattern stamped at a random place.
    ``shapes`` (point clouds, ``input_shape`` = (3, points)): procedural 3D shapes, a source
    other than the task's, as the paper swaps in shapes from another dataset.
    """
    if count < 1:
        raise DatasetError(f"a trigger set needs at least 1 trigger, got {count}")
    clouds = len(input_shape) == 2
    if (kind == "pattern" and clouds) or (kind == "shapes" and not clouds):
        fits = "shapes or noise" if clouds else "noise or pattern"
        raise DatasetError(
            f"trigger kind {kind!r} does not fit inputs of shape {tuple(input_shape)}; use {fits}"
        )
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (count,), generator=gen)
    if kind == "noise":
        inputs = torch.randn((count, *input_shape), generator=gen)
    elif kind == "shapes":
        from .shapes import SHAPES, sample_shapes

        inputs = sample_shapes(torch.randint(0, len(SHAPES), (count,), generator=gen), input_shape[1], gen)
    elif kind == "pattern":
        c, h, w = input_shape
        size = max(2, min(h, w) // 3)
        inputs = torch.full((count, c, h, w), -1.0)
        for i in range(count):
            stamp = (torch.rand((c, size, size), generator=gen) > 0.5).float() * 4 - 1
            y = int(torch.randint(0, h - size + 1, (1,), generator=gen))
            x = int(torch.randint(0, w - size + 1, (1,), generator=gen))
            inputs[i, :, y : y + size, x : x + size] = stamp
    else:
        raise DatasetError(
            f"unknown trigger kind {kind!r}; choose one of {', '.join(TRIGGER_KINDS)} or a folder"
        )
    return TriggerSet(inputs, labels, num_classes, f"generated:{kind}:{count}:seed{seed}")


def load_trigger_folder(
    folder: str | Path,
    input_shape: tuple[int, ...],
    num_classes: int,
    normalize: Callable[[Tensor], Tensor],
) -> TriggerSet:
    """Inputs listed in ``folder/labels.csv`` (``filename,label`` per line): images resized to the
    task's shape, or, for point-cloud tasks, clouds as ``.npy`` or text files of ``x,y,z`` lines
    (the first N points are used)."""
    root = Path(folder)
    index = root / "labels.csv"
    if not index.is_file():
        raise DatasetError(f"trigger folder {root} has no labels.csv; add one with lines 'filename,label'")
    read = _read_cloud if len(input_shape) == 2 else _read_image
    images, labels = [], []
    with index.open(newline="") as handle:
        for line, row in enumerate(csv.reader(handle), start=1):
            if not row or row[0].startswith("#"):
                continue
            if len(row) != 2:
                raise DatasetError(f"{index}:{line}: expected 'filename,label', got {','.join(row)!r}")
            name, label = row[0].strip(), row[1].strip()
            try:
                label_value = int(label)
            except ValueError:
                raise DatasetError(f"{index}:{line}: label {label!r} is not an integer") from None
            if not 0 <= label_value < num_classes:
                raise DatasetError(
                    f"{index}:{line}: label {label_value} out of range for {num_classes} classes"
                )
            images.append(read(root / name, input_shape, f"{index}:{line}"))
            labels.append(label_value)
    if not images:
        raise DatasetError(f"{index} lists no inputs")
    inputs = torch.stack(images)
    if normalize is not None and read is _read_image:
        inputs = normalize(inputs)
    return TriggerSet(inputs, torch.tensor(labels), num_classes, f"folder:{root}")


def _read_image(path: Path, input_shape: tuple[int, ...], where: str) -> torch.Tensor:
    from PIL import Image

    c, h, w = input_shape
    try:
        with Image.open(path) as opened:
            image = opened.convert("L" if c == 1 else "RGB").resize((w, h))
            array = np.asarray(image, dtype=np.float32) / 255.0
    except (OSError, ValueError) as error:
        raise DatasetError(f"{where}: cannot read image {path}: {error}") from error
    return torch.from_numpy(array.reshape(h, w, -1)).permute(2, 0, 1)


def _read_cloud(path: Path, input_shape: tuple[int, ...], where: str) -> torch.Tensor:
    channels, points = input_shape
    try:
        if path.suffix == ".npy":
            cloud = np.load(path, allow_pickle=False)
        else:
            cloud = np.loadtxt(
                path, delimiter="," if "," in path.read_text()[:200] else None, dtype=np.float32, ndmin=2
            )
    except (OSError, ValueError) as error:
        raise DatasetError(f"{where}: cannot read point cloud {path}: {error}") from error
    if cloud.ndim != 2 or cloud.shape[1] < channels:
        raise DatasetError(
            f"{where}: {path} has shape {cloud.shape}, expected (points, {channels}) coordinates"
        )
    if len(cloud) < points:
        raise DatasetError(f"{where}: {path} has {len(cloud)} points, fewer than the task's {points}")
    return torch.from_numpy(np.ascontiguousarray(cloud[:points, :channels], dtype=np.float32).T)
