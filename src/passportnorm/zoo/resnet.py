"""CIFAR ResNet18: 3x3 stem without max-pooling, basic blocks 2-2-2-2, norms on shortcuts too."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .norms import make_norm
from .registry import register_model


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = make_norm(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = make_norm(norm, cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), make_norm(norm, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18CIFAR(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: float = 1.0, norm: str = "bn"):
        super().__init__()
        widths = [max(4, int(round(c * width))) for c in (64, 128, 256, 512)]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = make_norm(norm, widths[0])
        layers, cin = [], widths[0]
        for cout, stride in zip(widths, (1, 2, 2, 2)):
            layers.append(nn.Sequential(BasicBlock(cin, cout, stride, norm), BasicBlock(cout, cout, 1, norm)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.linear = nn.Linear(widths[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


@register_model("resnet18")
def resnet18(
    in_channels: int = 3, num_classes: int = 10, width: float = 1.0, norm: str = "bn"
) -> ResNet18CIFAR:
    return ResNet18CIFAR(in_channels, num_classes, width, norm)
