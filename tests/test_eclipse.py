"""Issue 35: DeepEclipse-style structural obfuscation (split neurons, cancelling neurons, folded norms)."""

import pytest
import torch

from passportnorm.attacks.eclipse import eclipse, eclipse_attack
from passportnorm.errors import ConfigError
from passportnorm.verify import verify


@pytest.fixture(scope="module")
def owner(digits_owner):
    return digits_owner


@pytest.mark.parametrize("split,cancel", [(0.5, 0.0), (1.0, 0.0)])
def test_split_neurons_keep_the_function_and_are_undone_with_the_reference(owner, split, cancel):
    data, released, key = owner
    example = data.train.tensors[0][:8]
    # folded, flipped and rescaled but not permuted: on this conv chain permuted layers count no bits (attack spell)
    hidden, changed = eclipse(released, example, split=split, cancel=cancel, seed=3, permute=False)
    x = data.test.tensors[0][:64]
    assert (hidden(x) - released(x)).abs().max() < 1e-3  # the same function, another structure
    assert changed["widened"] and changed["folded"]
    widened = changed["widened"].values()
    assert sum(w["copies"] for w in widened) > 0
    report = verify(hidden, key, data=data.test, reference=released)
    narrowed = report.alignment["narrowed"]
    assert {n: v["to"] for n, v in narrowed.items()} == {n: v["from"] - w["copies"] + w["split"] - w["cancelling"]
                                                         for (n, v), w in zip(narrowed.items(), widened)}
    assert report.verified and report.signature_detection == 1.0


def test_the_attack_reports_each_share_and_refuses_a_bad_one(owner):
    data, released, key = owner
    example = data.train.tensors[0][:8]
    result = eclipse_attack(released, key, data.test, example, splits=(0.5, 1.0), cancel=0.0)
    for row in result["rows"]:  # permuted too: this chain's bits are not counted, but the branch works again
        assert row["key_order"].startswith("not verifiable") and row["passport_aware_accuracy"] > 0.9, row
        assert row["merged"] == row["channels_added"] - row["channels_split"]  # every copy merged back
    row = eclipse_attack(released, key, data.test, example, splits=(0.5,), cancel=0.5)["rows"][0]
    assert row["aligned"] == "aligned" and row["cancelled"] > 0 and row["passport_aware_accuracy"] > 0.9, row
    with pytest.raises(ConfigError, match="--rates"):
        eclipse(released, example, split=1.5)
    with pytest.raises(ConfigError, match="--cancel"):
        eclipse(released, example, cancel=-1)


def test_an_independent_model_so_obfuscated_is_never_verified(owner):
    from passportnorm import zoo

    data, released, key = owner
    torch.manual_seed(7)
    other = zoo.build("small_cnn", width=1.0, num_classes=10, in_channels=1).eval()
    hidden, _ = eclipse(other, data.train.tensors[0][:8], split=1.0, cancel=0.5, seed=1)
    assert not verify(hidden, key, data=data.test, reference=released).verified


def test_cancelling_groups_are_dropped_where_their_consumer_is_not_widened_too(owner):
    """The last widened layer's consumer is the classifier: its cancelling groups are found and dropped."""
    from passportnorm.narrow import narrow_to_reference

    data, released, key = owner
    example = data.train.tensors[0][:8]
    hidden, changed = eclipse(released, example, split=0.5, cancel=0.5, seed=3, permute=False)
    _, narrowed = narrow_to_reference(hidden, released, key, example)
    last = list(narrowed)[-1]
    assert narrowed[last]["cancelled"] > 0 and narrowed[last]["to"] == narrowed[last]["from"] - sum(
        changed["widened"][last][k] for k in ("copies", "cancelling")) + changed["widened"][last]["split"]


@pytest.mark.parametrize("split,cancel", [(0.5, 0.5), (1.0, 1.0)])
def test_cancelling_neurons_in_every_layer_are_undone(owner, split, cancel):
    """Consecutive widened layers: the last layer's decoys go first, then the earlier groups cancel."""
    data, released, key = owner
    hidden, _ = eclipse(released, data.train.tensors[0][:8], split=split, cancel=cancel, seed=3, permute=False)
    report = verify(hidden, key, data=data.test, reference=released)
    assert report.verified and report.signature_detection == 1.0
    assert all(v["cancelled"] > 0 for v in report.alignment["narrowed"].values())
