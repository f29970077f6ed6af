"""A small decoder-only language model for CPU runs on byte tokens (``--arch gpt``).

GPT-2's layout with a Llama-style norm: token and learned position embeddings, ``depth`` pre-norm
causal blocks (blocks.py) whose norms are the hand-written :class:`RMSNorm` decoder LMs carry, a
final RMSNorm and a linear head over the vocabulary. It answers scores along dimension 1,
``(batch, vocabulary, tokens)``, as cross_entropy and every classifier here read them
(evaluation.py). No RMSNorm has a producer: each is paired with its consumer (docs/DESIGN.md 3b).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .blocks import Block
from .registry import register_model

__all__ = ["HEADS", "RMSNorm", "SmallGPT", "gpt"]

HEADS = 4
CONTEXT = 64  # the longest sequence the position table holds (data/text.py cuts windows of 64)


class RMSNorm(nn.Module):
    """``x / rms(x) * weight`` over the last axis, written out as Llama and Mistral write it."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        scale = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return (x.float() * scale).to(x.dtype) * self.weight


class SmallGPT(nn.Module):
    """Embeddings, ``depth`` causal pre-norm blocks, RMSNorm and a head over ``vocabulary`` tokens."""

    def __init__(self, vocabulary: int = 256, dim: int = 128, depth: int = 4, context: int = CONTEXT):
        super().__init__()
        self.tokens = nn.Embedding(vocabulary, dim)
        self.positions = nn.Embedding(context, dim)
        self.blocks = nn.Sequential(
            *(Block(dim, HEADS, norm=RMSNorm, expand=4, causal=True) for _ in range(depth))
        )
        self.norm = RMSNorm(dim)
        self.head = nn.Linear(dim, vocabulary)

    def forward(self, ids: Tensor) -> Tensor:
        places = torch.arange(ids.shape[1], device=ids.device)
        stream = self.blocks(self.tokens(ids) + self.positions(places))
        return self.head(self.norm(stream)).transpose(1, 2)


@register_model("gpt", task="text", optimizer="adam", lr=0.002)
def gpt(in_channels: int = 64, num_classes: int = 256, width: float = 0.25, norm: str = "rms") -> SmallGPT:
    """Width 0.25 (the CLI's default): a 128-wide stream, 4 heads, 4 blocks (0.86M parameters); the
    stream is ``512 * width`` wide, rounded to whole heads of at least 4. ``in_channels`` is the
    context (the data's input shape), ``num_classes`` the vocabulary; ``norm`` (the CNNs'
    bn/gn/in) does not apply."""
    dim = HEADS * max(4, int(round(128 * width)))
    del norm
    return SmallGPT(num_classes, dim=dim, depth=4, context=max(in_channels, CONTEXT))
