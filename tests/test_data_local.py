"""CIFAR loaders on small files in the real formats, written by the tests; trigger sets."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from passportnorm.data import load_dataset
from passportnorm.data.triggers import generate_triggers, load_trigger_folder
from passportnorm.errors import DatasetError


def _images(n, seed):
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3072), dtype=np.uint8)


def _write_cifar10_binary(root, per_batch=4):
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    for name, seed in [(f"data_batch_{i}.bin", i) for i in range(1, 6)] + [("test_batch.bin", 9)]:
        images = _images(per_batch, seed)
        labels = np.arange(per_batch, dtype=np.uint8) % 10
        (folder / name).write_bytes(np.concatenate([labels[:, None], images], axis=1).tobytes())
    return folder


def _write_cifar100_python(root, n=6):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, seed in (("train", 1), ("test", 2)):
        batch = {b"data": _images(n, seed), b"fine_labels": list(range(90, 90 + n)), b"coarse_labels": [0] * n}
        (folder / name).write_bytes(pickle.dumps(batch))
    return folder


def test_cifar10_binary_format(tmp_path):
    folder = _write_cifar10_binary(tmp_path)
    data = load_dataset("cifar10", tmp_path)
    assert (len(data.train), len(data.test)) == (20, 4)
    x, y = data.train.tensors
    assert x.shape == (20, 3, 32, 32) and y.tolist()[:4] == [0, 1, 2, 3]
    raw = np.frombuffer((folder / "data_batch_1.bin").read_bytes(), dtype=np.uint8)[1:3073]
    expected = (raw.reshape(3, 32, 32) / 255.0 - np.array([0.4914, 0.4822, 0.4465])[:, None, None]) / np.array(
        [0.2470, 0.2435, 0.2616]
    )[:, None, None]
    np.testing.assert_allclose(x[0].numpy(), expected, rtol=1e-5, atol=1e-5)
    augmented = data.augment(x[:4], torch.Generator().manual_seed(0))
    assert augmented.shape == x[:4].shape


def test_cifar100_python_format_uses_fine_labels(tmp_path):
    _write_cifar100_python(tmp_path)
    data = load_dataset("cifar100", tmp_path)
    assert data.num_classes == 100 and data.train.tensors[1].tolist() == list(range(90, 96))


def test_cifar_python_batches_are_not_unpickled_blindly(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (folder / "train").write_bytes(pickle.dumps({b"data": Evil(), b"fine_labels": [1]}))
    (folder / "test").write_bytes(pickle.dumps({b"data": Evil(), b"fine_labels": [1]}))
    with pytest.raises(DatasetError, match=r"refusing to load builtins\.print"):
        load_dataset("cifar100", tmp_path)


def test_missing_or_empty_folder_names_the_expected_files(tmp_path):
    with pytest.raises(DatasetError, match=r"data folder .*nowhere does not exist"):
        load_dataset("cifar10", tmp_path / "nowhere")
    with pytest.raises(DatasetError, match=r"cifar-10-batches-bin/\{data_batch_1.bin.*test_batch.bin\}.*--data-dir"):
        load_dataset("cifar10", tmp_path)
    with pytest.raises(DatasetError, match="pass --data-dir"):
        load_dataset("cifar10")


def test_truncated_binary_batch_is_named(tmp_path):
    folder = _write_cifar10_binary(tmp_path)
    (folder / "data_batch_3.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(DatasetError, match=r"data_batch_3.bin: 100 bytes is not a whole number of 3073-byte"):
        load_dataset("cifar10", tmp_path)


def test_generated_triggers_are_seeded():
    a = generate_triggers(10, (1, 28, 28), 10, seed=3, kind="noise")
    b = generate_triggers(10, (1, 28, 28), 10, seed=3, kind="noise")
    c = generate_triggers(10, (1, 28, 28), 10, seed=3, kind="pattern")
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.labels, b.labels)
    assert c.inputs.shape == (10, 1, 28, 28) and set(c.inputs.unique().tolist()) <= {-1.0, 3.0}
    with pytest.raises(DatasetError, match="unknown trigger kind"):
        generate_triggers(3, (1, 8, 8), 10, seed=0, kind="sparkle")


def test_trigger_folder_with_labels_csv(tmp_path):
    for i in range(3):
        Image.fromarray(np.full((10, 12), 40 * i, dtype=np.uint8)).save(tmp_path / f"t{i}.png")
    # file names alone: labels drawn from the (secret) seed, every input a trigger, chance 1/10
    (tmp_path / "labels.csv").write_text("# name\nt0.png\nt1.png\nt2.png\n")
    drawn = load_trigger_folder(tmp_path, (1, 8, 8), 10, normalize=lambda x: x * 2 - 1, seed=5)
    assert drawn.inputs.shape == (3, 1, 8, 8) and drawn.labels_from == "drawn" and drawn.controls is None
    again = load_trigger_folder(tmp_path, (1, 8, 8), 10, normalize=lambda x: x * 2 - 1, seed=5)
    assert torch.equal(drawn.labels, again.labels) and drawn.chance() == (0.1, "labels drawn uniformly at random: 1/10")
    assert torch.allclose(drawn.inputs[0], torch.full((1, 8, 8), -1.0))
    assert torch.allclose(drawn.inputs[1], torch.full((1, 8, 8), 2 * 40 / 255 - 1))
    # the owner's labels: a seeded half held out as controls, never trained on, to measure chance
    (tmp_path / "labels.csv").write_text("# name,label\nt0.png,3\nt1.png,7\nt2.png,0\n")
    chosen = load_trigger_folder(tmp_path, (1, 8, 8), 10, normalize=lambda x: x * 2 - 1, seed=5)
    assert chosen.labels_from == "chosen" and len(chosen) == 2 and len(chosen.controls) == 1
    assert sorted(chosen.labels.tolist() + chosen.control_labels.tolist()) == [0, 3, 7]
    assert chosen.chance()[0] == 1.0  # no control answers: nothing to test the triggers against
    (tmp_path / "labels.csv").write_text("t0.png,3\nt1.png\n")
    with pytest.raises(DatasetError, match="give every line a label, or none"):
        load_trigger_folder(tmp_path, (1, 8, 8), 10, normalize=lambda x: x)
    (tmp_path / "labels.csv").write_text("t0.png,3\n")
    with pytest.raises(DatasetError, match="owner-chosen labels need at least 2 inputs"):
        load_trigger_folder(tmp_path, (1, 8, 8), 10, normalize=lambda x: x)
    (tmp_path / "labels.csv").write_text("t0.png,12\n")
    with pytest.raises(DatasetError, match=r"labels.csv:1: label 12 out of range for 10 classes"):
        load_trigger_folder(tmp_path, (1, 8, 8), 10, normalize=lambda x: x)
    (tmp_path / "labels.csv").unlink()
    with pytest.raises(DatasetError, match="has no labels.csv"):
        load_trigger_folder(tmp_path, (1, 8, 8), 10, normalize=lambda x: x)
