"""A small CNN (three conv + norm blocks) for fast CPU runs on 28x28 or 8x8 digits."""

from __future__ import annotations

import torch
from torch import nn

from .norms import make_norm
from .registry import register_model


class SmallCNN(nn.Module):
    """conv-norm-relu x3 (pooling after the first two), global average pool, linear head."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: float = 1.0, norm: str = "bn"):
        super().__init__()
        c1, c2, c3 = (max(4, int(round(c * width))) for c in (32, 64, 128))
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, padding=1, bias=False),
            make_norm(norm, c1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(c1, c2, 3, padding=1, bias=False),
            make_norm(norm, c2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(c2, c3, 3, padding=1, bias=False),
            make_norm(norm, c3),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(c3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


@register_model("small_cnn")
def small_cnn(in_channels: int = 1, num_classes: int = 10, width: float = 1.0, norm: str = "bn") -> SmallCNN:
    return SmallCNN(in_channels, num_classes, width, norm)
