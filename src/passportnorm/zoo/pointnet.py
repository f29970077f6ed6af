"""PointNet for point-cloud classification (Qi et al., CVPR 2017), as the paper protects it.

Input: a batch of clouds as ``(batch, 3, points)``. A shared point-wise MLP (Conv1d with kernel 1)
3 -> 64 -> 128 -> 1024, each followed by a norm; max pooling over points; FC 1024 -> 512 -> 256,
each followed by a norm; dropout; FC to the classes. Optional T-Nets predict a 3x3 transform of
the input points and a 64x64 transform of the point features. Nothing here knows about
passports: ``protect`` finds every Conv1d/Linear + norm pair on its own.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .norms import make_norm
from .registry import register_model


def _scaled(channels: int, width: float) -> int:
    return max(4, int(round(channels * width)))


def _check_norm(norm: str) -> None:
    # InstanceNorm1d would read the (batch, C) input of the FC norms as one unbatched sequence
    if norm not in ("bn", "gn"):
        raise ConfigError(f"PointNet supports norm 'bn' or 'gn', not {norm!r}")


class _SharedMLP(nn.Sequential):
    """Point-wise layers: Conv1d(kernel 1) + norm + ReLU for each width; the last ReLU is optional."""

    def __init__(self, widths: list[int], norm: str, last_relu: bool = True):
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
            layers += [nn.Conv1d(cin, cout, 1, bias=False), make_norm(norm, cout, dims=1)]
            if last_relu or i < len(widths) - 2:
                layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class TNet(nn.Module):
    """Predicts a ``k x k`` transform from a cloud; starts as the identity (zero last layer)."""

    def __init__(self, k: int, width: float = 1.0, norm: str = "bn"):
        super().__init__()
        c1, c2, c3, f1, f2 = (_scaled(c, width) for c in (64, 128, 1024, 512, 256))
        self.k = k
        self.points = _SharedMLP([k, c1, c2, c3], norm)
        self.head = nn.Sequential(
            nn.Linear(c3, f1, bias=False),
            make_norm(norm, f1, dims=1),
            nn.ReLU(inplace=True),
            nn.Linear(f1, f2, bias=False),
            make_norm(norm, f2, dims=1),
            nn.ReLU(inplace=True),
        )
        self.transform = nn.Linear(f2, k * k)
        nn.init.zeros_(self.transform.weight)
        nn.init.zeros_(self.transform.bias)
        self.register_buffer("identity", torch.eye(k).flatten(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.amax(self.points(x), dim=2)
        return (self.transform(self.head(pooled)) + self.identity).view(-1, self.k, self.k)


class PointNet(nn.Module):
    """PointNet classifier; ``transforms`` switches both T-Nets on (the paper) or off (vanilla)."""

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 40,
        width: float = 1.0,
        norm: str = "bn",
        transforms: bool = True,
        dropout: float = 0.3,
    ):
        super().__init__()
        _check_norm(norm)
        c1, c2, c3, f1, f2 = (_scaled(c, width) for c in (64, 128, 1024, 512, 256))
        self.input_transform = TNet(in_channels, width, norm) if transforms else None
        self.embed = _SharedMLP([in_channels, c1], norm)
        self.feature_transform = TNet(c1, width, norm) if transforms else None
        # the last point-wise layer has no ReLU before max pooling, as in the paper
        self.features = _SharedMLP([c1, c2, c3], norm, last_relu=False)
        self.classifier = nn.Sequential(
            nn.Linear(c3, f1, bias=False),
            make_norm(norm, f1, dims=1),
            nn.ReLU(inplace=True),
            nn.Linear(f1, f2, bias=False),
            make_norm(norm, f2, dims=1),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(f2, num_classes),
        )

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        x = points
        if self.input_transform is not None:
            x = torch.bmm(self.input_transform(x).transpose(1, 2), x)
        x = self.embed(x)
        if self.feature_transform is not None:
            x = torch.bmm(self.feature_transform(x).transpose(1, 2), x)
        return self.classifier(torch.amax(self.features(x), dim=2))


@register_model("pointnet", task="pointcloud")
def pointnet(in_channels: int = 3, num_classes: int = 40, width: float = 1.0, norm: str = "bn") -> PointNet:
    """PointNet with the input and feature T-Nets (the paper's classification network)."""
    return PointNet(in_channels, num_classes, width, norm, transforms=True)


@register_model("pointnet_vanilla", task="pointcloud")
def pointnet_vanilla(
    in_channels: int = 3, num_classes: int = 40, width: float = 1.0, norm: str = "bn"
) -> PointNet:
    """PointNet without T-Nets (the paper's 'vanilla' ablation): faster, slightly less accurate."""
    return PointNet(in_channels, num_classes, width, norm, transforms=False)
