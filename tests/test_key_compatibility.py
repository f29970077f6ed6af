"""Keys written before branches attached to their norms (wrapper modules, commit 1f70547) still load.

The fixture is a real run of that version (tests/fixtures/key-format-v1/expected.json says how it
was made): its released model, owner key and certificate. The key's tensor names are the branch's
own state (passports, MLP, statistics) by norm path, so they mean the same thing in both layouts.
"""

import json
from pathlib import Path

import pytest

from passportnorm.cli import main
from passportnorm.data import load_dataset
from passportnorm.key import OwnerKey
from passportnorm.release import load_released
from passportnorm.verify import verify

FIXTURE = Path(__file__).parent / "fixtures" / "key-format-v1"


def test_a_key_of_the_previous_layout_verifies_its_release_with_the_same_numbers():
    expected = json.loads((FIXTURE / "expected.json").read_text())
    key = OwnerKey.load(FIXTURE / "owner-key")
    released, _ = load_released(FIXTURE / "released")
    report = verify(released, key, data=load_dataset("digits", seed=0).test)
    assert report.verified == expected["verified"] is True
    assert (report.signature_matches, report.signature_bits) == (
        expected["signature_matches"],
        expected["signature_bits"],
    )
    assert report.passport_aware_accuracy == pytest.approx(expected["passport_aware_accuracy"], abs=1 / 360)
    assert report.passport_free_accuracy == expected["passport_free_accuracy"]


def test_the_cli_verifies_and_checks_the_certificate_of_the_previous_layout(capsys):
    args = [
        "verify",
        "--model",
        str(FIXTURE / "released"),
        "--key",
        str(FIXTURE / "owner-key"),
        "--certificate",
        str(FIXTURE / "certificate.json"),
        "--dataset",
        "digits",
    ]
    assert main(args) == 0, capsys.readouterr()
