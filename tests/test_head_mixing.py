"""Mixing attention heads by invertible matrices (head_mixing.py, LFEA's general linear maps): the
function kept on our ViT and GPT and on models we did not write; found back by verify --reference,
with none of the mixed bits counted and the rest verifying; never found in an independent model."""

import copy
import importlib.util
import warnings

import pytest
import torch

import passportnorm as pn
from passportnorm import zoo
from passportnorm.attacks.obfuscate import obfuscate
from passportnorm.capture import call_model
from passportnorm.head_mixing import find_heads, mix_heads, mixing_keeps_function, mixing_to, random_mixing
from passportnorm.norm import lever_weight
from passportnorm.verify import verify

IMAGES = torch.randn(2, 1, 28, 28)
IDS = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))


def _random_mixing(model, heads, seed=0):
    gen = torch.Generator().manual_seed(seed)
    size = lever_weight(dict(model.named_modules())[heads.out]).shape[1] // heads.heads
    return [(random_mixing(size, gen), random_mixing(size, gen)) for _ in range(heads.heads)]


def _logits(out):
    return out.logits if hasattr(out, "logits") else out


def _mixes_with_the_function_kept_and_is_found_back(model, example):
    model.eval()
    found = find_heads(model)
    assert found, "no attention found"
    mixed = copy.deepcopy(model)
    for heads in found:
        mixing = _random_mixing(mixed, heads)
        mix_heads(mixed, heads, mixing)
        fit = mixing_to(mixed, model, heads)
        assert fit.fit > 0.999 and fit.unmixed_fit < 0.5
        for (a, b), (found_a, found_b) in zip(mixing, fit.mixing):
            assert torch.allclose(found_a, a, atol=1e-5) and torch.allclose(found_b, b, atol=1e-5)
    with torch.no_grad():
        before, after = _logits(call_model(model, example)), _logits(call_model(mixed, example))
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4 * float(before.abs().amax()))
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), mixed.state_dict().values()))
    return found


def test_random_mixings_are_well_conditioned_and_not_scaled_permutations():
    m = random_mixing(16, torch.Generator().manual_seed(1))
    singular = torch.linalg.svdvals(m)
    assert singular.min() >= 0.5 - 1e-9 and singular.max() <= 2.0 + 1e-9
    assert (m.abs() > 0.05).sum(dim=1).min() > 4  # every row mixes many dimensions


@pytest.mark.parametrize("arch,example", [("vit", IMAGES), ("gpt", IDS)])
def test_our_attention_heads_mix_with_the_function_kept_and_are_found_back(arch, example):
    torch.manual_seed(0)
    model = zoo.build(arch, width=0.125) if arch == "vit" else zoo.build(arch, in_channels=64, num_classes=256, width=0.0625)
    assert len(_mixes_with_the_function_kept_and_is_found_back(model, example)) == 4


def test_an_independent_model_is_not_taken_for_a_mixed_copy_and_a_fold_or_flip_is_seen_through():
    torch.manual_seed(0)
    model = zoo.build("vit", width=0.125).eval()
    torch.manual_seed(1)
    other = zoo.build("vit", width=0.125).eval()
    heads = find_heads(model)[0]
    assert mixing_to(other, model, heads).fit < 0.2
    stolen = copy.deepcopy(model)
    with torch.no_grad():  # a norm's gain folded into its readers, half its channels negated
        columns = lever_weight(dict(stolen.named_modules())[heads.lever])
        gen = torch.Generator().manual_seed(2)
        columns.mul_(torch.where(torch.rand(columns.shape[1], generator=gen) < 0.5, -1.0, 1.0)
                     * (0.5 + 1.5 * torch.rand(columns.shape[1], generator=gen)))
    mix_heads(stolen, heads, _random_mixing(stolen, heads))
    assert mixing_to(stolen, model, heads).fit > 0.999


def test_a_mixing_that_changes_the_output_is_refused_and_undone():
    torch.manual_seed(0)
    model = zoo.build("vit", width=0.125).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    heads = find_heads(model)[0]
    wrong = type(heads)(heads.lever, heads.out, heads.heads // 2)  # another layout: two heads as one
    assert not mixing_keeps_function(model, IMAGES, wrong, _random_mixing(model, wrong))
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=1e-5)


@pytest.mark.parametrize("variant", [
    dict(permute=False, flip=0.0, rescale=None, mix=True),
    dict(permute=True, flip=0.5, rescale=(0.5, 2.0), fold=True, mix=True),  # the lfea (all) variant
])
def test_verify_with_the_reference_unmixes_and_counts_only_the_bits_no_mixing_reached(vit_owner, variant):
    """A mixing is a continuous choice (like a rotation): the bits of the attention-read norms it
    put back cannot count; the MLP-read and final norms' bits (5 of 9 norms, 320 of 576) verify."""
    data, release, key, _ = vit_owner
    original = verify(release, key, data=data.test)
    stolen, changed = obfuscate(release, data.train.tensors[0][:8], seed=4, **variant)
    assert len(changed["mixed"]) == 4
    in_key_order = verify(stolen, key, data=data.test)
    assert not in_key_order.verified
    aligned = verify(stolen, key, data=data.test, reference=release)
    assert aligned.per_layer == pytest.approx(original.per_layer)  # put back, bit for bit
    assert aligned.alignment["rearranged"] == [f"blocks.{i}.norm1" for i in range(4)]
    assert aligned.signature_bits == 576 - 4 * 64 and aligned.signature_matches == aligned.signature_bits
    assert aligned.verified
    assert "rotated or mixed back are not counted" in aligned.reasons[0]


def test_an_independent_vit_mixed_or_not_is_never_verified_and_never_unmixed(vit_owner):
    data, release, key, independent = vit_owner
    for model in (independent, obfuscate(independent, data.train.tensors[0][:8], seed=5, mix=True)[0]):
        report = verify(model, key, data=data.test, reference=release)
        assert not report.verified and not report.alignment.get("unmixed_levers")


@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="needs the zoo extra (timm, torchvision)")
def test_timm_and_torchvision_vit_heads_mix_with_the_function_kept():
    from passportnorm.zoo.hub import import_timm, import_torchvision

    torch.manual_seed(0)
    timm_vit = import_timm().create_model("vit_tiny_patch16_224", num_classes=10, depth=2)
    assert len(_mixes_with_the_function_kept_and_is_found_back(timm_vit, torch.randn(1, 3, 224, 224))) == 2
    vision_transformer = import_torchvision().models.vision_transformer.VisionTransformer
    tv_vit = vision_transformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64)
    found = _mixes_with_the_function_kept_and_is_found_back(tv_vit, torch.randn(2, 3, 32, 32))
    assert [h.out for h in found] == [f"encoder.layers.encoder_layer_{i}.self_attention.out_proj" for i in range(2)]


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="needs the hf extra")
def test_hf_gpt2_heads_mix_and_llama_rotary_heads_are_not_offered():
    from passportnorm.zoo.hf import token_input

    torch.manual_seed(0)
    gpt2 = zoo.build("hf:gpt2", num_classes=256)
    ids = token_input()
    assert len(_mixes_with_the_function_kept_and_is_found_back(gpt2, ids)) >= 1
    llama = zoo.build("hf:llama", num_classes=256).eval()
    _, changed = obfuscate(llama, ids, permute=False, flip=0.0, rescale=None, mix=True)
    assert changed["mixed"] == [] and "known layout" in changed["skipped"]["attention heads"]
