"""Run reports: history.csv and a markdown report from a run's metrics."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from .fileio import write_text_atomic

__all__ = ["write_history_csv", "run_report_markdown"]


def write_history_csv(path: str | Path, history: list[dict[str, Any]]) -> None:
    columns: list[str] = []
    for row in history:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)
    write_text_atomic(path, buffer.getvalue())


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def run_report_markdown(metrics: dict[str, Any], verification_md: str | None = None) -> str:
    """A human-readable summary: settings, per-epoch table, and the verification of the release."""
    settings = metrics.get("settings", {})
    lines = [f"# passportnorm {metrics.get('command', 'run')}", "", "## Settings", ""]
    lines += [f"- {k}: `{v}`" for k, v in settings.items()]
    history = metrics.get("history", [])
    if history:
        columns = list(history[-1])
        lines += ["", "## Training", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(_fmt(row.get(c, "")) for c in columns) + " |" for row in history]
    if verification_md:
        lines += ["", verification_md]
    return "\n".join(lines) + "\n"
