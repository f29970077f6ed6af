"""Point-cloud datasets that need no download, so point-cloud runs work everywhere.

- ``mnist5k-points``: each shipped MNIST digit as a cloud: N points drawn from its ink with
  probability proportional to pixel intensity, placed uniformly inside the drawn pixel
  (x, y in [-1, 1]) with z = the pixel's intensity in [0, 1]. Same stratified split as mnist5k.
- ``shapes3d``: seeded procedural shapes (see ``shapes.py``), 8 classes, 200 train / 50 test each.
"""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from ..errors import DatasetError
from .augment import PointCloudAugment
from .registry import DatasetSplits, register_dataset
from .shapes import SHAPES, sample_shapes
from .shipped import _split, mnist_pixels

DEFAULT_POINTS = 256


def _points(points: int | None) -> int:
    n = DEFAULT_POINTS if points is None else int(points)
    if n < 1:
        raise DatasetError(f"--points must be at least 1, got {n}")
    return n


def digits_as_points(pixels: torch.Tensor, points: int, gen: torch.Generator) -> torch.Tensor:
    """Clouds ``(count, 3, points)`` from 28x28 images given as ``(count, 784)`` intensities in [0, 255]."""
    weights = pixels.float().clamp_min(0)
    empty = weights.sum(dim=1) == 0
    weights[empty] = 1.0  # a blank image becomes a uniform cloud rather than an error
    index = torch.multinomial(weights, points, replacement=True, generator=gen)
    rows, cols = (index // 28).float(), (index % 28).float()
    x = (cols + torch.rand(index.shape, generator=gen)) / 14 - 1
    y = 1 - (rows + torch.rand(index.shape, generator=gen)) / 14
    z = torch.gather(pixels.float(), 1, index) / 255.0
    return torch.stack([x, y, z], dim=1)


@register_dataset("mnist5k-points", task="pointcloud")
def mnist5k_points(data_dir=None, seed: int = 0, points: int | None = None) -> DatasetSplits:
    """MNIST-5k digits as point clouds; the point draw is seeded and fixed (augmentation adds variety)."""
    n = _points(points)
    pixels, labels = mnist_pixels()
    clouds = digits_as_points(torch.tensor(pixels), n, torch.Generator().manual_seed(20170))
    train, test = _split(clouds.numpy(), labels.astype("int64"), test_size=1000, seed=seed)
    return DatasetSplits(
        "mnist5k-points",
        train,
        test,
        num_classes=10,
        input_shape=(3, n),
        augment=PointCloudAugment(),
        task="pointcloud",
    )


@register_dataset("shapes3d", task="pointcloud")
def shapes3d(
    data_dir=None,
    seed: int = 0,
    points: int | None = None,
    train_per_class: int = 200,
    test_per_class: int = 50,
) -> DatasetSplits:
    """Procedural shapes; ``seed`` picks the draw, so every seed is a fresh sample of the same
    distribution."""
    n = _points(points)
    gen = torch.Generator().manual_seed(3_000_017 + seed)
    classes = len(SHAPES)

    def draw(per_class: int) -> TensorDataset:
        labels = torch.arange(classes).repeat_interleave(per_class)
        labels = labels[torch.randperm(len(labels), generator=gen)]
        return TensorDataset(sample_shapes(labels, n, gen), labels)

    train, test = draw(train_per_class), draw(test_per_class)
    return DatasetSplits(
        "shapes3d",
        train,
        test,
        num_classes=classes,
        input_shape=(3, n),
        augment=PointCloudAugment(),
        task="pointcloud",
    )
