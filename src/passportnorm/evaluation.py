"""Test accuracy of a model on a dataset or loader, in eval mode and without gradients."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset


@torch.no_grad()
def accuracy(model: nn.Module, data: Dataset | DataLoader, device: torch.device | str = "cpu") -> float:
    loader = data if isinstance(data, DataLoader) else DataLoader(data, batch_size=256)
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += int((model(x.to(device)).argmax(1) == y.to(device)).sum())
        total += int(y.numel())
    return correct / max(total, 1)
