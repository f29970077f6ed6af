"""The residual-stream permutation of a pre-norm transformer (residual_stream.py): found from the real
calls on our models and on models we did not write, function-preserving, undone by verify --reference
with the rearranged bits charged log2(width!), and no use to a claimant who permutes a public model."""

import copy
import importlib.util
import math
import warnings

import pytest
import torch

import passportnorm as pn
from passportnorm import zoo
from passportnorm.attacks.obfuscate import obfuscate
from passportnorm.consumer_channels import norm_readers, scale_channels
from passportnorm.data.registry import load_dataset
from passportnorm.key import extract_key
from passportnorm.residual_stream import find_stream, permutation_keeps_function
from passportnorm.verify import verify

IDS = load_dataset("pydocs").test.tensors[0][:8]


def _gpt(seed: int = 0):
    torch.manual_seed(seed)
    return zoo.build("gpt", in_channels=64, num_classes=256, width=0.0625).eval()


def _permuted(model, seed: int = 1):
    stream, why = find_stream(model, IDS[:2])
    assert stream is not None, why
    moved = copy.deepcopy(model)
    order = torch.randperm(stream.width, generator=torch.Generator().manual_seed(seed))
    assert permutation_keeps_function(moved, IDS[:2], stream, order)
    return moved, stream


def _spell(protected):
    """Every bit made to match without training: flip each channel whose passport response has the
    wrong sign, with its norm gain (the function stays)."""
    modules = dict(protected.named_modules())
    with torch.no_grad():
        for path, branch in pn.protected_layers(protected).items():
            g = branch.passport_responses()[0].detach()
            factor = torch.where(branch.signature.to(g.dtype) * g < 0, -1.0, 1.0).double()
            scale_channels(modules[path], [modules[r] for r in norm_readers(protected, IDS[:2], path)], factor)


def test_the_gpt_stream_is_found_whole_and_its_permutation_keeps_the_function():
    model = _gpt()
    moved, stream = _permuted(model)
    assert stream.norms[-1] == "norm" and len(stream.norms) == 9  # every RMSNorm reads the stream
    assert stream.writers[:2] == ("tokens", "positions") and len(stream.writers) == 10
    assert stream.readers[-1] == "head" and len(stream.readers) == 9
    with torch.no_grad():
        torch.testing.assert_close(moved(IDS), model(IDS), rtol=1e-4, atol=1e-4)
        assert not torch.equal(moved.tokens.weight, model.tokens.weight)


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="needs the hf extra")
@pytest.mark.parametrize("family", ["hf:llama", "hf:gpt2"])
def test_the_stream_of_a_hugging_face_decoder_permutes_with_its_function_kept(family):
    """Llama (RMSNorm, RoPE inside attention) and GPT-2 (Conv1D layers, a head tied to the token
    embedding, which must be permuted once)."""
    torch.manual_seed(0)
    model = zoo.build(family, num_classes=256).eval()
    ids = torch.randint(0, 256, (2, 16))
    stream, why = find_stream(model, ids)
    assert stream is not None, why
    before = model(ids).detach()
    assert permutation_keeps_function(model, ids, stream, torch.randperm(stream.width))
    torch.testing.assert_close(model(ids), before, rtol=1e-4, atol=1e-4)


def test_a_stream_pinned_by_fixed_positions_or_a_post_norm_block_is_left_with_the_reason():
    vit = zoo.build("vit", in_channels=1, num_classes=10).eval()
    images = torch.randn(2, 1, 28, 28)
    stream, _ = find_stream(vit, images)
    assert stream is not None and not permutation_keeps_function(vit, images, stream, torch.randperm(stream.width))
    _, changed = obfuscate(vit, images, flip=0.0, rescale=None)
    assert "fixed position table" in changed["skipped"]["residual stream"]


def test_verify_with_the_reference_undoes_the_stream_and_charges_its_orders():
    """Read against the release, the permuted copy gives back the release's bits layer for layer;
    one order rearranged every consumer layer, so their bits count charged log2(32!) = 117.7 bits,
    the orders the alignment chose among (DESIGN.md 3b): 288 matching bits still meet 2^-128."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        protected = pn.protect(_gpt(), IDS[:4], seed=3)
    _spell(protected)  # as training would embed them (with negative gains, so no flips on top: section 3a)
    key, release = extract_key(protected), pn.strip(protected).eval()
    stolen, changed = obfuscate(release, IDS[:2], flip=0.0, seed=5)
    assert changed["stream_permuted"] == 32
    as_is, original = verify(stolen, key), verify(release, key)
    assert as_is.per_layer != original.per_layer
    aligned = verify(stolen, key, reference=release, data=torch.utils.data.TensorDataset(IDS, IDS))
    assert aligned.alignment["used"] and aligned.alignment["stream_permuted"] == 32
    assert aligned.alignment["confidence"]["residual stream"] > 0.99
    assert aligned.per_layer == pytest.approx(original.per_layer)
    assert aligned.signature_bits == aligned.signature_matches == 288
    assert aligned.signature_search_log2 == pytest.approx(math.lgamma(33) / math.log(2))
    signature = next(r for r in aligned.reasons if r.startswith("signature:"))
    assert "charged 2^118" in signature and "meets the threshold" in signature
    assert not any(r.startswith("signature:") for r in aligned.failed_conditions)
    # the same bits with the charge waived would need fewer matches: the charge is what soundness costs
    from passportnorm.binding import required_matches

    assert required_matches(288, 2.0**-128, aligned.signature_search_log2) > required_matches(288, 2.0**-128)


def test_an_independent_gpt_is_not_taken_for_a_permuted_copy():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        protected = pn.protect(_gpt(0), IDS[:4], seed=3)
    key, release = extract_key(protected), pn.strip(protected).eval()
    report = verify(_gpt(9), key, reference=release, data=torch.utils.data.TensorDataset(IDS, IDS))
    assert report.alignment["confidence"]["residual stream"] < 0.3
    assert not report.alignment["used"] and not report.verified


def test_permuting_a_public_models_stream_to_spell_a_signature_claims_nothing():
    """The claimant's lie: permute public P's stream, protect that, flip every channel whose
    response has the wrong sign (the function stays), publish it as a release. The release spells
    the claimant's bits; P read against it gets its stream permuted back, no flip is undone (P's
    gains are positive), and its bits read at chance."""
    public = _gpt(0)
    moved, _ = _permuted(public, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        claimant = pn.protect(moved, IDS[:4], signature="(c) M", seed=7)
    _spell(claimant)
    key, release = extract_key(claimant), pn.strip(claimant).eval()
    assert verify(release, key).signature_detection == 1.0
    report = verify(public, key, reference=release, data=torch.utils.data.TensorDataset(IDS, IDS))
    assert report.alignment["stream_permuted"] == 32 and report.alignment["flipped"] == 0
    # P's bits, put back in the release's order and charged the orders: at chance, far from the claim
    assert report.signature_bits == 288 and report.signature_search_log2 > 117
    assert 100 < report.signature_matches < 190, report.signature_matches
    assert any(r.startswith("signature:") for r in report.failed_conditions) and not report.verified


@pytest.mark.parametrize("width", [0.0625, pytest.param(0.25, marks=pytest.mark.slow)])
def test_a_claimant_who_chooses_the_stream_order_to_spell_their_key_is_charged_out(width):
    """The strongest lie against the stream: the claimant makes a key on public P, then chooses the
    order of P's stream that makes P spell it best and publishes P in that order as their release.
    Read against that release, P gets exactly that order back. The order buys far more than chance
    (226/288 bits at width 32, 1014/1152 at 128); the log2(width!) charge is what keeps it from
    verifying, and at width 128 (slow) the lie would win without it (796 needed uncharged)."""
    from passportnorm.attacks.spell import spell_by_rearranging
    from passportnorm.binding import required_matches

    torch.manual_seed(0)
    public = zoo.build("gpt", in_channels=64, num_classes=256, width=width).eval()
    release, key = spell_by_rearranging(public, IDS[:4], "stream", signature="(c) M", seed=7)
    spelled = verify(release, key).signature_matches
    report = verify(public, key, reference=release, data=torch.utils.data.TensorDataset(IDS, IDS))
    bits, matches = report.signature_bits, report.signature_matches
    assert report.alignment["used"] and matches == spelled and matches > 0.7 * bits  # the order was recovered
    assert any(r.startswith("signature:") for r in report.failed_conditions) and not report.verified
    charged = required_matches(bits, 2.0**-128, report.signature_search_log2)
    assert matches < charged
    if width == 0.25:
        assert matches >= required_matches(bits, 2.0**-128)  # uncharged, these bits would have verified


@pytest.mark.parametrize("answered", [60, 1])
def test_with_no_bit_countable_the_triggers_do_not_turn_the_white_box_verdict(answered):
    """Where the alignment rearranged every keyed layer one by one, no bit may count. Trigger
    answers are then black-box evidence only: a claimant who permutes a public model and labels
    noise with its answers would show up too, so the white-box verdict stays 'not verified'."""
    from passportnorm.verdict import Evidence, VerdictRule

    evidence = Evidence(signature_mode="hash", bits_follow_from_key=True, signature_bits=0, signature_matches=0,
                        alignment_confidence=0.99, alignment_used=True, alignment_uncounted=9,
                        trigger_count=80, trigger_matches=answered, trigger_chance=1 / 256)
    verdict = VerdictRule().decide(evidence)
    assert not verdict.verified and "proof is black-box only" in verdict.reasons[-1]


def _zoo_model(name):
    from passportnorm.zoo.hub import import_timm, import_torchvision

    if name.startswith("tv:"):
        return import_torchvision().models.get_model(name[3:], num_classes=10)
    return import_timm().create_model(name, num_classes=10)


ZOO = pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="needs the zoo extra (timm, torchvision)")


@ZOO
@pytest.mark.parametrize("name", [
    "vit_tiny_patch16_224",
    pytest.param("mixer_b16_224", marks=pytest.mark.slow),  # a token-mixing write: nothing to permute
    pytest.param("tv:vit_b_16", marks=pytest.mark.slow),  # nn.MultiheadAttention writes through out_proj
])
def test_the_stream_of_vision_transformers_we_did_not_write_permutes_with_the_function_kept(name):
    torch.manual_seed(0)
    model = _zoo_model(name).eval()
    images = torch.randn(1, 3, 224, 224)
    stream, why = find_stream(model, images)
    assert stream is not None, why
    before = model(images).detach()
    assert permutation_keeps_function(model, images, stream, torch.randperm(stream.width))
    torch.testing.assert_close(model(images), before, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="needs the hf extra")
def test_a_post_norm_encoder_has_no_stream_to_permute_and_says_why():
    model = zoo.build("hf:bert", num_classes=2).eval()
    stream, why = find_stream(model, torch.randint(0, 256, (2, 16)))
    assert stream is None and "post-norm" in why
