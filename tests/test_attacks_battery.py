"""Issue 18: re-protection, quantization, distillation, fine-pruning, dummy neurons, combined attacks."""

import pytest
import torch

from passportnorm.attacks.quantize import QUANTIZE_MODES, dequantize_into, quantize, quantize_attack
from passportnorm.cli import main
from passportnorm.fileio import save_tensors
from passportnorm.release import save_released
from passportnorm.verify import verify


@pytest.fixture(scope="module")
def owner(digits_owner):
    return digits_owner


@pytest.mark.parametrize("mode", QUANTIZE_MODES)
def test_quantized_copy_still_verifies_with_the_reference(owner, mode):
    data, released, key = owner
    result = quantize_attack(released, key, data.test, data.train.tensors[0][:128], modes=(mode,))
    row = result["rows"][0]
    assert row["served_accuracy"] > 0.9 and row["verified"], row
    assert row["signature_detection"] > 0.99


def test_static_int8_folds_the_norms_and_alignment_undoes_the_scaling(owner):
    data, released, key = owner
    served = quantize(released, "int8-static", data.train.tensors[0][:64])
    folded = [layer.norm for layer in key.layers if layer.norm not in dict(served.named_modules())]
    assert folded == [layer.norm for layer in key.layers]  # every protected norm is gone from the int8 model
    restored = dequantize_into(released, served, data.train.tensors[0][:8])
    outputs = served(data.test.tensors[0][:64]).argmax(1), restored(data.test.tensors[0][:64]).argmax(1)
    assert (outputs[0] == outputs[1]).float().mean() > 0.95  # the same model, up to activation rounding
    assert verify(restored, key, reference=released).verified
    assert verify(restored, key, reference=released).alignment["used"]


def test_a_quantized_weights_file_is_refused_with_one_line(owner, tmp_path, capsys):
    data, released, key = owner
    folder = save_released(
        released, tmp_path / "int8", "small_cnn", {"width": 1.0, "num_classes": 10, "in_channels": 1}
    )
    state = {k: v for k, v in released.state_dict().items()}
    first = next(k for k, v in state.items() if k.endswith("weight") and v.dim() > 1)
    state[first] = state[first].mul(100).round().to(torch.int8)
    save_tensors(state, folder / "model.safetensors")
    code = main(["verify", "--model", str(folder), "--key", str(key.save(tmp_path / "key")), "--no-data"])
    err = capsys.readouterr().err
    assert code == 2 and "a quantized model" in err and repr(first) in err and err.count("\n") == 1


def test_a_pickle_file_instead_of_a_folder_is_refused_with_one_line(owner, tmp_path, capsys):
    data, released, key = owner
    path = tmp_path / "stolen.pt"
    torch.save(released.state_dict(), path)
    code = main(["verify", "--model", str(path), "--key", str(key.save(tmp_path / "key")), "--no-data"])
    err = capsys.readouterr().err
    assert code == 2 and "is a file, not a passportnorm released model" in err and err.count("\n") == 1


def test_distilled_copy_is_not_verified_white_box(owner):
    from passportnorm import zoo
    from passportnorm.attacks.distill import distill_attack

    data, released, key = owner
    fresh = zoo.build("small_cnn", width=1.0, num_classes=10, in_channels=1)
    result = distill_attack(released, fresh, key, data.train, data.test, epochs=3)
    row = result["rows"][0]
    assert row["attacker_accuracy"] > 0.85, row  # the extraction works ...
    assert not row["white_box_verified"] and row["signature_detection"] < 0.65  # ... and carries no proof


def test_fine_pruning_zeroes_channels_that_stay_zero_and_reports_the_boundary(owner):
    from passportnorm.attacks.fineprune import fine_prune, prune_channels

    data, released, key = owner
    example = data.train.tensors[0][:2]
    pruned, masks = prune_channels(released, 0.5, data.train, example)
    assert all(int((~keep).sum()) == pair.channels // 2 for pair, keep in masks.items())
    result = fine_prune(released, key, data.train, data.test, rates=(0.0, 0.9), epochs=1)
    modules = dict(result["model"].named_modules())
    _, masks = prune_channels(released, 0.9, data.train, example)
    for pair, keep in masks.items():  # still zero after fine-tuning
        assert modules[pair.producer].weight[~keep].abs().max() == 0
    assert result["last_verified"] == 0.0 and result["first_not_verified"] == 0.9
    assert result["rows"][1]["signature_detection"] < 0.2


@pytest.mark.parametrize("share", [0.1, 0.5])
def test_dummy_neurons_keep_the_function_and_are_undone_with_the_reference(owner, share):
    from passportnorm.attacks.dummy import add_dummy_neurons
    from passportnorm.attacks.obfuscate import obfuscate

    data, released, key = owner
    example = data.train.tensors[0][:8]
    wide, added = add_dummy_neurons(released, example, share, seed=3)
    # flipped and rescaled but not permuted: on this conv chain permuted layers count no bits (attack spell)
    hidden, _ = obfuscate(wide, example, permute=False, seed=3)
    x = data.test.tensors[0][:64]
    assert (hidden(x) - released(x)).abs().max() < 1e-3  # the same function, a wider architecture
    assert sum(p.numel() for p in hidden.parameters()) > sum(p.numel() for p in released.parameters())
    report = verify(hidden, key, data=data.test, reference=released)
    assert report.verified and report.signature_detection == 1.0
    narrowed = report.alignment["narrowed"]
    assert {n: (v["dummy"], v["merged"]) for n, v in narrowed.items()} == {
        n: (a["dummy"], a["split"]) for n, a in added.items()
    }
    assert "split channels merged" in report.to_markdown()


def test_narrowing_leaves_an_independent_wider_model_alone_and_says_why_it_cannot_align(owner):
    """A model that is simply wider (no dummies, no splits) is not cut down to fit: alignment refuses it."""
    from passportnorm import zoo
    from passportnorm.errors import OwnerKeyError

    data, released, key = owner
    other = zoo.build("small_cnn", width=1.25, num_classes=10, in_channels=1).eval()
    with pytest.raises(OwnerKeyError, match="after removing the channels narrow.py can prove"):
        verify(other, key, reference=released)


def test_combined_chain_reports_where_the_proof_stops(owner):
    from passportnorm.attacks.combined import combined_attack

    data, released, key = owner
    result = combined_attack(
        released,
        key,
        data.train,
        data.test,
        data.train.tensors[0][:8],
        steps=("prune", "finetune"),
        rates=(0.3, 0.95),
        epochs=1,
    )
    first, last = result["rows"]
    assert first["verified"]  # pruned and tuned: still proven
    assert not last["verified"] and last["attacker_accuracy"] < first["attacker_accuracy"]
    assert result["last_verified"] == 0.3 and result["first_not_verified"] == 0.95
    # widened and permuted too: the copy is recognised, but on this conv chain every protected layer
    # was permuted, and a permutation could have put the bits there either way: nothing is proven
    scrambled = combined_attack(released, key, data.train, data.test, data.train.tensors[0][:8],
                                steps=("prune", "dummy-neurons", "obfuscate"), rates=(0.3,), epochs=1)
    assert scrambled["rows"][0]["alignment_used"] and not scrambled["rows"][0]["verified"]
