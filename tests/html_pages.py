"""Checks every HTML evidence page must pass: self-contained, the verdict stated, plots inline; and
the same page rendered by headless Chromium (skipped with the reason where none is installed)."""

import html
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
NO_BROWSER = (
    "no headless Chromium on this machine: install Debian's chromium package (apt install chromium) "
    "or set PASSPORTNORM_CHROMIUM to a Chrome/Chromium binary, then rerun"
)
BAR = (0x3B, 0x6E, 0xA8)  # evidence_html.BAR_COLOUR
BANNERS = {"yes": (0xDF, 0xF3, 0xE4), "no": (0xFB, 0xE3, 0xE1), "info": (0xE8, 0xEE, 0xF7)}


def assert_self_contained(page: str, verdict: str, plots: int) -> None:
    """No fetch of any kind, the verdict in its banner, at least ``plots`` inline plots."""
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page), "the page fetches something"
    assert "<script" not in page and "<link" not in page and "@import" not in page
    banner = re.search(r'<div class="verdict (\w+)" id="verdict">([^<]*)</div>', page)
    assert banner and html.unescape(banner.group(2)) == verdict, banner
    assert page.count("<svg") + page.count("data:image/png;base64,") >= plots
    for heading in ("Files read (SHA-256)", "Reproduce", "Environment"):
        assert f"<h2>{heading}</h2>" in page


def chromium() -> str:
    found = os.environ.get("PASSPORTNORM_CHROMIUM") or next(filter(None, map(shutil.which, BROWSERS)), None)
    if not found:
        pytest.skip(NO_BROWSER)
    return found


def check_in_chromium(path: Path, verdict: str, kind: str, tmp: Path) -> None:
    """Chromium parses the page with the verdict in its banner; its screenshot shows the banner's
    colour and the plots' bars."""
    from PIL import Image

    browser = chromium()
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    url = path.resolve().as_uri()
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    banner = re.search(r'id="verdict">([^<]*)<', dom)
    assert banner and html.unescape(banner.group(1)) == verdict, dom[:500]
    shot = tmp / f"{path.stem}.png"
    subprocess.run(
        [*flags, f"--screenshot={shot}", "--window-size=1200,4000", url], capture_output=True, timeout=120
    )
    pixels = list(Image.open(shot).convert("RGB").getdata())
    assert sum(p == BANNERS[kind] for p in pixels) > 5000, "no verdict banner in the screenshot"
    assert sum(p == BAR for p in pixels) > 2000, "no plot bars in the screenshot"
