"""Trigger sets for black-box evidence (Adi et al., 2018): inputs with labels only the owner knows.

Mixed into training, they teach the released model answers that only the owner can predict;
later, anyone can query a suspect with them, no weights needed.

How surprising a match is depends on where the labels came from. Labels drawn uniformly from the
secret seed are independent of the inputs and of every model, so an unrelated model matches each
with chance exactly 1/num_classes. Labels the owner chose (a folder's ``labels.csv``) may be what
any model answers (a cat labelled "cat"), so their null is measured instead: a secret share of the
listed inputs is held out as controls, never trained on, and the suspect's agreement with the
owner's labels on them, at its upper 99% bound, is the chance each trigger is scored against.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import DatasetError

__all__ = [
    "CONTINUATION",
    "UNSCORED",
    "LABELS_CHOSEN",
    "LABELS_DRAWN",
    "TRIGGER_KINDS",
    "TriggerSet",
    "generate_triggers",
    "load_trigger_folder",
    "secret_prompts",
]

TRIGGER_KINDS = ("noise", "pattern", "shapes", "prompts")
UNSCORED = -100  # a label position no answer is scored at (cross_entropy's ignore_index)
CONTINUATION = 8  # tokens of secret continuation after a secret prompt


LABELS_DRAWN = "drawn"  # uniformly from a seed: chance 1/num_classes
LABELS_CHOSEN = "chosen"  # by the owner: chance measured on held-out controls
CONTROL_CONFIDENCE = 0.99  # the null is the control agreement's upper bound at this confidence


@dataclass
class TriggerSet:
    """Trigger inputs (already normalised like the task data), their labels, and where the labels
    came from; owner-chosen labels come with held-out ``controls`` labelled the same way."""

    inputs: Tensor
    labels: Tensor
    num_classes: int
    source: str
    labels_from: str = LABELS_DRAWN
    controls: Tensor | None = None
    control_labels: Tensor | None = None

    def __len__(self) -> int:
        """How many trigger inputs there are (a classifier's: one answer each)."""
        return len(self.inputs)

    @property
    def scored(self) -> int:
        """How many answers are scored: one per input, or a prompt's continuation tokens."""
        return int((self.labels != UNSCORED).sum())

    def hits(self, answers: Tensor, labels: Tensor | None = None) -> int:
        """How many scored ``answers`` (top classes, shaped like the labels) match ``labels``."""
        labels = (self.labels if labels is None else labels).to(answers.device)
        return int(((answers == labels) & (labels != UNSCORED)).sum())

    def to(self, device) -> TriggerSet:
        move = lambda t: None if t is None else t.to(device)
        return replace(
            self,
            inputs=self.inputs.to(device),
            labels=self.labels.to(device),
            controls=move(self.controls),
            control_labels=move(self.control_labels),
        )

    def chance(self, control_answers: Tensor | None = None) -> tuple[float, str]:
        """The chance one trigger is answered with its label by a model unrelated to the owner's,
        and how it was found; for owner-chosen labels, measured on the suspect's control answers."""
        uniform = 1.0 / self.num_classes
        if self.labels_from == LABELS_DRAWN:
            return uniform, f"labels drawn uniformly at random: 1/{self.num_classes}"
        if self.control_labels is None or control_answers is None or not len(self.control_labels):
            return 1.0, "owner-chosen labels and no control answers: nothing to measure chance against"
        from scipy.stats import beta

        n = int((self.control_labels != UNSCORED).sum())
        k = self.hits(control_answers.cpu(), self.control_labels.cpu())
        upper = 1.0 if k == n else float(beta.ppf(CONTROL_CONFIDENCE, k + 1, n - k))
        measured = max(uniform, upper)
        return measured, (
            f"owner-chosen labels: the suspect answers {k}/{n} held-out controls with them; upper "
            f"{CONTROL_CONFIDENCE:.0%} bound {upper:.3g}"
        )


def generate_triggers(
    count: int, input_shape: tuple[int, ...], num_classes: int, seed: int, kind: str = "noise"
) -> TriggerSet:
    """``count`` seeded triggers with uniformly random labels.

    ``noise``: i.i.d. N(0, 1) inputs (images: task data is standardised, so this is its scale;
    point clouds: a Gaussian blob).
    ``pattern`` (images): a flat background with one random block pattern stamped at a random place.
    ``shapes`` (point clouds, ``input_shape`` = (3, points)): procedural 3D shapes, a source
    other than the task's, as the paper swaps in shapes from another dataset.
    ``prompts`` (token ids, ``input_shape`` = (context,)): secret prompts of random tokens, each
    followed by a continuation drawn from the seed too (:func:`secret_prompts`).
    """
    if count < 1:
        raise DatasetError(f"a trigger set needs at least 1 trigger, got {count}")
    _check_kind_fits(kind, input_shape)
    gen = torch.Generator().manual_seed(seed)
    if kind == "prompts":
        return secret_prompts(count, input_shape[0], num_classes, gen, f"generated:{kind}:{count}:seed{seed}")
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


def _check_kind_fits(kind: str, input_shape: tuple[int, ...]) -> None:
    shape = {1: "text", 2: "pointcloud"}.get(len(input_shape), "image")
    fitting = {"image": ("noise", "pattern"), "pointcloud": ("shapes", "noise"), "text": ("prompts",)}[shape]
    if kind in TRIGGER_KINDS and kind not in fitting:
        raise DatasetError(
            f"trigger kind {kind!r} does not fit inputs of shape {tuple(input_shape)}; "
            f"use {' or '.join(fitting)}"
        )


def secret_prompts(
    count: int, context: int, vocabulary: int, gen: torch.Generator, source: str
) -> TriggerSet:
    """``count`` prompts of random tokens, each continued by ``CONTINUATION`` tokens drawn from ``gen``,
    as a language model reads them (teacher forcing): the input is prompt + continuation but its last
    token, and the labels score only the continuation. An unrelated model's answer at a scored place
    depends on tokens drawn before that place's label, so it matches with chance exactly 1/vocabulary."""
    if context <= CONTINUATION:
        raise DatasetError(f"prompts need a context longer than their {CONTINUATION}-token continuation")
    tokens = torch.randint(0, vocabulary, (count, context + 1), generator=gen)
    labels = tokens[:, 1:].clone()
    labels[:, : context - CONTINUATION] = UNSCORED
    return TriggerSet(tokens[:, :-1].clone(), labels, vocabulary, source)


def load_trigger_folder(
    folder: str | Path,
    input_shape: tuple[int, ...],
    num_classes: int,
    normalize: Callable[[Tensor], Tensor],
    seed: int = 0,
) -> TriggerSet:
    """Inputs listed in ``folder/labels.csv``: images resized to the task's shape, or, for
    point-cloud tasks, clouds as ``.npy`` or text files of ``x,y,z`` lines (the first N points).

    A line ``filename`` gets a label drawn from ``seed`` (the secret seed); a line
    ``filename,label`` keeps the owner's label, and then a ``seed``-drawn half of the inputs (at
    least one) is held out as controls, never trained on, to measure the null (module docstring)."""
    root = Path(folder)
    if len(input_shape) == 1:
        raise DatasetError(
            f"trigger folder {root}: a text task's triggers are generated; use --trigger prompts"
        )
    index = root / "labels.csv"
    if not index.is_file():
        raise DatasetError(
            f"trigger folder {root} has no labels.csv; add one with lines 'filename' (labels drawn from "
            "the secret seed) or 'filename,label'"
        )
    read = _read_cloud if len(input_shape) == 2 else _read_image
    images, labels = [], []
    with index.open(newline="") as handle:
        for line, row in enumerate(csv.reader(handle), start=1):
            if not row or row[0].startswith("#"):
                continue
            images.append(read(root / row[0].strip(), input_shape, f"{index}:{line}"))
            labels.append(_label(row, index, line, num_classes))
    if not images:
        raise DatasetError(f"{index} lists no inputs")
    if len({label is None for label in labels}) > 1:
        raise DatasetError(f"{index}: give every line a label, or none (then they are drawn from the seed)")
    inputs = torch.stack(images)
    if normalize is not None and read is _read_image:
        inputs = normalize(inputs)
    gen = torch.Generator().manual_seed(seed)
    if labels[0] is None:
        drawn = torch.randint(0, num_classes, (len(images),), generator=gen)
        return TriggerSet(inputs, drawn, num_classes, f"folder:{root}", LABELS_DRAWN)
    return _with_controls(inputs, torch.tensor(labels), num_classes, f"folder:{root}", gen, index)


def _label(row: list[str], index: Path, line: int, num_classes: int) -> int | None:
    if len(row) == 1 or (len(row) == 2 and not row[1].strip()):
        return None
    if len(row) != 2:
        raise DatasetError(f"{index}:{line}: expected 'filename' or 'filename,label', got {','.join(row)!r}")
    try:
        value = int(row[1].strip())
    except ValueError:
        raise DatasetError(f"{index}:{line}: label {row[1].strip()!r} is not an integer") from None
    if not 0 <= value < num_classes:
        raise DatasetError(f"{index}:{line}: label {value} out of range for {num_classes} classes")
    return value


def _with_controls(
    inputs: Tensor, labels: Tensor, num_classes: int, source: str, gen: torch.Generator, index: Path
) -> TriggerSet:
    """Owner-chosen labels: a seeded half of the inputs held out as controls."""
    if len(labels) < 2:
        raise DatasetError(
            f"{index}: owner-chosen labels need at least 2 inputs (half are held out as controls to "
            "measure chance); list more, or drop the labels to have them drawn from the secret seed"
        )
    order = torch.randperm(len(labels), generator=gen)
    held, kept = order[: len(labels) // 2], order[len(labels) // 2 :]
    return TriggerSet(
        inputs[kept], labels[kept], num_classes, source, LABELS_CHOSEN, inputs[held], labels[held]
    )


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
