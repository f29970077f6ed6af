"""Sub-networks whose output transforms the data as a matrix (T-Nets) are found from data flow,
marked by `inspect`, and left out by the CLI's default (`--transform-layers skip`)."""

import re

import pytest
import torch
from torch import nn

from passportnorm import protect, protected_layers, zoo
from passportnorm.cli import main
from passportnorm.errors import NothingToProtectError, PairingError
from passportnorm.pairing import find_pairs
from passportnorm.pipeline import RunOptions
from passportnorm.transform_branches import find_transform_modules
from models import TransformerBlockNet


class Gate(nn.Module):
    """Pooled features -> Linear -> BatchNorm; its output scales the data elementwise: not a transform."""

    def __init__(self, outputs: int = 4):
        super().__init__()
        self.fc = nn.Linear(4, outputs)
        self.norm = nn.BatchNorm1d(outputs)

    def forward(self, x):
        return self.norm(self.fc(x.mean(dim=2)))


class Warp(Gate):
    """The same sub-network predicting a 4x4 matrix: a small spatial transformer."""

    def __init__(self):
        super().__init__(outputs=16)

    def forward(self, x):
        return super().forward(x).view(-1, 4, 4)


class Net(nn.Module):
    def __init__(self, matrix: bool):
        super().__init__()
        self.matrix = matrix
        self.side = Warp() if matrix else Gate()
        self.conv = nn.Conv1d(4, 8, 1)
        self.bn = nn.BatchNorm1d(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = torch.matmul(self.side(x).transpose(1, 2), x) if self.matrix else x * self.side(x).unsqueeze(2)
        return self.head(self.bn(self.conv(x)).amax(dim=2))


def test_pointnets_tnets_are_transforms_and_nothing_else_is():
    pointnet = zoo.build("pointnet", in_channels=3, num_classes=10, width=0.25)
    assert find_transform_modules(pointnet) == {"input_transform": "", "feature_transform": ""}
    for name, kwargs in [
        ("pointnet_vanilla", dict(in_channels=3)),
        ("resnet18", dict(in_channels=1)),
        ("alexnet", dict(in_channels=3)),
    ]:
        assert find_transform_modules(zoo.build(name, num_classes=10, width=0.25, **kwargs)) == {}
    assert find_transform_modules(TransformerBlockNet()) == {}  # attention's products are not transforms


def test_the_rule_reads_data_flow_not_names():
    assert find_transform_modules(Net(matrix=True)) == {"side": ""}
    assert find_transform_modules(Net(matrix=False)) == {}  # an elementwise gate is not a matrix transform
    report = find_pairs(Net(matrix=True), torch.randn(2, 4, 5))
    assert {p.norm: p.transform for p in report.pairs} == {"side.norm": "side", "bn": ""}
    assert "side.norm (BatchNorm1d, 16 ch) <- side.fc (Linear)  [inside transform side]" in str(report)


def test_protect_skips_transform_norms_only_when_asked():
    model = zoo.build("pointnet", in_channels=3, num_classes=10, width=0.25)
    example = torch.randn(4, 3, 32)
    everything = protected_layers(protect(model, example, seed=0))
    assert any(p.startswith("input_transform.") for p in everything)  # the library default keeps them
    main_path = protected_layers(protect(model, example, seed=0, transform_layers="skip"))
    assert set(main_path) == {
        p for p in everything if not p.startswith(("input_transform.", "feature_transform."))
    }
    assert RunOptions().transform_layers == "skip"  # the CLI's default
    with pytest.raises(PairingError, match="transform_layers must be 'protect' or 'skip', got 'drop'"):
        protect(model, example, seed=0, transform_layers="drop")
    with pytest.raises(
        NothingToProtectError, match=re.escape("transform_layers='protect' (--transform-layers protect)")
    ):
        protect(model, example, seed=0, transform_layers="skip", include=["input_transform.*"])


def test_inspect_states_the_rule_and_what_the_default_protects(capsys):
    assert main(["inspect", "--dataset", "mnist5k-points", "--width", "0.25"]) == 0
    out = capsys.readouterr().out
    assert "[inside transform feature_transform]" in out
    assert "`passportnorm protect` protects 4 of them (480 bits) by default:" in out
    assert (
        "norms inside a sub-network whose output transforms the data as a matrix (a T-Net) are left out"
        in out
    )
