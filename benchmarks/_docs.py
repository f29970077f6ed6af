"""Write a generated markdown section into a docs file between BEGIN/END markers."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"


def update_section(filename: str, name: str, markdown: str) -> Path:
    """Replace (or append) the section ``name`` of ``docs/filename`` with ``markdown``."""
    path = DOCS / filename
    text = path.read_text() if path.exists() else ""
    block = f"<!-- BEGIN {name} (generated; do not edit by hand) -->\n{markdown.rstrip()}\n<!-- END {name} -->"
    pattern = re.compile(rf"<!-- BEGIN {re.escape(name)} .*?<!-- END {re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
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
