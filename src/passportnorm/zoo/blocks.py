"""The pre-norm transformer block the zoo's ViT and GPT share: ``x + attn(norm1(x))``, ``x + mlp(norm2(x))``.

Attention runs through one fused ``qkv`` Linear and ``scaled_dot_product_attention`` (causal for a
decoder). The norms read the residual stream, which no single layer writes, so each is paired with
its consumer (qkv, the MLP's first layer), docs/DESIGN.md section 3b.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Attention", "Block"]


class Attention(nn.Module):
    """Multi-head self-attention through one fused ``qkv`` Linear and scaled dot products."""

    def __init__(self, dim: int, heads: int, causal: bool = False):
        super().__init__()
        self.heads = heads
        self.causal = causal
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, dim = x.shape
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        mixed = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.proj(mixed.transpose(1, 2).reshape(batch, tokens, dim))


class Block(nn.Module):
    """``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``, the MLP ``expand`` times as wide as the stream."""

    def __init__(
        self,
        dim: int,
        heads: int,
        norm: Callable[[int], nn.Module] = nn.LayerNorm,
        expand: int = 2,
        causal: bool = False,
    ):
        super().__init__()
        self.norm1 = norm(dim)
        self.attn = Attention(dim, heads, causal)
        self.norm2 = norm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, expand * dim), nn.GELU(), nn.Linear(expand * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))
