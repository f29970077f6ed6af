"""The pieces of a self-contained HTML evidence page: sections, tables, plots, hashes, environment.

A page must open years later on a reviewer's machine with no network: styles are inline, plots
are inline SVG (matplotlib, text kept as text so it can be searched) or PNG data URIs, and nothing
is fetched. Text is escaped everywhere; the markdown our reports already print is converted here
rather than re-stated, so the HTML and the terminal say the same thing.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import platform
import re
import shlex
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from . import __version__

__all__ = [
    "EvidencePage",
    "bar_chart",
    "environment",
    "file_hashes",
    "markdown_html",
    "png_image",
    "reproduce_command",
]

_STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:60rem;margin:2rem auto;
padding:0 1rem;color:#1d2430;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #d5dae1}
.verdict{font-size:1.5rem;font-weight:700;padding:.8rem 1rem;border-radius:.4rem;margin:1rem 0}
.verdict.yes{background:#dff3e4;color:#11602b;border:2px solid #2e8b4e}
.verdict.no{background:#fbe3e1;color:#8a1c12;border:2px solid #c0392b}
.verdict.info{background:#e8eef7;color:#1f3f6e;border:2px solid #4a74b0}
table{border-collapse:collapse;margin:.6rem 0;font-size:.92rem}
td,th{border:1px solid #d5dae1;padding:.3rem .6rem;vertical-align:top;text-align:left}
th{background:#f3f5f8}code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85rem}
pre{background:#f3f5f8;padding:.6rem;overflow-x:auto;white-space:pre-wrap;word-break:break-all}
.meaning{color:#4a5568;font-style:italic}figure{margin:1rem 0}svg{max-width:100%;height:auto}
"""


BAR_COLOUR = "#3b6ea8"
LINE_COLOURS = ("#c0392b", "#e67e22", "#7f8c8d")


class EvidencePage:
    """Sections appended in reading order; ``render`` gives the whole page as one string."""

    def __init__(self, title: str, subtitle: str = ""):
        self.title, self.subtitle = title, subtitle
        self._parts: list[str] = []

    def verdict(self, decided: bool | None, text: str) -> None:
        kind = {True: "yes", False: "no", None: "info"}[decided]
        self._parts.append(f'<div class="verdict {kind}" id="verdict">{html.escape(text)}</div>')

    def section(self, heading: str, *parts: str) -> None:
        self._parts.append(f"<h2>{html.escape(heading)}</h2>" + "".join(parts))

    def render(self) -> str:
        subtitle = f"<p>{html.escape(self.subtitle)}</p>" if self.subtitle else ""
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(self.title)}</title><style>{_STYLE}</style></head><body>"
            f"<h1>{html.escape(self.title)}</h1>{subtitle}{''.join(self._parts)}</body></html>\n"
        )


def paragraph(text: str, meaning: bool = False) -> str:
    return f"<p{' class=meaning' if meaning else ''}>{html.escape(text)}</p>"


def table(rows: Iterable[Sequence[Any]], header: Sequence[str] | None = None) -> str:
    head = "<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{_inline(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def code_block(text: str) -> str:
    return f"<pre><code>{html.escape(text)}</code></pre>"


def _inline(text: str) -> str:
    """Escape, then the two markdown marks our reports use: **bold** and `code`."""
    escaped = html.escape(text)
    escaped = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", escaped)


def markdown_html(markdown: str) -> str:
    """Our reports' markdown (headings, pipe tables, bullets, paragraphs, images dropped) as HTML."""
    out: list[str] = []
    rows: list[list[str]] = []

    def flush() -> None:
        if rows:
            header, body = rows[0], [r for r in rows[1:] if not all(set(c) <= set("-: ") for c in r)]
            out.append(table(body, header if any(header) else None))
            rows.clear()

    for line in markdown.splitlines():
        stripped = line.strip()
        if stripped.startswith("|"):
            rows.append([cell.strip() for cell in stripped.strip("|").split("|")])
            continue
        flush()
        if not stripped or stripped.startswith("!["):
            continue
        if stripped.startswith("#"):
            out.append(f"<h3>{_inline(stripped.lstrip('#').strip())}</h3>")
        elif stripped.startswith("- "):
            out.append(f"<ul><li>{_inline(stripped[2:])}</li></ul>")
        else:
            out.append(f"<p>{_inline(stripped)}</p>")
    flush()
    return "".join(out)


def bar_chart(
    labels: Sequence[str],
    values: Sequence[float],
    title: str,
    ylabel: str,
    lines: dict[str, float] | None = None,
    horizontal: bool = False,
) -> str:
    """An inline SVG bar chart (values in [0, 1]); ``lines`` draws labelled reference levels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = len(values)
    size = (7, max(2.8, 0.25 * count + 1.6)) if horizontal else (max(4.5, 0.6 * count + 2.5), 4.0)
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "passportnorm"}):
        figure, axis = plt.subplots(figsize=size)
        positions = list(range(count))
        draw = axis.barh if horizontal else axis.bar
        bars = draw(positions, values, color=BAR_COLOUR)
        axis.bar_label(bars, labels=[f"{v:.1%}" for v in values], fontsize=8, padding=2)
        set_ticks = axis.set_yticks if horizontal else axis.set_xticks
        tilt: dict[str, Any] = {} if horizontal else {"rotation": 30, "ha": "right"}
        set_ticks(positions, labels, **tilt)
        reference = axis.axvline if horizontal else axis.axhline
        for (name, level), colour in zip((lines or {}).items(), LINE_COLOURS):
            reference(level, linestyle="--", color=colour, linewidth=1.2, label=f"{name} ({level:.1%})")
        (axis.set_xlim if horizontal else axis.set_ylim)(0, 1.12)
        (axis.set_xlabel if horizontal else axis.set_ylabel)(ylabel)
        if horizontal:
            axis.invert_yaxis()
        if lines:
            from matplotlib.transforms import offset_copy

            below = offset_copy(axis.transAxes, fig=figure, y=-32 if horizontal else -75, units="points")
            axis.legend(loc="upper center", bbox_to_anchor=(0.5, 0), bbox_transform=below, ncol=2, fontsize=8)
        axis.set_title(title)
        figure.tight_layout()
        buffer = io.StringIO()
        figure.savefig(buffer, format="svg", metadata={"Date": None}, bbox_inches="tight")
        plt.close(figure)
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg") :]  # drop the XML prologue and DOCTYPE: the SVG sits inside HTML
    return f'<figure class="plot">{svg}</figure>'


def png_image(path: str | Path, caption: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return (
        f'<figure class="plot"><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def file_hashes(paths: dict[str, str | Path | None]) -> str:
    """SHA-256 of each named file that exists (folders: each file in them), as a table."""
    rows = []
    for role, path in paths.items():
        if path is None:
            continue
        path = Path(path)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        rows += [(role, str(f), hashlib.sha256(f.read_bytes()).hexdigest()) for f in files if f.is_file()]
    return table(rows, ("what", "file", "SHA-256"))


def reproduce_command(argv: Sequence[str] | None) -> str:
    """The command line that made this report, ready to paste."""
    return code_block("passportnorm " + shlex.join(argv)) if argv else paragraph("(made from Python)")


def environment() -> str:
    import numpy
    import torch

    rows = [
        ("passportnorm", __version__),
        ("python", platform.python_version()),
        ("torch", torch.__version__),
        ("numpy", numpy.__version__),
        ("platform", platform.platform()),
        ("CUDA available", str(torch.cuda.is_available())),
        ("executable", sys.executable),
    ]
    return table(rows)
