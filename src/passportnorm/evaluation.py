"""Test accuracy (and, for language models, perplexity) of a model, in eval mode without gradients.

A model answers class scores along dimension 1: ``(batch, classes)`` for a classifier, ``(batch,
vocabulary, tokens)`` for a language model, whose labels are ``(batch, tokens)``; either way a
label of -100 (cross_entropy's ignore_index) is not scored.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .data.triggers import UNSCORED
from .stopwatch import measurement


def _batches(data: Dataset | DataLoader) -> DataLoader:
    return data if isinstance(data, DataLoader) else DataLoader(data, batch_size=256)


@measurement
@torch.no_grad()
def accuracy(model: nn.Module, data: Dataset | DataLoader, device: torch.device | str = "cpu") -> float:
    """The share of scored labels the model's top class matches (a language model: next tokens)."""
    model.eval()
    correct = total = 0
    for x, y in _batches(data):
        y = y.to(device)
        scored = y != UNSCORED
        correct += int(((model(x.to(device)).argmax(1) == y) & scored).sum())
        total += int(scored.sum())
    return correct / max(total, 1)


@measurement
@torch.no_grad()
def perplexity(model: nn.Module, data: Dataset | DataLoader, device: torch.device | str = "cpu") -> float:
    """``exp`` of the mean cross-entropy per scored label (a language model's per-token perplexity)."""
    model.eval()
    loss = 0.0
    total = 0
    for x, y in _batches(data):
        y = y.to(device)
        loss += float(F.cross_entropy(model(x.to(device)).float(), y, reduction="sum"))
        total += int((y != UNSCORED).sum())
    return math.exp(loss / max(total, 1))
