"""A small pre-norm Vision Transformer for CPU runs on 28x28 or 32x32 images (``--arch vit``).

The "simple ViT" recipe (Beyer et al., 2022): 4x4 patches, fixed 2-D sin-cos positions (so any
image size whose sides divide by 4 runs without resizing a table), pre-norm blocks
``x + attn(norm1(x))``, ``x + mlp(norm2(x))``, a final LayerNorm and the mean over tokens into a
linear head (blocks.py). None of its LayerNorms has a producer: each is paired with its consumer
(the qkv projection, the MLP's first layer, the head through the mean), docs/DESIGN.md section 3b.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .blocks import Block
from .registry import register_model

__all__ = ["PATCH", "SmallViT", "sincos_positions", "vit"]

PATCH = 4
HEADS = 4


def sincos_positions(height: int, width: int, dim: int, like: Tensor) -> Tensor:
    """``(height * width, dim)`` fixed positions: sines and cosines of the row and column at
    geometric frequencies, a quarter of ``dim`` each."""
    quarter = dim // 4
    frequencies = 1.0 / (10000 ** (torch.arange(quarter, device=like.device, dtype=like.dtype) / quarter))
    rows = torch.arange(height, device=like.device, dtype=like.dtype)[:, None] * frequencies
    cols = torch.arange(width, device=like.device, dtype=like.dtype)[:, None] * frequencies
    rows = rows[:, None, :].expand(height, width, quarter)
    cols = cols[None, :, :].expand(height, width, quarter)
    grid = torch.cat([rows.sin(), rows.cos(), cols.sin(), cols.cos()], dim=-1)
    return grid.reshape(height * width, dim)


class SmallViT(nn.Module):
    """Patches, sin-cos positions, ``depth`` pre-norm blocks, LayerNorm, mean over tokens, head."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, dim: int = 64, depth: int = 4):
        super().__init__()
        self.dim = dim
        self.patches = nn.Conv2d(in_channels, dim, PATCH, stride=PATCH)
        self.blocks = nn.Sequential(*(Block(dim, HEADS) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        grid = self.patches(x)
        height, width = grid.shape[2:]
        tokens = grid.flatten(2).transpose(1, 2) + sincos_positions(height, width, self.dim, grid)
        return self.head(self.norm(self.blocks(tokens)).mean(dim=1))


@register_model("vit", optimizer="adam", lr=0.002)  # SGD 0.05: 71% after 8 epochs, Adam 0.002: 90%
def vit(in_channels: int = 1, num_classes: int = 10, width: float = 0.25, norm: str = "ln") -> SmallViT:
    """Width 0.25 (the CLI's default): a 64-wide stream, 4 heads, 4 blocks (0.14M parameters);
    the stream is ``256 * width`` wide, rounded to whole heads of at least 4. ``norm`` (the CNNs'
    bn/gn/in) does not apply: a transformer's norms are LayerNorms."""
    dim = HEADS * max(4, int(round(64 * width)))
    del norm
    return SmallViT(in_channels, num_classes, dim=dim, depth=4)
