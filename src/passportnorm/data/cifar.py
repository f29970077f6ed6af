"""CIFAR-10 and CIFAR-100 from a folder the user names, in the official binary or python format.

The python format is pickled; it is read with an unpickler that builds only numpy arrays and
plain containers, so a tampered file cannot run code.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import TensorDataset

from ..errors import DatasetError
from .augment import RandomCropFlip
from .registry import DatasetSplits, register_dataset

CIFAR_MEAN = np.array([0.4914, 0.4822, 0.4465], dtype=np.float32)
CIFAR_STD = np.array([0.2470, 0.2435, 0.2616], dtype=np.float32)
RECORD = 3 * 32 * 32


class _Binary(NamedTuple):
    folder: str
    train: list[str]
    test: str
    label_bytes: int
    label_index: int


class _Python(NamedTuple):
    folder: str
    train: list[str]
    test: str
    label_key: bytes


class _Layout(NamedTuple):
    """Where the official archives put their files: the binary and the python version."""

    binary: _Binary
    python: _Python
    classes: int


LAYOUTS = {
    "cifar10": _Layout(
        _Binary("cifar-10-batches-bin", [f"data_batch_{i}.bin" for i in range(1, 6)], "test_batch.bin", 1, 0),
        _Python("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch", b"labels"),
        10,
    ),
    "cifar100": _Layout(
        _Binary("cifar-100-binary", ["train.bin"], "test.bin", 2, 1),
        _Python("cifar-100-python", ["train"], "test", b"fine_labels"),
        100,
    ),
}


class _ArraysOnly(pickle.Unpickler):
    """Unpickles numpy arrays, bytes, numbers, lists and dicts; refuses every other global."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_python_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _ArraysOnly(io.BytesIO(path.read_bytes()), encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except (pickle.UnpicklingError, KeyError, EOFError, ValueError, TypeError) as error:
        raise DatasetError(f"{path}: not a CIFAR python batch ({error}); re-download the dataset") from error
    if data.ndim != 2 or data.shape[1] != RECORD or len(labels) != len(data):
        raise DatasetError(f"{path}: data has shape {data.shape}, expected (N, {RECORD}) with N labels")
    return data, labels


def _read_binary_batch(path: Path, label_bytes: int, label_index: int) -> tuple[np.ndarray, np.ndarray]:
    raw = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    width = label_bytes + RECORD
    if raw.size == 0 or raw.size % width:
        raise DatasetError(f"{path}: {raw.size} bytes is not a whole number of {width}-byte CIFAR records")
    records = raw.reshape(-1, width)
    return records[:, label_bytes:].copy(), records[:, label_index].astype(np.int64)


def _find(root: Path, name: str) -> tuple[list[tuple[np.ndarray, np.ndarray]], tuple[np.ndarray, np.ndarray]]:
    binary, python, _ = LAYOUTS[name]
    bin_dir, bin_train, bin_test = binary.folder, binary.train, binary.test
    py_dir, py_train, py_test = python.folder, python.train, python.test
    for folder in (root / bin_dir, root):
        if all((folder / f).is_file() for f in bin_train + [bin_test]):
            batches = [
                _read_binary_batch(folder / f, binary.label_bytes, binary.label_index) for f in bin_train
            ]
            return batches, _read_binary_batch(folder / bin_test, binary.label_bytes, binary.label_index)
    for folder in (root / py_dir, root):
        if all((folder / f).is_file() for f in py_train + [py_test]):
            batches = [_read_python_batch(folder / f, python.label_key) for f in py_train]
            return batches, _read_python_batch(folder / py_test, python.label_key)
    raise DatasetError(
        f"{name}: no dataset files in {root}: expected {bin_dir}/{{{', '.join(bin_train)}, {bin_test}}} "
        f"(binary version) or {py_dir}/{{{', '.join(py_train)}, {py_test}}} (python version); "
        "download the official archive, unpack it there, and pass that folder as --data-dir"
    )


def _to_tensors(data: np.ndarray, labels: np.ndarray, classes: int, where: str) -> TensorDataset:
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise DatasetError(f"{where}: label {int(labels.max())} out of range for {classes} classes")
    images = data.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0
    images = (images - CIFAR_MEAN[None, :, None, None]) / CIFAR_STD[None, :, None, None]
    return TensorDataset(torch.from_numpy(images), torch.from_numpy(labels))


def load_cifar(name: str, data_dir) -> DatasetSplits:
    if data_dir is None:
        raise DatasetError(f"{name} is read from a local folder: pass --data-dir (data_dir=) naming it")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DatasetError(
            f"{name}: data folder {root} does not exist; pass the folder holding the unpacked archive"
        )
    classes = LAYOUTS[name].classes
    train_batches, test_batch = _find(root, name)
    train = _to_tensors(
        np.concatenate([d for d, _ in train_batches]),
        np.concatenate([y for _, y in train_batches]),
        classes,
        str(root),
    )
    test = _to_tensors(*test_batch, classes, str(root))
    return DatasetSplits(
        name,
        train,
        test,
        classes,
        (3, 32, 32),
        augment=RandomCropFlip(padding=4, flip=True),
        normalize=lambda x: (
            (x - torch.from_numpy(CIFAR_MEAN)[:, None, None]) / torch.from_numpy(CIFAR_STD)[:, None, None]
        ),
    )


@register_dataset("cifar10")
def cifar10(data_dir=None, seed: int = 0) -> DatasetSplits:
    return load_cifar("cifar10", data_dir)


@register_dataset("cifar100")
def cifar100(data_dir=None, seed: int = 0) -> DatasetSplits:
    return load_cifar("cifar100", data_dir)
