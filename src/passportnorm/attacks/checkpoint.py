"""Per-epoch checkpoints for training attacks, so an interrupted attack resumes where it stopped."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..progress import print_epoch


def resume_state(
    path: str | Path | None, model: nn.Module, optimizer: torch.optim.Optimizer, rows: list
) -> tuple[list, int]:
    """Load (rows, next epoch) from ``path`` into ``model`` and ``optimizer`` when it exists; else start at
    1."""
    if path is None or not Path(path).is_file():
        return rows, 1
    state = torch.load(path, weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return state["rows"], int(state["epoch"]) + 1


def save_state(
    path: str | Path | None, model: nn.Module, optimizer: torch.optim.Optimizer, rows: list, epoch: int
) -> None:
    if path is None:
        return
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    payload: dict[str, Any] = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rows": rows,
        "epoch": epoch,
    }
    torch.save(payload, tmp)
    os.replace(tmp, path)
    if rows and isinstance(rows[-1], dict):  # a checkpointed attack is a CLI job: show where it is
        print_epoch(rows[-1], sys.stderr)
