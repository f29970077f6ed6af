"""The shipped paper configs (configs/paper/*.yaml) say the published recipes and run through
`passportnorm compare --config` on data in the real formats (a few samples, flags shrink the budget)."""

import json
from pathlib import Path

import pytest
import yaml

from passportnorm.baselines.compare import CompareOptions, scheme_recipe
from passportnorm.cli import main
from test_data_local import _write_cifar10_binary
from test_pointcloud_data import _write_hdf5_folder

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "paper"
NAMES = [
    "cifar10-alexnet",
    "cifar100-resnet18",
    "modelnet40-pointnet",
    "deepipr-cifar10-alexnet",
    "deepipr-cifar100-resnet18",
]


def _options(name):
    return CompareOptions.from_mapping(yaml.safe_load((CONFIGS / f"{name}.yaml").read_text()))


def test_every_paper_config_is_shipped_and_valid():
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == sorted(NAMES)
    for name in NAMES:
        options = _options(name)
        options.validate()
        assert options.epochs == 200 and options.width == 1.0


def test_the_configs_hold_the_published_recipes():
    pan = scheme_recipe(_options("cifar10-alexnet"), "pan")
    assert (pan["lr"], pan["momentum"], pan["weight_decay"], pan["lr_milestones"]) == (
        0.01,
        0.9,
        5e-4,
        (100, 150),
    )
    assert pan["schedule"] == "joint" and pan["passports"] == "random"
    point = _options("modelnet40-pointnet")
    recipe = scheme_recipe(point, "pan")
    assert (
        point.batch_size,
        point.points,
        recipe["optimizer"],
        recipe["lr"],
        recipe["lr_step"],
        recipe["lr_gamma"],
    ) == (16, 1024, "adam", 1e-3, 20, 0.7)
    deepipr = _options("deepipr-cifar100-resnet18")
    v1, v2 = scheme_recipe(deepipr, "deepipr-v1"), scheme_recipe(deepipr, "deepipr-v2")
    assert (v1["norm"], v2["norm"], v1["schedule"], v2["schedule"]) == ("bn", "gn", "aware", "joint")
    assert v2["passports"] == "pretrained" and v2["weight_decay"] == 1e-4 and deepipr.placement == "deepipr"


def test_compare_config_runs_deepipr_on_cifar_files(tmp_path, capsys):
    _write_cifar10_binary(tmp_path / "cifar", per_batch=8)
    out = tmp_path / "out"
    code = main(
        [
            "compare",
            "--config",
            str(CONFIGS / "deepipr-cifar10-alexnet.yaml"),
            "--data-dir",
            str(tmp_path / "cifar"),
            "--width",
            "0.125",
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--forge-epochs",
            "1",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    summary = json.loads((out / "compare.json").read_text())
    runs = {r["scheme"]: r for r in summary["runs"]}
    assert set(runs) == {"plain", "deepipr-v1", "deepipr-v2", "pan"} and runs["deepipr-v2"]["norm"] == "gn"
    assert summary["options"]["epochs"] == 1 and summary["options"]["recipes"]["plain"]["lr_milestones"] == [
        100,
        150,
    ]
    assert "**deepipr-v2**: SGD lr 0.01" in capsys.readouterr().out


def test_compare_config_runs_pointnet_on_modelnet_files(tmp_path):
    _write_hdf5_folder(tmp_path / "mn", shapes=8, points=64)
    out = tmp_path / "out"
    code = main(
        [
            "compare",
            "--config",
            str(CONFIGS / "modelnet40-pointnet.yaml"),
            "--data-dir",
            str(tmp_path / "mn"),
            "--points",
            "64",
            "--width",
            "0.125",
            "--epochs",
            "1",
            "--forge-epochs",
            "1",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    pan = json.loads((out / "pan-seed0" / "result.json").read_text())
    assert pan["recipe"]["optimizer"] == "adam" and pan["history"][0]["lr"] == pytest.approx(1e-3)


@pytest.mark.parametrize(
    "text, message",
    [
        ("epochz: 3\n", "unknown compare option 'epochz'"),
        ("recipes: {pan: {lr_schedule: cyclic}}\n", "unknown lr_schedule 'cyclic'"),
        ("- not a mapping\n", "must be a mapping of option: value"),
    ],
)
def test_a_bad_config_is_one_line_and_exit_2(tmp_path, capsys, text, message):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    assert main(["compare", "--config", str(config), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and not (tmp_path / "out").exists()
