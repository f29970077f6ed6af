"""--dataset imagefolder: the user's images, one folder per class, read lazily by DataLoader workers."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from passportnorm.cli import main
from passportnorm.data import load_dataset
from passportnorm.data.image_folder import IMAGENET_MEAN, IMAGENET_STD
from passportnorm.errors import DatasetError

CLASSES = ("cat", "dog", "owl")


def _write(folder, per_class=6, size=(40, 30), classes=CLASSES, seed=0):
    rng = np.random.default_rng(seed)
    for label, name in enumerate(classes):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            pixels[..., label] = 255  # each class has its own bright channel: learnable
            mode = "L" if i == 0 else "RGB"  # a grayscale file among them is converted, not refused
            Image.fromarray(pixels).convert(mode).save(folder / name / f"{i}.png")
    return folder


def test_a_class_per_folder_is_split_by_seed_and_read_on_access(tmp_path):
    root = _write(tmp_path / "pets")
    data = load_dataset("imagefolder", root, seed=0, image_size=16)
    assert (data.num_classes, data.input_shape) == (3, (3, 16, 16))
    assert data.train.classes == list(CLASSES) and len(data.train) + len(data.test) == 18
    assert sorted(label for _, label in data.test.samples) == [0, 1, 2]  # a fifth of each class, at least one
    again = load_dataset("imagefolder", root, seed=0, image_size=16)
    assert data.test.samples == again.test.samples
    x, y = data.train[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and isinstance(y, int)
    torch.testing.assert_close(data.train[0][0], x)  # same epoch and index: the same crop
    data.train.set_epoch(1)
    assert not torch.equal(data.train[0][0], x)  # a new epoch draws new crops
    centre = data.test[0][0]
    torch.testing.assert_close(data.test[0][0], centre)
    raw = torch.from_numpy(
        np.asarray(
            Image.open(data.test.samples[0][0]).convert("RGB").resize((24, 18), Image.BILINEAR),
            dtype=np.float32,
        )
        / 255
    ).permute(2, 0, 1)[:, 1:17, 4:20]
    expected = (raw - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(
        centre, expected
    )  # 40x30: shorter side to 18 (24x18), centre crop 16, ImageNet mean/std


def test_train_and_val_folders_are_used_as_they_are(tmp_path):
    _write(tmp_path / "d" / "train", per_class=4)
    _write(tmp_path / "d" / "val", per_class=2, seed=1)
    data = load_dataset("imagefolder", tmp_path / "d", image_size=16)
    assert (len(data.train), len(data.test)) == (12, 6)


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda root: root.mkdir(), r"has no class folders"),
        (lambda root: (root / "cat").mkdir(parents=True), r"class folder .*cat holds no images"),
        (
            lambda root: (_write(root), (root / "dog" / "9.png").write_bytes(b"not a png")),
            r"cannot read image .*dog/9\.png: .*remove or replace the file",
        ),
    ],
)
def test_bad_folders_are_named(tmp_path, make, message):
    root = tmp_path / "bad"
    make(root)
    with pytest.raises(DatasetError, match=message):
        load_dataset("imagefolder", root, image_size=16)


def test_protect_trains_on_an_image_folder_and_verify_reads_it_again(tmp_path, capsys):
    root = _write(tmp_path / "pets", per_class=10, size=(24, 24))
    out = tmp_path / "run"
    code = main(
        [
            "protect",
            "--dataset",
            "imagefolder",
            "--data-dir",
            str(root),
            "--image-size",
            "16",
            "--arch",
            "small_cnn",
            "--width",
            "1.0",
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--trigger",
            "none",
            "--secret-seed",
            "0",
            "--out",
            str(out),
        ]
    )
    assert code in (0, 1), capsys.readouterr().err  # 24 tiny images decide nothing about the verdict
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["history"]) == 2 and metrics["settings"]["image_size"] == 16
    capsys.readouterr()
    code = main(["verify", "--model", str(out / "released"), "--key", str(out / "owner-key")])
    assert code in (0, 1) and "passport-aware accuracy" in capsys.readouterr().out


def test_an_unreadable_image_stops_the_run_before_anything_is_written(tmp_path, capsys):
    root = _write(tmp_path / "pets")
    (root / "owl" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    out = tmp_path / "run"
    code = main(["protect", "--dataset", "imagefolder", "--data-dir", str(root), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "broken.jpg" in err and not out.exists()


def test_inspect_reads_the_classes_of_an_image_folder(tmp_path, capsys):
    root = _write(tmp_path / "pets", per_class=2)
    assert (
        main(
            [
                "inspect",
                "--arch",
                "small_cnn",
                "--dataset",
                "imagefolder",
                "--data-dir",
                str(root),
                "--image-size",
                "32",
            ]
        )
        == 0
    )
    assert "inputs (3, 32, 32)" in capsys.readouterr().out
    assert main(["inspect", "--dataset", "imagefolder"]) == 2
    assert "give --data-dir DIR" in capsys.readouterr().err


@pytest.fixture(scope="module")
def folder_owner(tmp_path_factory):
    """An owner protected (one epoch) on an image folder, its images decoded on access."""
    base = tmp_path_factory.mktemp("folder-owner")
    root = _write(base / "pets", per_class=10, size=(24, 24))
    main(["protect", "--dataset", "imagefolder", "--data-dir", str(root), "--image-size", "16", "--arch",
          "small_cnn", "--width", "1.0", "--epochs", "1", "--batch-size", "8", "--trigger", "none",
          "--secret-seed", "0", "--out", str(base / "run")])
    return base / "run"


@pytest.mark.parametrize("attack", ["obfuscate", "forge", "dummy-neurons", "combined", "reprotect"])
def test_attacks_run_on_an_image_folder_release(folder_owner, attack, capsys):
    """Issue 33: these read the training inputs as one tensor and crashed on a folder's lazy images."""
    out = folder_owner.parent / attack
    code = main(["attack", attack, "--model", str(folder_owner / "released"), "--key",
                 str(folder_owner / "owner-key"), "--out", str(out), "--epochs", "1"])
    assert code == 0, capsys.readouterr().err
    assert json.loads((out / "result.json").read_text())["rows"]
