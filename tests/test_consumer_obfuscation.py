"""Gain folding and sign flips at norms read by consumers (pre-norm transformers): the function is
kept, a key-order reading loses the flipped bits, verify --reference undoes them, and an independent
model is still never verified, with or without negated gains."""

import warnings

import pytest
import torch
from torch import nn

import passportnorm as pn
from passportnorm import zoo
from passportnorm.attacks import obfuscate
from passportnorm.consumer_channels import norm_readers, scale_keeps_function
from passportnorm.verify import verify


class PostNorm(nn.Module):
    """The norm's output is also the residual stream (BERT): scaling its channels changes the function."""

    def __init__(self):
        super().__init__()
        self.norm, self.fc, self.head = nn.LayerNorm(8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        h = self.norm(x)
        return self.head(h + self.fc(h))


def test_a_fold_is_refused_and_undone_bit_for_bit_where_the_norm_also_feeds_the_residual():
    model, x = PostNorm().eval(), torch.randn(4, 5, 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert norm_readers(model, x, "norm") == ["fc"]  # head reads h + fc(h), not h
    factor = torch.linspace(0.5, 2.0, 8).double()
    assert not scale_keeps_function(model, x, model.norm, [model.fc], factor)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_llamas_norm_is_read_by_q_k_and_v_and_its_fold_keeps_the_function():
    pytest.importorskip("transformers")
    from passportnorm.zoo.hf import token_input

    model, x = zoo.build("hf:llama").eval(), token_input()
    norm = "hf.model.layers.0.input_layernorm"
    readers = norm_readers(model, x, norm)
    assert readers == [f"hf.model.layers.0.self_attn.{p}_proj" for p in "qkv"]
    modules = dict(model.named_modules())
    factor = torch.where(torch.arange(64) % 3 == 0, -1.0, 1.5).double()
    assert scale_keeps_function(model, x, modules[norm], [modules[p] for p in readers], factor)
    assert (modules[norm].weight[::3] < 0).all()  # the flip's trace


def test_flips_break_key_order_reading_and_the_reference_undoes_them(vit_owner):
    data, released, key, _ = vit_owner
    x = data.train.tensors[0][:4]
    obfuscated, changed = obfuscate(released, x, permute=False, flip=0.5, rescale=(0.5, 2.0), seed=2)
    assert len(changed["flipped"]) == 9 and not changed["skipped"]
    with torch.no_grad():
        torch.testing.assert_close(obfuscated(x), released(x), rtol=1e-4, atol=1e-5)
    plain = verify(obfuscated, key, data=data.test)
    aligned = verify(obfuscated, key, data=data.test, reference=released)
    assert plain.signature_detection < 0.7 and not plain.verified
    assert aligned.signature_detection == 1.0 and aligned.verified
    assert aligned.alignment["flipped"] == sum(changed["flipped"].values())


def test_an_independent_vit_is_never_verified_even_with_negated_gains(vit_owner):
    data, released, key, independent = vit_owner
    x = data.train.tensors[0][:4]
    flipped, _ = obfuscate(independent, x, permute=False, flip=0.5, rescale=None, seed=5)
    for suspect in (independent, flipped):
        report = verify(suspect, key, data=data.test, reference=released)
        assert not report.verified and report.signature_detection < 0.7
