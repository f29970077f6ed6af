"""``--html``: a self-contained evidence page for verify, dispute and attack (verify-remote's is in
test_remote.py), readable on its own and rendered by headless Chromium where one is installed."""

import hashlib
import re

import pytest

from html_pages import assert_self_contained, check_in_chromium
from passportnorm import zoo
from passportnorm.certificate import Certificate
from passportnorm.cli import main
from passportnorm.evidence_html import markdown_html
from passportnorm.release import save_released

CONFIG = {"width": 1.0}


@pytest.fixture(scope="module")
def pages(digits_owner, tmp_path_factory):
    """The owner's release, key and certificate, and the pages each command writes about them."""
    _, released, key = digits_owner
    root = tmp_path_factory.mktemp("html")
    save_released(released, root / "released", "small_cnn", CONFIG, dataset="digits")
    key.save(root / "owner-key")
    Certificate.issue(key, released).save(root / "certificate.json")
    save_released(
        zoo.build("small_cnn", **CONFIG).eval(), root / "stranger", "small_cnn", CONFIG, dataset="digits"
    )
    own = ["--key", str(root / "owner-key")]
    claim = ["--claim", str(root / "owner-key"), str(root / "certificate.json"), str(root / "released")]
    runs = {
        "verify": (
            [
                "verify",
                "--model",
                str(root / "released"),
                *own,
                "--certificate",
                str(root / "certificate.json"),
            ],
            0,
        ),
        "not-verified": (["verify", "--model", str(root / "stranger"), *own, "--no-data"], 1),
        "dispute": (["dispute", "--suspect", str(root / "released"), *claim, *claim, "--no-data"], 1),
        "attack": (
            [
                "attack",
                "prune",
                "--model",
                str(root / "released"),
                *own,
                "--rates",
                "0,0.5",
                "--out",
                str(root / "attack"),
            ],
            0,
        ),
    }
    for name, (argv, code) in runs.items():
        assert main([*argv, "--html", str(root / f"{name}.html")]) == code, name
    return root


EXPECTED = {  # page: (verdict banner text, banner kind, inline plots at least)
    "verify": ("VERIFIED", "yes", 2),
    "not-verified": ("NOT VERIFIED", "no", 1),
    "dispute": ("No owner proven", "info", 1),  # one claim twice: same time, a tie (the winner: test_attack_cli)
    "attack": ("Attack 'prune' run; its evidence below", "info", 1),
}


@pytest.mark.parametrize("name", EXPECTED)
def test_each_page_is_self_contained_with_its_verdict_and_plots(pages, name):
    verdict, _, plots = EXPECTED[name]
    assert_self_contained((pages / f"{name}.html").read_text(), verdict, plots)


def test_the_verify_page_explains_its_numbers_and_pins_its_files(pages):
    page = (pages / "verify.html").read_text()
    for section in (
        "What was checked, and why it proves something",
        "Signature bits per layer",
        "Accuracy of both branches",
        "How unlikely the evidence is by chance",
    ):
        assert f"<h2>{section}</h2>" in page
    assert "matches at least this many signature bits by luck" in page  # each p-value's meaning
    assert "suspect is the certified release, bit for bit" in page  # the certificate check
    for name in ("key.json", "model.safetensors", "certificate.json"):
        path = next(pages.rglob(name))
        assert hashlib.sha256(path.read_bytes()).hexdigest() in page, name
    assert re.search(r"passportnorm verify --model \S+released --key", page)  # reproduce command
    assert "features.5" in page  # a layer's name in the per-layer plot (SVG text stays text)


def test_the_attack_page_embeds_the_attacks_own_plot(pages):
    assert "data:image/png;base64," in (pages / "attack.html").read_text()


def test_text_from_files_is_escaped():
    assert "&lt;script&gt;" in markdown_html("| identity | <script>alert(1)</script> |\n|---|---|\n| a | b |")


@pytest.mark.parametrize("name", EXPECTED)
def test_each_page_renders_in_headless_chromium(pages, tmp_path, name):
    verdict, kind, _ = EXPECTED[name]
    check_in_chromium(pages / f"{name}.html", verdict, kind, tmp_path)
