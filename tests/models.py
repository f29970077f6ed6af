"""The seven model families issue 2 requires, and the zoo's PointNet, small enough for CPU tests.

Each entry builds a model, an example input and random targets, and states which norm layers
must be protectable and which must be reported (so pairing can be checked, not just run).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from passportnorm.zoo import build


class PlainCNN(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class TinyResNet(nn.Module):
    """CIFAR-style ResNet: stem, three stages, two of them downsampling with 1x1 conv shortcuts."""

    def __init__(self, classes: int = 10, width: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = BasicBlock(width, width, 1)
        self.layer2 = BasicBlock(width, 2 * width, 2)
        self.layer3 = BasicBlock(2 * width, 4 * width, 2)
        self.linear = nn.Linear(4 * width, classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


class GroupNormCNN(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.GroupNorm(8, 32), nn.ReLU(),
        )
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


class InstanceNormCNN(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1, padding_mode="reflect"), nn.InstanceNorm2d(16, affine=True), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.InstanceNorm2d(32, affine=True), nn.ReLU(),
        )
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        return self.head(self.features(x).amax(dim=(2, 3)))


class PointNetLike(nn.Module):
    """Shared point-wise MLP as Conv1d + BatchNorm1d, max pool, FC + BatchNorm1d."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv1d(3, 16, 1)
        self.bn1 = nn.BatchNorm1d(16)
        self.conv2 = nn.Conv1d(16, 32, 1)
        self.bn2 = nn.BatchNorm1d(32)
        self.fc1 = nn.Linear(32, 24)
        self.bn3 = nn.BatchNorm1d(24)
        self.fc2 = nn.Linear(24, classes)

    def forward(self, points):
        x = F.relu(self.bn1(self.conv1(points)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = torch.max(x, dim=2).values
        x = F.relu(self.bn3(self.fc1(x)))
        return self.fc2(x)


class MobileNetLike(nn.Module):
    """Inverted residual with a depthwise conv (groups == channels)."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.expand = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6())
        self.depthwise = nn.Sequential(nn.Conv2d(32, 32, 3, 1, 1, groups=32, bias=False), nn.BatchNorm2d(32), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(32, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.project(self.depthwise(self.expand(x)))
        return self.head(x.mean(dim=(2, 3)))


class TransformerBlockNet(nn.Module):
    """Token embedding (Linear + LayerNorm), a pre-norm attention block, NormFormer-style MLP norm.

    ``ln_attn`` is fed by the residual stream, not by a Linear: it has no producer and is paired
    with its consumer, the self-attention that reads its output.
    """

    def __init__(self, classes: int = 10, dim: int = 16, features: int = 8):
        super().__init__()
        self.embed = nn.Linear(features, dim)
        self.ln_embed = nn.LayerNorm(dim)
        self.ln_attn = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.ln_mlp = nn.LayerNorm(4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, tokens):
        x = self.ln_embed(self.embed(tokens))
        h = self.ln_attn(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        x = x + self.fc2(F.gelu(self.ln_mlp(self.fc1(x))))
        return self.head(x.mean(dim=1))


@dataclass
class Case:
    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    protectable: tuple[str, ...]
    reported: tuple[str, ...] = ()
    classes: int = 10

    def example(self, batch: int = 4, seed: int = 0) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return torch.randn((batch, *self.input_shape), generator=gen)

    def targets(self, batch: int = 4, seed: int = 0) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed + 1)
        return torch.randint(0, self.classes, (batch,), generator=gen)


def _pointnet_past_init() -> nn.Module:
    """The zoo PointNet with its T-Nets' zero-initialised last layers given small random weights,
    as after some training: at init the T-Nets output the identity whatever their inner layers
    compute, so no task gradient would reach those layers and gradient tests would see zeros."""
    model = build("pointnet", num_classes=10, width=0.125)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for tnet in (model.input_transform, model.feature_transform):
            tnet.transform.weight.copy_(0.05 * torch.randn(tnet.transform.weight.shape, generator=gen))
    return model


TNET_NORMS = ("points.1", "points.4", "points.7", "head.1", "head.4")

CASES = [
    Case("plain_cnn", PlainCNN, (1, 12, 12), ("bn1", "bn2")),
    Case(
        "resnet",
        TinyResNet,
        (3, 16, 16),
        (
            "bn1", "layer1.bn1", "layer1.bn2", "layer2.bn1", "layer2.bn2", "layer2.shortcut.1",
            "layer3.bn1", "layer3.bn2", "layer3.shortcut.1",
        ),
    ),
    Case("groupnorm_cnn", GroupNormCNN, (3, 12, 12), ("features.1", "features.4")),
    Case("instancenorm_cnn", InstanceNormCNN, (3, 12, 12), ("features.1", "features.4")),
    Case("pointnet", PointNetLike, (3, 32), ("bn1", "bn2", "bn3")),
    Case("mobilenet", MobileNetLike, (3, 16, 16), ("stem.1", "expand.1", "depthwise.1", "project.1")),
    Case("transformer", TransformerBlockNet, (6, 8), ("ln_embed", "ln_attn", "ln_mlp")),
    # the zoo's PointNet, built by name: the generic core must carry over with no special casing
    Case(
        "zoo_pointnet_tnets",
        lambda: _pointnet_past_init(),
        (3, 32),
        tuple(f"input_transform.{p}" for p in TNET_NORMS) + ("embed.1",)
        + tuple(f"feature_transform.{p}" for p in TNET_NORMS)
        + ("features.1", "features.4", "classifier.1", "classifier.4"),
    ),
    Case(
        "zoo_pointnet_vanilla",
        lambda: build("pointnet_vanilla", num_classes=10, width=0.125),
        (3, 32),
        ("embed.1", "features.1", "features.4", "classifier.1", "classifier.4"),
    ),
]

CASE_IDS = [case.name for case in CASES]
