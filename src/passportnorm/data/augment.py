"""Batch augmentation on tensors with an explicit generator, so resumed runs replay it exactly."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


class RandomCropFlip:
    """Random crop after zero padding, and horizontal flip with probability 1/2 (the CIFAR standard)."""

    def __init__(self, padding: int = 4, flip: bool = True):
        self.padding = padding
        self.flip = flip

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        n, _, h, w = images.shape
        p = self.padding
        padded = F.pad(images, (p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (n,), generator=generator).tolist()
        dx = torch.randint(0, 2 * p + 1, (n,), generator=generator).tolist()
        out = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
        if self.flip:
            flips = torch.rand(n, generator=generator) < 0.5
            out[flips] = out[flips].flip(-1)
        return out

    def __repr__(self) -> str:
        return f"RandomCropFlip(padding={self.padding}, flip={self.flip})"


class PointCloudAugment:
    """The PointNet++ training augmentation for clouds ``(batch, 3, points)``, per cloud:
    random point dropout (a random share up to ``max_dropout`` of the points replaced by the first
    point, so the shape keeps its size), random scaling in ``scale`` and a random shift up to
    ``shift`` along each axis.
    """

    def __init__(
        self, scale: tuple[float, float] = (0.8, 1.25), shift: float = 0.1, max_dropout: float = 0.875
    ):
        self.scale = scale
        self.shift = shift
        self.max_dropout = max_dropout

    def __call__(self, clouds: Tensor, generator: torch.Generator) -> Tensor:
        n, _, p = clouds.shape
        ratio = torch.rand(n, 1, generator=generator) * self.max_dropout
        dropped = (torch.rand(n, p, generator=generator) <= ratio).unsqueeze(1)
        out = torch.where(dropped, clouds[:, :, :1], clouds)
        scale = torch.empty(n, 1, 1).uniform_(*self.scale, generator=generator)
        shift = torch.empty(n, 3, 1).uniform_(-self.shift, self.shift, generator=generator)
        return out * scale + shift

    def __repr__(self) -> str:
        return f"PointCloudAugment(scale={self.scale}, shift={self.shift}, max_dropout={self.max_dropout})"
