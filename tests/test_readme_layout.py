"""The README's "How the code is laid out" names every source file, and only files that exist."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "passportnorm"


def _layout_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## How the code is laid out")
    return text[start : text.index("\n## ", start + 1) if "\n## " in text[start + 1 :] else len(text)]


def test_every_source_file_is_in_the_layout_and_every_named_file_exists():
    section = _layout_section()
    section = section[: section.index("\nbenchmarks/")]  # the package's part of the tree
    files = {p.name for p in PACKAGE.rglob("*.py") if p.name not in ("__init__.py", "__main__.py")}
    named = set(re.findall(r"\b([a-z_]+\.py)\b", section))
    assert files - named == set(), "missing from the README layout"
    assert named - files == set(), "named in the README layout but not in src/passportnorm"
    for folder in ("attacks/", "baselines/", "data/", "remote/", "zoo/"):
        assert f"  {folder}" in section
