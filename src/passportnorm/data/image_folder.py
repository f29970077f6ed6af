"""The user's own images: one folder per class, read lazily (``--dataset imagefolder --data-dir DIR``).

Layout: ``DIR/train/<class>/*.png`` and ``DIR/val/<class>/...`` when both exist, else
``DIR/<class>/...`` split into train and validation with the seed (a fifth for validation,
per class). Images are decoded on demand in the DataLoader's worker processes, so the folder
may be far larger than memory. Training images get the usual augmentation (resize the shorter
side, random crop, horizontal flip), validation images a resize and a centre crop; both are
normalized with the mean and std this module states (ImageNet's, the convention of the models
people start from). Randomness is drawn from ``(seed, epoch, index)``, so a resumed run sees
the same crops as an uninterrupted one, whatever the number of workers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import DatasetError
from .registry import DatasetSplits, register_dataset

__all__ = ["IMAGE_EXTENSIONS", "IMAGENET_MEAN", "IMAGENET_STD", "ImageFolder", "load_image_folder"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VALIDATION_SHARE = 0.2
RESIZE_RATIO = 1.14  # shorter side resized to size * 1.14 before the crop (256 for 224)


class ImageFolder(Dataset):
    """``(path, label)`` samples decoded on access: training crops and flips, or the centre crop."""

    def __init__(
        self, samples: list[tuple[Path, int]], classes: list[str], size: int, train: bool, seed: int
    ):
        self.samples, self.classes, self.size, self.train, self.seed = samples, classes, size, train, seed
        self.epoch = 0
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def set_epoch(self, epoch: int) -> None:
        """Which epoch's crops and flips to draw (the Trainer sets it before each epoch's loader)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path, label = self.samples[index]
        try:
            with Image.open(path) as opened:
                image = opened.convert("RGB")
        except (OSError, UnidentifiedImageError) as error:
            raise DatasetError(f"cannot read image {path}: {error}; remove or replace the file") from None
        rng = np.random.default_rng([self.seed, self.epoch, index])
        image = self._resized(image)
        left, top = self._crop_corner(image, rng)
        image = image.crop((left, top, left + self.size, top + self.size))
        if self.train and rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (pixels - self.mean) / self.std, label

    def _resized(self, image: Image.Image) -> Image.Image:
        short = max(self.size, round(self.size * RESIZE_RATIO))
        width, height = image.size
        scale = short / min(width, height)
        return image.resize(
            (max(self.size, round(width * scale)), max(self.size, round(height * scale))),
            Image.Resampling.BILINEAR,
        )

    def _crop_corner(self, image: Image.Image, rng: np.random.Generator) -> tuple[int, int]:
        spare_x, spare_y = image.size[0] - self.size, image.size[1] - self.size
        if self.train:
            return int(rng.integers(0, spare_x + 1)), int(rng.integers(0, spare_y + 1))
        return spare_x // 2, spare_y // 2


def _class_folders(root: Path) -> list[Path]:
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DatasetError(
            f"{root} has no class folders; put each class's images in a folder of its own "
            f"({root}/<class>/image.png, or {root}/train/<class>/ and {root}/val/<class>/)"
        )
    return folders


def _images_of(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    for (
        path
    ) in files:  # the header only: a folder that cannot be read fails now, naming the file, not mid-epoch
        try:
            with Image.open(path) as image:
                image.size  # noqa: B018
        except (OSError, UnidentifiedImageError) as error:
            raise DatasetError(f"cannot read image {path}: {error}; remove or replace the file") from None
    return files


def _samples(root: Path, classes: list[str]) -> list[tuple[Path, int]]:
    samples = []
    for label, name in enumerate(classes):
        images = _images_of(root / name)
        if not images:
            raise DatasetError(f"class folder {root / name} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        samples += [(path, label) for path in images]
    return samples


def load_image_folder(data_dir: str | Path | None, seed: int = 0, image_size: int = 64) -> DatasetSplits:
    """Train and validation splits of an image folder (see the module docstring for the layout)."""
    if data_dir is None:
        raise DatasetError(
            "--dataset imagefolder reads your images: give --data-dir DIR (one folder per class)"
        )
    root = Path(data_dir)
    if not root.is_dir():
        raise DatasetError(f"--data-dir {root} is not a folder")
    if (root / "train").is_dir() and (root / "val").is_dir():
        classes = [p.name for p in _class_folders(root / "train")]
        train, val = _samples(root / "train", classes), _samples(root / "val", classes)
    else:
        classes = [p.name for p in _class_folders(root)]
        train, val = _split(_samples(root, classes), len(classes), seed)
    return DatasetSplits(
        "imagefolder",
        ImageFolder(train, classes, image_size, train=True, seed=seed),
        ImageFolder(val, classes, image_size, train=False, seed=seed),
        len(classes),
        (3, image_size, image_size),
        normalize=imagenet_normalize,
    )


def imagenet_normalize(pixels: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1], channels first, as the models see them (ImageNet's mean and std)."""
    return (pixels - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)


def _split(samples: list[tuple[Path, int]], classes: int, seed: int) -> tuple[list, list]:
    """A fifth of each class (at least one image) for validation, chosen with ``seed``."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in range(classes):
        mine = [s for s in samples if s[1] == label]
        order = rng.permutation(len(mine))
        cut = max(1, int(round(len(mine) * VALIDATION_SHARE))) if len(mine) > 1 else 0
        val += [mine[i] for i in order[:cut]]
        train += [mine[i] for i in order[cut:]]
    return train, val


register_dataset("imagefolder")(load_image_folder)
