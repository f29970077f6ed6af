"""No false "verified": an independent model is never verified, whatever flags the verifier passes.

The pair is the issue-15 one on a small budget: two owners trained by the CLI with different
training seeds, secrets and identities. Before the fix, aligning one owner's model to the other's
release chose each channel's sign and match from the filter direction that carries the bits,
which manufactured agreement far beyond chance.
"""

import itertools
import json

import pytest
import torch

from passportnorm.align import align_to_reference
from passportnorm.cli import main
from passportnorm.detection import signature_detection
from passportnorm.key import OwnerKey, attach_key
from passportnorm.release import load_released, save_released
from passportnorm.verdict import binomial_p_value

# shuffle passports: the issue-15 pair, whose activation passports gave the old matching its false agreement
OWNER = ["--dataset", "digits", "--arch", "small_cnn", "--width", "1.0", "--epochs", "3", "--batch-size", "32",
         "--trigger-count", "20", "--passports", "shuffle"]
FLAGS = [list(itertools.chain(*c)) for c in itertools.product([[], ["--reference", "REF"]], [[], ["--no-data"]])]


@pytest.fixture(scope="module")
def owners(tmp_path_factory):
    root = tmp_path_factory.mktemp("owners")
    assert main(["protect", *OWNER, "--seed", "0", "--secret-seed", "1", "--signature", "(c) Alice", "--out", str(root / "A")]) == 0
    assert main(["protect", *OWNER, "--seed", "1", "--secret-seed", "2", "--signature", "(c) Mallory", "--out", str(root / "B")]) == 0
    return root / "A", root / "B"


@pytest.mark.parametrize("direction", ["A's key on B", "B's key on A"])
@pytest.mark.parametrize("flags", FLAGS, ids=lambda f: " ".join(f) or "no flags")
def test_an_independent_owner_is_never_verified(owners, direction, flags, capsys):
    key_owner, suspect = owners if direction == "A's key on B" else owners[::-1]
    flags = [str(key_owner / "released") if f == "REF" else f for f in flags]
    code = main(["verify", "--model", str(suspect / "released"), "--key", str(key_owner / "owner-key"), "--json", *flags])
    assert code == 1, capsys.readouterr().out


def test_the_old_matching_on_whole_filters_would_have_verified_the_pair(owners):
    """What the fix removes: the same pair, aligned on whole filters and read whatever the confidence."""
    key_owner, suspect = owners
    key = OwnerKey.load(key_owner / "owner-key")
    reference, model = load_released(key_owner / "released")[0], load_released(suspect / "released")[0]
    example = key.trigger.inputs[:2]
    rates = {}
    for exclude in (False, True):
        aligned, report = align_to_reference(model, reference, key, example_input=example, exclude_passport_directions=exclude)
        rates[exclude] = signature_detection(attach_key(aligned, key)).rate
    assert report["lowest_confidence"] < 0.2  # an independent model matches no better than chance ...
    p_value = {exclude: binomial_p_value(round(rate * key.total_bits), key.total_bits, 0.5) for exclude, rate in rates.items()}
    assert p_value[False] < 1e-6  # ... yet the old matching made agreement the paper's rule would call proof
    assert p_value[True] > 1e-3  # the bits read after the sound matching stay at chance


def test_the_owners_permuted_copy_is_recognised_but_counts_no_permuted_bits(owners, tmp_path, capsys):
    owner = owners[0]
    code = main(["attack", "obfuscate", "--model", str(owner / "released"), "--key", str(owner / "owner-key"),
                 "--out", str(tmp_path / "hidden")])
    assert code == 0
    args = ["verify", "--model", str(tmp_path / "hidden" / "model"), "--key", str(owner / "owner-key")]
    assert main(args) == 1  # read in key order, the scrambled channels hide the bits
    capsys.readouterr()
    # aligned, the copy is recognised, but on this conv chain every protected layer was permuted and a
    # permutation could put bits there either way (attack spell): none is counted, nothing is proven
    assert main([*args, "--reference", str(owner / "released"), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["alignment"]["used"] and report["alignment"]["lowest_confidence"] > 0.999
    assert report["signature_bits"] == 0 and len(report["alignment"]["rearranged"]) >= 2


def test_a_ruined_model_and_the_wrong_dataset_are_not_verified(owners, tmp_path, capsys):
    owner = owners[0]
    model, meta = load_released(owner / "released")
    head = model.classifier
    with torch.no_grad():  # the signature lives in the convolutions; a zeroed head answers one class for everything
        head.weight.zero_()
        head.bias.zero_()
    save_released(model, tmp_path / "ruined", meta["arch"], meta["model_config"], dataset=meta["dataset"])
    args = ["verify", "--model", str(tmp_path / "ruined"), "--key", str(owner / "owner-key")]
    assert main(args) == 1
    assert "accuracy floor: passport-aware 10." in capsys.readouterr().out
    assert main([*args, "--no-data"]) == 0  # the bits are intact: a signature-only check still finds them
    capsys.readouterr()
    wrong = ["verify", "--model", str(owner / "released"), "--key", str(owner / "owner-key"), "--dataset", "mnist5k"]
    assert main(wrong) == 1  # 28x28 digits through an 8x8 model: both branches at chance, no drop between them
    assert "accuracy floor: passport-aware" in capsys.readouterr().out
