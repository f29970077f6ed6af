"""The residual-stream rotation (stream_rotation.py): gains folded into their readers, one orthogonal
matrix on every tensor the stream runs along, the function kept on our GPT and on models we did not
write; undone by verify --reference with none of the rotated bits counted; refused with the reason
where it cannot be exact."""

import copy
import importlib.util
import warnings

import pytest
import torch

import passportnorm as pn
from passportnorm import zoo
from passportnorm.attacks.obfuscate import obfuscate
from passportnorm.capture import call_model
from passportnorm.data.registry import load_dataset
from passportnorm.key import extract_key
from passportnorm.residual_stream import find_stream
from passportnorm.stream_rotation import fold_stream_norms, random_rotation, rotatable, rotate_stream, rotation_to
from passportnorm.verify import verify

IDS = load_dataset("pydocs").test.tensors[0][:8]


def _gpt(seed=0):
    torch.manual_seed(seed)
    return zoo.build("gpt", in_channels=64, num_classes=256, width=0.0625).eval()


def _trained_looking(model):
    """Gains and biases away from 1 and 0, as training leaves them: a fold must then carry them."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm) or type(module).__name__.endswith("RMSNorm"):
                module.weight.uniform_(0.5, 2.0)
                if getattr(module, "bias", None) is not None:
                    module.bias.normal_()
    return model


def _logits(out):
    return out.logits if hasattr(out, "logits") else out


def _rotates_with_the_function_kept(model, example):
    stream, why = find_stream(model, example)
    assert stream is not None, why
    keep_ones, why = rotatable(model, stream)
    assert keep_ones is not None, why
    moved = copy.deepcopy(model)
    assert fold_stream_norms(moved, stream, example)
    rotation = random_rotation(stream.width, torch.Generator().manual_seed(0), keep_ones)
    rotate_stream(moved, stream, rotation)
    with torch.no_grad():
        before, after = _logits(call_model(model, example)), _logits(call_model(moved, example))
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4 * float(before.abs().amax()))
    found, fit = rotation_to(moved, model, stream)
    assert fit > 0.999 and torch.allclose(found, rotation.T, atol=1e-6)
    return keep_ones


def test_random_rotations_are_orthogonal_and_a_layernorms_keeps_the_ones_direction():
    for keep in (False, True):
        q = random_rotation(16, torch.Generator().manual_seed(1), keep)
        assert torch.allclose(q @ q.T, torch.eye(16, dtype=torch.float64), atol=1e-10)
        assert keep == torch.allclose(torch.ones(16, dtype=torch.float64) @ q, torch.ones(16, dtype=torch.float64))


def test_the_gpt_stream_rotates_with_its_function_kept_and_a_rotation_is_found_back():
    assert _rotates_with_the_function_kept(_trained_looking(_gpt()), IDS[:2]) is False  # RMSNorm: any rotation


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="needs the hf extra")
def test_a_llama_stream_rotates_and_a_tied_gpt2_head_is_refused_with_the_reason():
    torch.manual_seed(0)
    ids = torch.randint(0, 256, (2, 16))
    assert _rotates_with_the_function_kept(_trained_looking(zoo.build("hf:llama", num_classes=256)).eval(), ids) is False
    gpt2 = _trained_looking(zoo.build("hf:gpt2", num_classes=256)).eval()
    rotated, changed = obfuscate(gpt2, ids, permute=False, flip=0.0, rescale=None, rotate=True)
    assert "stream_rotated" not in changed and "tied to the token embedding" in changed["skipped"]["rotation"]


@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="needs the zoo extra (timm, torchvision)")
def test_a_timm_vits_layernorm_stream_rotates_keeping_the_mean():
    from passportnorm.zoo.hub import import_timm

    torch.manual_seed(0)
    model = _trained_looking(import_timm().create_model("vit_tiny_patch16_224", num_classes=10)).eval()
    assert _rotates_with_the_function_kept(model, torch.randn(1, 3, 224, 224)) is True


def test_a_layer_scale_or_a_cnn_is_refused_with_the_reason():
    _, changed = obfuscate(zoo.build("small_cnn"), torch.randn(2, 1, 8, 8), permute=False, flip=0.0,
                           rescale=None, rotate=True)
    assert "no norm reads a residual stream" in changed["skipped"]["rotation"]


def test_verify_with_the_reference_undoes_a_rotation_and_counts_none_of_its_bits():
    """A rotation is a continuous choice: a claimant could pick one that spells any bits, so the
    bits it put back cannot count, however well they read (DESIGN.md 3b)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        protected = pn.protect(_gpt(), IDS[:4], seed=3)
    key, release = extract_key(protected), pn.strip(protected).eval()
    stolen, changed = obfuscate(release, IDS[:2], permute=False, flip=0.0, rescale=None, rotate=True, seed=4)
    assert changed["stream_rotated"] == 32
    original = verify(release, key)
    aligned = verify(stolen, key, reference=release, data=torch.utils.data.TensorDataset(IDS, IDS))
    assert aligned.alignment["stream_rotated"] == 32 and aligned.alignment["confidence"]["residual stream"] > 0.99
    assert aligned.per_layer == pytest.approx(original.per_layer)  # put back, bit for bit
    assert aligned.signature_bits == 0 and not aligned.verified
    assert "proof is black-box only" in aligned.reasons[-1]


def test_an_independent_gpt_is_not_taken_for_a_rotated_copy():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        protected = pn.protect(_gpt(0), IDS[:4], seed=3)
    key, release = extract_key(protected), pn.strip(protected).eval()
    report = verify(_gpt(9), key, reference=release, data=torch.utils.data.TensorDataset(IDS, IDS))
    assert report.alignment["confidence"]["residual stream"] < 0.5
    assert not report.alignment["used"] and not report.verified  # read as it stands
