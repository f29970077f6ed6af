"""Consumers the forward hooks alone do not see (issue 34): a Linear whose weight is passed to
``F.linear`` by its parent (torchvision's Swin), a convolution reading a channels-first norm
(ConvNeXt's downsampling), a producer whose output reaches the norm with its tokens rearranged or
cut (Swin V2's attention windows merged back)."""

import importlib.util
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import passportnorm as pn
from passportnorm.capture import capture
from passportnorm.norm import consumer_responses
from passportnorm.protect import protected_layers
from sign_training import train_signature


class FunctionalAttention(nn.Module):
    """Passes its projections' weights to ``F.linear`` itself, as torchvision's Swin does."""

    def __init__(self, dim):
        super().__init__()
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        q, k, v = F.linear(x.flip(1), self.qkv.weight, self.qkv.bias).chunk(3, dim=-1)  # tokens rearranged
        mixed = torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v
        return F.linear(mixed, self.proj.weight, self.proj.bias).flip(1)


class PostNormBlock(nn.Module):
    """Swin V2's order, ``x + norm(attn(x))``: the norm's producer is a functional projection."""

    def __init__(self, dim):
        super().__init__()
        self.attn, self.norm = FunctionalAttention(dim), nn.LayerNorm(dim)

    def forward(self, x):
        return x + self.norm(self.attn(x))


class FunctionalNet(nn.Module):
    def __init__(self, dim=16):
        super().__init__()
        self.embed, self.post = nn.Linear(8, dim), PostNormBlock(dim)
        self.norm, self.attn, self.head = nn.LayerNorm(dim), FunctionalAttention(dim), nn.Linear(dim, 3)

    def forward(self, x):
        x = self.post(self.embed(x))
        x = x + self.attn(self.norm(x))  # pre-norm: its consumer is attn.qkv, called functionally
        return self.head(x.mean(1))


class LayerNorm2d(nn.LayerNorm):
    """timm's channels-first LayerNorm: normalises axis 1 of an NCHW map."""

    def forward(self, x):
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps).permute(
            0, 3, 1, 2
        )


class ConvStages(nn.Module):
    """ConvNeXt's shape: a residual stage, then a norm read by a strided conv, then a pooled head norm."""

    def __init__(self, dim=8):
        super().__init__()
        self.stem, self.mix = nn.Conv2d(3, dim, 3, padding=1), nn.Conv2d(dim, dim, 3, padding=1)
        self.down_norm, self.down = LayerNorm2d(dim), nn.Conv2d(dim, 2 * dim, 2, stride=2)
        self.head_norm, self.head = LayerNorm2d(2 * dim), nn.Linear(2 * dim, 3)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.mix(torch.relu(x))
        x = self.down(self.down_norm(x))
        return self.head(self.head_norm(x.mean((2, 3), keepdim=True)).flatten(1))


def _consumers(report):
    return {p.norm: (p.producer, p.role, p.read_as) for p in report.pairs}


def test_a_linear_used_through_f_linear_is_recorded_as_called_once():
    model, x = FunctionalNet(), torch.randn(2, 5, 8)
    record = capture(model, x, ["attn.qkv", "attn.proj", "embed"])
    assert record.calls == {"embed": 1, "attn.qkv": 1, "attn.proj": 1}
    assert record.order == ["embed", "attn.qkv", "attn.proj"]
    assert record.inputs["attn.qkv"].shape == (2, 5, 16)
    plain = capture(nn.Sequential(nn.Linear(8, 4)), x, ["0"])
    assert plain.calls == {"0": 1}  # its own forward's F.linear is not counted twice


def test_functional_projections_pair_as_producer_and_consumer():
    report = pn.find_pairs(FunctionalNet(), torch.randn(2, 5, 8))
    assert not report.unprotectable
    assert _consumers(report) == {
        "post.norm": ("post.attn.proj", "producer", "seen in the calls, tokens rearranged"),
        "norm": ("attn.qkv", "consumer", "tokens rearranged"),
    }


def test_a_channels_first_norm_pairs_with_the_conv_and_the_linear_that_read_it():
    report = pn.find_pairs(ConvStages(), torch.randn(2, 3, 8, 8))
    assert not report.unprotectable
    assert _consumers(report)["down_norm"] == ("down", "consumer", "as it is")
    assert _consumers(report)["head_norm"] == ("head", "consumer", "as it is")  # (B, C, 1, 1) read flattened


def test_a_grouped_or_same_padded_conv_is_not_a_consumer():
    model = ConvStages()
    model.down = nn.Conv2d(8, 16, 2, stride=2, groups=2)
    reasons = {u.norm: u.reason for u in pn.find_pairs(model, torch.randn(2, 3, 8, 8)).unprotectable}
    assert "no Linear, self-attention or one-group convolution reads its output whole" in reasons["down_norm"]


def test_the_conv_consumer_response_is_its_transpose_averaged_and_reads_only_its_column():
    conv = nn.Conv2d(4, 6, 2, stride=2).double()
    passports = torch.randn(3, 6, 5, 5, dtype=torch.float64)
    g = consumer_responses(conv, conv.weight, passports, 4)
    expected = torch.einsum("nohw,ojab->nj", passports, conv.weight) / 100  # stride = kernel: no overlap
    assert torch.allclose(g, expected)
    moved = conv.weight.detach().clone()
    moved[:, 1] *= -1
    changed = consumer_responses(conv, moved, passports, 4)
    assert torch.allclose(changed[:, [0, 2, 3]], g[:, [0, 2, 3]]) and torch.allclose(changed[:, 1], -g[:, 1])


@pytest.mark.parametrize("build", [FunctionalNet, ConvStages], ids=["functional", "conv"])
def test_training_writes_the_signature_into_these_levers(build):
    model = build()
    x = torch.randn(4, 5, 8) if build is FunctionalNet else torch.randn(4, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pn.PassportWarning)
        protected = pn.protect(model, x, seed=3)
    train_signature(protected, x, 100)
    bits = {p: float((b.extracted_bits() == b.signature).float().mean()) for p, b in protected_layers(protected).items()}
    assert set(bits) == {p.norm for p in pn.find_pairs(model, x).pairs} and set(bits.values()) == {1.0}
    released = pn.strip(protected)
    assert list(released.state_dict()) == list(model.state_dict())


def _hub(name):
    from passportnorm.zoo.hub import build_hub_model

    return build_hub_model(name, num_classes=10)


# find_spec, not importorskip: a plain `import torchvision` is what fails next to the CPU torch wheel
@pytest.mark.skipif(
    not all(importlib.util.find_spec(name) for name in ("torchvision", "timm")),
    reason="the zoo extra is not installed: pip install 'passportnorm[zoo]'",
)
@pytest.mark.parametrize("name", ["tv:swin_t", "tv:swin_v2_t", "timm:convnext_atto"])
def test_every_norm_of_models_we_did_not_write_is_paired(name):
    report = pn.find_pairs(_hub(name), torch.randn(1, 3, 224, 224))
    assert not report.unprotectable, report.unprotectable[0]


class MixerBlock(nn.Module):
    """MLP-Mixer: the token-mixing MLP reads its norm transposed, the same weights for every channel."""

    def __init__(self, tokens, dim, scale=1.0):
        super().__init__()
        self.norm1, self.token_fc = nn.LayerNorm(dim), nn.Linear(tokens, tokens)
        self.norm2, self.fc1, self.fc2 = nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        self.scale = scale

    def forward(self, x):
        x = x + self.token_fc(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return self.scale * x + self.fc2(torch.relu(self.fc1(self.norm2(x))))


class Mixer(nn.Module):
    def __init__(self, tokens=5, dim=16, scale=1.0):
        super().__init__()
        self.embed = nn.Linear(8, dim)
        self.blocks = nn.Sequential(MixerBlock(tokens, dim), MixerBlock(tokens, dim, scale))
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        return self.head(self.blocks(self.embed(x)).mean(1))


def test_a_token_mixing_norm_is_paired_with_the_last_writer_of_its_stream():
    report = pn.find_pairs(Mixer(), torch.randn(2, 5, 8))
    assert not report.unprotectable
    assert _consumers(report)["blocks.1.norm1"] == ("blocks.0.fc2", "writer", "writes the residual stream it reads")
    assert "blocks.1.norm1 (LayerNorm, 16 ch) <+ blocks.0.fc2" in str(report)
    assert [p.norm for p in report.producer_pairs] == ["blocks.0.norm1"]  # the attacks' pairs: no writers


def test_a_stream_that_is_not_the_sum_of_an_earlier_input_and_the_writer_gets_no_writer():
    model = Mixer(scale=2.0)  # x_i = 2 x_(i-1) + W h: no earlier input plus the writer gives it
    model.blocks[0].scale = 2.0
    reasons = {u.norm: u.reason for u in pn.find_pairs(model, torch.randn(2, 5, 8)).unprotectable}
    assert "nor does one Linear write the residual stream it reads" in reasons["blocks.1.norm1"]


def test_writer_bits_train_round_trip_in_the_key_and_leave_with_the_writer(tmp_path):
    from passportnorm.key import OwnerKey, attach_key, extract_key

    model, x = Mixer(), torch.randn(4, 5, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pn.PassportWarning)
        protected = pn.protect(model, x, seed=5)
    train_signature(protected, x, 100)
    extract_key(protected).save(tmp_path / "key")
    key = OwnerKey.load(tmp_path / "key")
    assert {layer.norm: layer.role for layer in key.layers}["blocks.1.norm1"] == "writer"
    released = pn.strip(protected)
    bits = {p: float((b.extracted_bits() == b.signature).float().mean())
            for p, b in protected_layers(attach_key(released, key)).items()}
    assert set(bits.values()) == {1.0}
    with torch.no_grad():
        released.blocks[0].fc2.weight.zero_()
    erased = {p: float((b.extracted_bits() == b.signature).float().mean())
              for p, b in protected_layers(attach_key(released, key)).items()}
    assert erased["blocks.1.norm1"] == 0.0 and erased["blocks.1.norm2"] == 1.0
