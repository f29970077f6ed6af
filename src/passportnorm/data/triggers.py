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

TRIGGER_KINDS = ("noise", "pattern")


@dataclass
class TriggerSet:
    """Trigger inputs (already normalised like the task data) and their owner-chosen labels."""

    inputs: Tensor
    labels: Tensor
    num_classes: int
    source: str

    def __len__(self) -> int:
        return int(self.labels.numel())

    def to(self, device) -> "TriggerSet":
        return TriggerSet(self.inputs.to(device), self.labels.to(device), self.num_classes, self.source)


def generate_triggers(
    count: int, input_shape: tuple[int, ...], num_classes: int, seed: int, kind: str = "noise"
) -> TriggerSet:
    """``count`` seeded triggers with uniformly random labels.

    ``noise``: i.i.d. N(0, 1) images (task data is standardised, so this is its scale).
    ``pattern``: a flat background with one random 8x8-ish block pattern stamped at a random place.
    """
    if count < 1:
        raise DatasetError(f"a trigger set needs at least 1 trigger, got {count}")
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (count,), generator=gen)
    if kind == "noise":
        inputs = torch.randn((count, *input_shape), generator=gen)
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
        raise DatasetError(f"unknown trigger kind {kind!r}; choose one of {', '.join(TRIGGER_KINDS)} or a folder")
    return TriggerSet(inputs, labels, num_classes, f"generated:{kind}:{count}:seed{seed}")


def load_trigger_folder(
    folder: str | Path,
    input_shape: tuple[int, ...],
    num_classes: int,
    normalize: Callable[[Tensor], Tensor],
) -> TriggerSet:
    """Images listed in ``folder/labels.csv`` (``filename,label`` per line), resized to the task's shape."""
    from PIL import Image

    root = Path(folder)
    index = root / "labels.csv"
    if not index.is_file():
        raise DatasetError(f"trigger folder {root} has no labels.csv; add one with lines 'filename,label'")
    c, h, w = input_shape
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
                raise DatasetError(f"{index}:{line}: label {label_value} out of range for {num_classes} classes")
            try:
                with Image.open(root / name) as image:
                    image = image.convert("L" if c == 1 else "RGB").resize((w, h))
                    array = np.asarray(image, dtype=np.float32) / 255.0
            except (OSError, ValueError) as error:
                raise DatasetError(f"{index}:{line}: cannot read image {root / name}: {error}") from error
            images.append(torch.from_numpy(array.reshape(h, w, -1)).permute(2, 0, 1))
            labels.append(label_value)
    if not images:
        raise DatasetError(f"{index} lists no images")
    inputs = normalize(torch.stack(images))
    return TriggerSet(inputs, torch.tensor(labels), num_classes, f"folder:{root}")
