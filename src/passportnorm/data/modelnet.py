"""ModelNet40 from a folder the user names, in either widely used format.

- HDF5 (PointNet's ``modelnet40_ply_hdf5_2048``): ``ply_data_train*.h5`` and ``ply_data_test*.h5``,
  each with ``data`` (shapes, points, 3) and ``label`` (shapes,) or (shapes, 1).
- Resampled text (PointNet++'s ``modelnet40_normal_resampled``): ``modelnet40_shape_names.txt``,
  ``modelnet40_train.txt`` and ``modelnet40_test.txt`` listing shape ids such as ``airplane_0001``,
  and one ``<class>/<id>.txt`` per shape with ``x,y,z,nx,ny,nz`` lines; each cloud is centred
  and scaled into the unit sphere, as PointNet++ does.

Each cloud keeps its first N points (``points``, default 1024, the paper's setting): both formats
store points in an order that makes any prefix a fair sample. Only coordinates are used.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset
from tqdm import tqdm

from ..errors import DatasetError
from .augment import PointCloudAugment
from .registry import DatasetSplits, register_dataset

CLASSES = 40
DEFAULT_POINTS = 1024
HDF5_DIR = "modelnet40_ply_hdf5_2048"
TEXT_DIR = "modelnet40_normal_resampled"


def _check_labels(labels: np.ndarray, where: str) -> np.ndarray:
    if labels.size and (labels.min() < 0 or labels.max() >= CLASSES):
        bad = int(labels.max() if labels.max() >= CLASSES else labels.min())
        raise DatasetError(
            f"{where}: label {bad} out of range for {CLASSES} classes (expected 0..{CLASSES - 1})"
        )
    return labels


def _read_hdf5(path: Path, points: int) -> tuple[np.ndarray, np.ndarray]:
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            if "data" not in handle or "label" not in handle:
                raise DatasetError(
                    f"{path}: needs datasets 'data' and 'label', found {sorted(handle.keys())}"
                )
            data, labels = handle["data"], handle["label"]
            if data.ndim != 3 or data.shape[2] < 3:
                raise DatasetError(f"{path}: 'data' has shape {data.shape}, expected (shapes, points, 3)")
            if data.shape[1] < points:
                raise DatasetError(
                    f"{path}: clouds have {data.shape[1]} points, fewer than --points {points}; lower "
                    "--points"
                )
            clouds = np.asarray(data[:, :points, :3], dtype=np.float32)
            labels = np.asarray(labels).astype(np.int64)
    except OSError as error:
        raise DatasetError(f"{path}: not a readable HDF5 file ({error}); re-download the dataset") from error
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or len(labels) != len(clouds):
        raise DatasetError(
            f"{path}: 'label' has shape {labels.shape}, expected ({len(clouds)},) or ({len(clouds)}, 1)"
        )
    return clouds, _check_labels(labels, str(path))


def _load_hdf5(folder: Path, points: int) -> tuple[TensorDataset, TensorDataset]:
    def read(pattern: str) -> TensorDataset:
        files = sorted(folder.glob(pattern))
        parts = [_read_hdf5(f, points) for f in files]
        clouds = np.concatenate([c for c, _ in parts]).transpose(0, 2, 1)
        return TensorDataset(
            torch.from_numpy(np.ascontiguousarray(clouds)),
            torch.from_numpy(np.concatenate([y for _, y in parts])),
        )

    return read("ply_data_train*.h5"), read("ply_data_test*.h5")


def _read_list(path: Path) -> list[str]:
    if not path.is_file():
        raise DatasetError(f"{path} is missing; the resampled ModelNet40 folder needs it")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _unit_sphere(cloud: np.ndarray) -> np.ndarray:
    centred = cloud - cloud.mean(axis=0)
    radius = np.sqrt((centred**2).sum(axis=1)).max()
    return centred / radius if radius > 0 else centred


def _read_text_cloud(path: Path, points: int) -> np.ndarray:
    if not path.is_file():
        raise DatasetError(f"{path} is missing (listed in the split file); re-download the dataset")
    try:
        cloud = np.loadtxt(path, delimiter=",", max_rows=points, dtype=np.float32, ndmin=2)
    except ValueError as error:
        raise DatasetError(f"{path}: not 'x,y,z,nx,ny,nz' lines ({error})") from error
    if cloud.shape[1] < 3:
        raise DatasetError(f"{path}: lines have {cloud.shape[1]} values, expected x,y,z[,nx,ny,nz]")
    if len(cloud) < points:
        raise DatasetError(f"{path}: has {len(cloud)} points, fewer than --points {points}; lower --points")
    return _unit_sphere(cloud[:, :3])


def _load_text(folder: Path, points: int) -> tuple[TensorDataset, TensorDataset]:
    names_file = folder / "modelnet40_shape_names.txt"
    names = _read_list(names_file)
    if len(names) != CLASSES:
        raise DatasetError(f"{names_file}: lists {len(names)} class names, expected {CLASSES}")
    index = {name: i for i, name in enumerate(names)}

    def read(split: str) -> TensorDataset:
        list_file = folder / f"modelnet40_{split}.txt"
        clouds, labels = [], []
        for shape_id in tqdm(_read_list(list_file), desc=f"modelnet40 {split}", unit="shape", leave=False):
            name = shape_id.rsplit("_", 1)[0]
            if name not in index:
                raise DatasetError(
                    f"{list_file}: shape {shape_id!r} has class {name!r}, not in {names_file.name}"
                )
            clouds.append(_read_text_cloud(folder / name / f"{shape_id}.txt", points))
            labels.append(index[name])
        if not clouds:
            raise DatasetError(f"{list_file} lists no shapes")
        data = np.ascontiguousarray(np.stack(clouds).transpose(0, 2, 1))
        return TensorDataset(torch.from_numpy(data), torch.tensor(labels))

    return read("train"), read("test")


def _locate(root: Path) -> tuple[str, Path]:
    for folder in (root / HDF5_DIR, root):
        if any(folder.glob("ply_data_train*.h5")) and any(folder.glob("ply_data_test*.h5")):
            return "hdf5", folder
    for folder in (root / TEXT_DIR, root):
        if (folder / "modelnet40_shape_names.txt").is_file():
            return "text", folder
    raise DatasetError(
        f"modelnet40: no dataset files in {root}: expected {HDF5_DIR}/ply_data_train*.h5 and "
        "ply_data_test*.h5 "
        f"(HDF5 format) or {TEXT_DIR}/modelnet40_shape_names.txt with the train/test lists and class folders "
        "(resampled text format); pass the folder holding one of them as --data-dir"
    )


@register_dataset("modelnet40", task="pointcloud")
def modelnet40(data_dir=None, seed: int = 0, points: int | None = None) -> DatasetSplits:
    """ModelNet40 train/test splits as published (the split is fixed, so ``seed`` does not change it)."""
    if data_dir is None:
        raise DatasetError("modelnet40 is read from a local folder: pass --data-dir (data_dir=) naming it")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DatasetError(
            f"modelnet40: data folder {root} does not exist; pass the folder holding the unpacked archive"
        )
    n = DEFAULT_POINTS if points is None else int(points)
    if n < 1:
        raise DatasetError(f"--points must be at least 1, got {n}")
    kind, folder = _locate(root)
    train, test = (_load_hdf5 if kind == "hdf5" else _load_text)(folder, n)
    return DatasetSplits(
        "modelnet40",
        train,
        test,
        num_classes=CLASSES,
        input_shape=(3, n),
        augment=PointCloudAugment(),
        task="pointcloud",
    )
