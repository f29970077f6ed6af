"""Per-epoch checkpoints for training attacks, so an interrupted attack resumes where it stopped."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..fileio import read_checkpoint, write_checkpoint
from ..progress import print_epoch


def resume_state(
    path: str | Path | None,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    rows: list,
    config: dict[str, Any] | None = None,
) -> tuple[list, int]:
    """Load (rows, next epoch) from ``path`` into ``model`` and ``optimizer`` when it exists; else start at
    1."""
    if path is None or not Path(path).is_file():
        return rows, 1
    state = read_checkpoint(Path(path), config or {})
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return state["rows"], int(state["epoch"]) + 1


def save_state(
    path: str | Path | None,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    rows: list,
    epoch: int,
    config: dict[str, Any] | None = None,
) -> None:
    """The attack's model, optimiser, rows and epoch, with the ``config`` a resume must match."""
    if path is None:
        return
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rows": rows,
        "epoch": epoch,
        "config": config or {},
    }
    write_checkpoint(Path(path), payload)
    if rows and isinstance(rows[-1], dict):  # a checkpointed attack is a CLI job: show where it is
        print_epoch(rows[-1], sys.stderr)
