"""Write a generated markdown section into a docs file between BEGIN/END markers."""

from __future__ import annotations

import fcntl
import re
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"


def update_section(filename: str, name: str, markdown: str) -> Path:
    """Replace (or append) the section ``name`` of ``docs/filename`` with ``markdown``; benchmarks
    running side by side take turns (a lock file), so no section another one wrote is lost."""
    path = DOCS / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    block = f"<!-- BEGIN {name} (generated; do not edit by hand) -->\n{markdown.rstrip()}\n<!-- END {name} -->"
    pattern = re.compile(rf"<!-- BEGIN {re.escape(name)} .*?<!-- END {re.escape(name)} -->", re.DOTALL)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        text = path.read_text() if path.exists() else ""
        text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
        path.write_text(text.lstrip())
    return path


def machine(device: str = "auto") -> str:
    """Where a table's numbers were made, for its header: the same command gives other float
    rounding (and other timings) on another device."""
    import torch

    from passportnorm.device import resolve_device

    resolved = resolve_device(device)
    if resolved.type == "cuda":
        where = f"CUDA, {torch.cuda.get_device_name(resolved)}"
    else:
        where = f"CPU, {torch.get_num_threads()} threads"
    return f"{where}, torch {torch.__version__}"
