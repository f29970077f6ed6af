"""The README as a new user reads it: its Python snippet runs as written and ends verified, its
commands parse with the CLI as shipped, and every file it points to exists in a clone."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from passportnorm.cli import _parser

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, re.S)


def test_the_python_snippet_runs_as_written_and_ends_verified(tmp_path):
    snippet = next(block for block in _blocks("python") if "pn.protect(" in block)
    (tmp_path / "snippet.py").write_text(snippet)
    done = subprocess.run(
        [sys.executable, "snippet.py"], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| verdict | **VERIFIED** |" in done.stdout, done.stdout[-2000:]
    assert (tmp_path / "owner-key" / "key.json").is_file()


def _commands() -> list[list[str]]:
    found = []
    for block in _blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" # ")[0].split("  #")[0].rstrip(" &")
            if line.startswith("passportnorm "):
                found.append(shlex.split(line)[1:])
    return found


@pytest.mark.parametrize("argv", _commands(), ids=lambda argv: " ".join(argv)[:60])
def test_every_readme_command_parses(argv):
    _parser().parse_args(argv)  # an unknown command or flag exits with status 2


def test_every_file_the_readme_names_exists_in_a_clone():
    linked = re.findall(r"\]\(([^)#]+)\)", README)
    named = re.findall(r"`((?:docs|tests|benchmarks|src)/[\w./-]+\.(?:md|py))`", README)
    named += re.findall(r"\b((?:docs|tests|benchmarks)/[\w-]+\.(?:md|py))", README)
    missing = sorted(
        {path for path in linked + named if not path.startswith("http") and not (ROOT / path).exists()}
    )
    assert not missing, f"README points to files a clone does not have: {missing}"
    assert "../" not in "".join(linked), "a link leaves the repository"
