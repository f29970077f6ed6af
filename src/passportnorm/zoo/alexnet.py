"""The paper's CIFAR AlexNet: five conv layers (64/192/384/256/256; kernels 5/5/3/3/3), each with a norm."""

from __future__ import annotations

import torch
from torch import nn

from .norms import make_norm
from .registry import register_model


def _scaled(channels: int, width: float) -> int:
    return max(4, int(round(channels * width)))


class AlexNetCIFAR(nn.Module):
    """conv-norm-relu x5, max-pooling after the 1st, 2nd and 5th; one linear classifier.

    The last pooling is adaptive to 4x4 so 28x28 (MNIST) and 32x32 (CIFAR) inputs share the head.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: float = 1.0, norm: str = "bn"):
        super().__init__()
        c = [_scaled(ch, width) for ch in (64, 192, 384, 256, 256)]
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c[0], 5, padding=2, bias=False),
            make_norm(norm, c[0]),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(c[0], c[1], 5, padding=2, bias=False),
            make_norm(norm, c[1]),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(c[1], c[2], 3, padding=1, bias=False),
            make_norm(norm, c[2]),
            nn.ReLU(inplace=True),
            nn.Conv2d(c[2], c[3], 3, padding=1, bias=False),
            make_norm(norm, c[3]),
            nn.ReLU(inplace=True),
            nn.Conv2d(c[3], c[4], 3, padding=1, bias=False),
            make_norm(norm, c[4]),
            nn.ReLU(inplace=True),
            nn.AdaptiveMaxPool2d(4),
        )
        self.classifier = nn.Linear(c[4] * 16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


@register_model("alexnet")
def alexnet(
    in_channels: int = 3, num_classes: int = 10, width: float = 1.0, norm: str = "bn"
) -> AlexNetCIFAR:
    return AlexNetCIFAR(in_channels, num_classes, width, norm)
