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
