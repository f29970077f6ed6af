"""One line per finished epoch, flushed, for every long job: a terminal keeps each line on screen
as it finishes, and a log file or CI (no terminal, so no progress bar) still shows where a run is."""

from __future__ import annotations

import sys
from typing import Any, TextIO

__all__ = ["epoch_line", "print_epoch"]


def epoch_line(row: dict[str, Any]) -> str:
    return "  " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items())


def print_epoch(row: dict[str, Any], stream: TextIO | None = None) -> None:
    print(epoch_line(row), file=stream or sys.stdout, flush=True)
