"""Norms without a producer carry bits in their consumer (issue 34): pre-norm transformer blocks with
LayerNorm, torch.nn.RMSNorm and the hand-written RMSNorm classes of decoder LMs."""

import copy
import json
import textwrap
import warnings

import pytest
import torch
from torch import nn

import passportnorm as pn
from passportnorm.branch import PassportAwareBranch
from passportnorm.call_links import how_read
from passportnorm.capture import frozen_copy
from passportnorm.cli import main
from passportnorm.errors import OwnerKeyError
from passportnorm.key import OwnerKey, attach_key, extract_key
from passportnorm.key_manifest import KeyLayer
from passportnorm.norm import consumer_responses, observed_channel_dim
from passportnorm.protect import passport_mode, protected_layers
from sign_training import train_signature


class LlamaRMSNorm(nn.Module):
    """As Llama, Mistral and Qwen write it: ``weight * x / rms(x)``."""

    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.variance_epsilon = eps

    def forward(self, x):
        variance = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(variance + self.variance_epsilon))


class GemmaRMSNorm(nn.Module):
    """As Gemma writes it: the gain is ``1 + weight``, its weight starts at 0."""

    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * (1.0 + self.weight)


class WeightlessRMSNorm(LlamaRMSNorm):
    """Has a weight but never applies it: no branch could act through it."""

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)


class Block(nn.Module):
    def __init__(self, dim, norm):
        super().__init__()
        self.norm1, self.attn = norm(dim), nn.MultiheadAttention(dim, 2, batch_first=True)
        self.norm2, self.fc1, self.fc2 = norm(dim), nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.fc2(torch.relu(self.fc1(self.norm2(x))))


class PreNorm(nn.Module):
    """A pre-norm transformer: every norm but the first reads the residual stream."""

    def __init__(self, norm=nn.LayerNorm, dim=16, depth=2, classes=10):
        super().__init__()
        self.embed = nn.Linear(8, dim)
        self.blocks = nn.ModuleList([Block(dim, norm) for _ in range(depth)])
        self.norm, self.head = norm(dim), nn.Linear(dim, classes)

    def forward(self, x):
        x = self.embed(x)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])  # the class token: "tokens selected"


NORMS = [nn.LayerNorm, nn.RMSNorm, LlamaRMSNorm, GemmaRMSNorm]
CONSUMERS = {
    "blocks.0.norm2": ("blocks.0.fc1", "as it is"),
    "blocks.1.norm1": ("blocks.1.attn", "as it is"),
    "blocks.1.norm2": ("blocks.1.fc1", "as it is"),
    "norm": ("head", "tokens selected"),
}


def _example():
    return torch.randn(4, 5, 8, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("norm", NORMS, ids=lambda n: n.__name__)
def test_every_norm_of_a_prenorm_block_is_paired_producer_first_then_consumer(norm):
    report = pn.find_pairs(PreNorm(norm), _example())
    assert not report.unprotectable
    first, *rest = report.pairs
    assert (first.norm, first.producer, first.role) == ("blocks.0.norm1", "embed", "producer")
    assert {p.norm: (p.producer, p.read_as) for p in rest} == CONSUMERS
    assert all(p.role == "consumer" for p in rest)
    assert "blocks.1.norm1 (" in str(report) and "-> blocks.1.attn (MultiheadAttention, as it is)" in str(report)


def test_a_norm_that_ignores_its_weight_is_named_with_the_reason():
    report = pn.find_pairs(PreNorm(WeightlessRMSNorm), _example())
    assert not report.pairs
    reasons = {u.norm: u.reason for u in report.unprotectable}
    assert "does not apply its weight and bias per channel" in reasons["blocks.0.norm1"]
    assert observed_channel_dim(WeightlessRMSNorm(16), _example().new_ones(2, 5, 16)) is None


def test_rmsnorm_without_affine_and_a_norm_read_through_a_mix_are_refused():
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.norm = nn.Linear(8, 16), nn.LayerNorm(16)
            self.plain, self.head = nn.RMSNorm(16, elementwise_affine=False), nn.Linear(16, 3)

        def forward(self, x):
            x = self.embed(x)
            h = self.norm(x + 1)  # no producer: it reads a sum
            return self.head(self.plain(h.flip(-1) + h))  # its only reader mixes its channels

    reasons = {u.norm: u.reason for u in pn.find_pairs(Mixed(), _example()).unprotectable}
    assert reasons["plain"] == "RMSNorm has no affine parameters (elementwise_affine=False)"
    assert reasons["norm"].endswith("(the consumer that could carry its bits instead), nor does one Linear write the residual stream it reads")


def test_how_a_consumer_reads_the_output_is_seen_value_for_value():
    out = torch.randn(2, 6, 4)
    assert how_read(out, out.clone()) == "as it is"
    assert how_read(out, out[:, torch.randperm(6)]) == "tokens rearranged"
    assert how_read(out, out[:, 0]) == "tokens selected"
    assert how_read(out, out.mean(dim=1)) == "mean over tokens"
    assert how_read(out, out.flip(-1)) is None  # channels swapped: column j would not read channel j
    assert how_read(out, out[:, :, :2]) is None


def test_the_consumer_response_is_linear_in_the_column_that_reads_the_channel():
    weight, passport = torch.randn(6, 4, dtype=torch.float64), torch.randn(1, 3, 6, dtype=torch.float64)
    linear = nn.Linear(4, 6)
    g = consumer_responses(linear, weight, passport, 4)
    assert torch.allclose(g[0], (passport[0] @ weight).mean(0))
    moved = weight.clone()
    moved[:, 2] *= -1  # only channel 2's column: only g_2 changes, and flips
    changed = consumer_responses(linear, moved, passport, 4)
    assert torch.allclose(changed[0, [0, 1, 3]], g[0, [0, 1, 3]]) and torch.allclose(changed[0, 2], -g[0, 2])


def _trained(norm, steps=80):
    model, x = PreNorm(norm, dim=32), _example()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pn.PassportWarning)
        protected = pn.protect(model, x, seed=1)
    train_signature(protected, x, steps)
    return model, protected, x


def _bits(model):
    return {path: float((b.extracted_bits() == b.signature).float().mean()) for path, b in protected_layers(model).items()}


@pytest.mark.parametrize("norm", NORMS, ids=lambda n: n.__name__)
def test_promises_1_2_8_hold_on_consumer_paired_norms(norm):
    model, protected, x = _trained(norm)
    norm_path = "blocks.1.norm1"
    layer = protected.get_submodule(norm_path)
    assert isinstance(layer, norm) and type(layer) is not norm  # promise 8: the user's class, subclassed
    assert [n for n, _ in model.named_parameters()] == [
        n for n, _ in protected.named_parameters() if ".passport_aware." not in n
    ]
    with torch.no_grad():
        free = frozen_copy(protected)
        aware = frozen_copy(protected)
        with passport_mode(aware):
            assert not torch.allclose(aware(x), free(x))  # the branch runs, also in eval without gradients
    released = pn.strip(copy.deepcopy(protected))  # promise 2: strip gives back the architecture
    assert type(released.get_submodule(norm_path)) is norm
    assert list(released.state_dict()) == list(model.state_dict())
    assert all(v == 1.0 for k, v in _bits(protected).items() if k != "blocks.0.norm1")


def test_the_free_branch_is_exactly_the_plain_model():
    model, x = PreNorm(GemmaRMSNorm), _example()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pn.PassportWarning)
        protected = pn.protect(model, x, seed=0)
    with torch.no_grad():
        assert torch.equal(frozen_copy(protected)(x), frozen_copy(model)(x))


def test_a_consumer_key_round_trips_reads_its_release_and_not_a_stranger(tmp_path):
    model, protected, _ = _trained(LlamaRMSNorm)
    key = extract_key(protected)
    key.save(tmp_path / "key")
    loaded = OwnerKey.load(tmp_path / "key")
    roles = {layer.norm: (layer.role, layer.producer) for layer in loaded.layers}
    assert roles["blocks.1.norm1"] == ("consumer", "blocks.1.attn") and roles["blocks.0.norm1"][0] == "producer"
    manifest = json.loads((tmp_path / "key" / "key.json").read_text())
    assert any(entry.get("role") == "consumer" for entry in manifest["layers"])
    consumer_bits = {k: v for k, v in _bits(attach_key(pn.strip(copy.deepcopy(protected)), loaded)).items()
                     if roles[k][0] == "consumer"}
    assert set(consumer_bits.values()) == {1.0}
    stranger = _bits(attach_key(PreNorm(LlamaRMSNorm, dim=32), loaded))
    assert sum(stranger.values()) / len(stranger) < 0.75


def test_zeroing_the_consumer_weights_erases_that_norms_bits():
    _, protected, _ = _trained(nn.RMSNorm)
    with torch.no_grad():
        protected.blocks[1].attn.in_proj_weight.zero_()
    bits = _bits(protected)
    assert bits["blocks.1.norm1"] == 0.0 and bits["blocks.1.norm2"] == 1.0  # sign(0) reads as no bit


def test_a_key_layer_role_is_one_of_three_words():
    entry = {"norm": "n", "producer": "p", "norm_type": "LayerNorm", "producer_type": "Linear", "channels": 4,
             "passport_shape": [1, 3, 4]}
    assert KeyLayer.read(entry, "layers[0]").role == "producer"
    assert KeyLayer.read({**entry, "role": "consumer"}, "layers[0]").role == "consumer"
    assert KeyLayer.read({**entry, "role": "writer"}, "layers[0]").role == "writer"
    with pytest.raises(OwnerKeyError, match=r"layers\[0\]\.role must be one of producer, consumer, writer, got .reader."):
        KeyLayer.read({**entry, "role": "reader"}, "layers[0]")
    with pytest.raises(ValueError, match="role must be one of"):
        PassportAwareBranch(nn.LayerNorm(4), nn.Linear(4, 3), torch.zeros(1, 2, 3), torch.zeros(1, 2, 3),
                            torch.ones(4), producer_path="p", role="reader")
    with pytest.raises(TypeError, match="a consumer must be one of Linear, MultiheadAttention, Conv1d"):
        PassportAwareBranch(nn.LayerNorm(4), nn.Embedding(4, 3), torch.zeros(1, 2, 3), torch.zeros(1, 2, 3),
                            torch.ones(4), producer_path="p", role="consumer")


MODEL_CODE = textwrap.dedent('''
    import torch
    from torch import nn


    class RMSNorm(nn.Module):
        def __init__(self, dim, eps=1e-6):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(dim))
            self.variance_epsilon = eps

        def forward(self, x):
            return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))


    class Block(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.norm1, self.attn = RMSNorm(dim), nn.MultiheadAttention(dim, 4, batch_first=True)
            self.norm2, self.up, self.down = RMSNorm(dim), nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

        def forward(self, x):
            h = self.norm1(x)
            x = x + self.attn(h, h, h, need_weights=False)[0]
            return x + self.down(nn.functional.gelu(self.up(self.norm2(x))))


    class RowTransformer(nn.Module):
        """An 8x8 digit as 8 tokens (its rows), pre-norm blocks, mean-pooled head."""

        def __init__(self, num_classes, dim=64):
            super().__init__()
            self.embed = nn.Linear(8, dim)
            self.blocks = nn.Sequential(Block(dim), Block(dim))
            self.norm, self.head = RMSNorm(dim), nn.Linear(dim, num_classes)

        def forward(self, images):
            return self.head(self.norm(self.blocks(self.embed(images.flatten(1, 2)))).mean(dim=1))


    def build(num_classes, in_channels=1):
        return RowTransformer(num_classes)
''')


def test_a_users_prenorm_transformer_is_protected_released_and_verified_end_to_end(tmp_path, capsys):
    (tmp_path / "rows.py").write_text(MODEL_CODE)
    arch, out = f"{tmp_path / 'rows.py'}:build", tmp_path / "run"
    run = ["--dataset", "digits", "--epochs", "12", "--batch-size", "32", "--trigger-count", "20",
           "--secret-seed", "0", "--arch", arch]
    assert main(["inspect", "--dataset", "digits", "--arch", arch]) == 0
    listing = capsys.readouterr().out
    assert "blocks.1.norm1 (RMSNorm, 64 ch) -> blocks.1.attn (MultiheadAttention, as it is)" in listing
    assert "norm (RMSNorm, 64 ch) -> head (Linear, mean over tokens)" in listing
    assert main(["protect", *run, "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["history"][-1]["signature_detection"] == 1.0
    key = json.loads((out / "owner-key" / "key.json").read_text())
    assert sum(entry.get("role") == "consumer" for entry in key["layers"]) == 4
    capsys.readouterr()
    assert main(["verify", "--model", str(out / "released"), "--key", str(out / "owner-key"), "--arch", arch,
                 "--json"]) == 0
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["verified"] is True


class PatchMerge(nn.Module):
    """Swin's pattern: one Linear reads a norm's channels (consumer) and writes the next norm's
    (producer), and the head pools a (H, W) grid of channels-last tokens."""

    def __init__(self):
        super().__init__()
        self.embed, self.norm_in = nn.Linear(8, 16), nn.LayerNorm(16)
        self.reduction, self.norm_out, self.head = nn.Linear(16, 32), nn.LayerNorm(32), nn.Linear(32, 10)

    def forward(self, grid):  # (B, H, W, 8)
        x = self.embed(grid)
        x = self.reduction(self.norm_in(x + x.mean(dim=(1, 2), keepdim=True)))
        return self.head(self.norm_out(x).mean(dim=(1, 2)))


def test_one_linear_carries_a_consumers_columns_and_a_producers_rows():
    report = pn.find_pairs(PatchMerge(), torch.randn(2, 4, 4, 8))
    assert [(p.norm, p.producer, p.role, p.read_as) for p in report.pairs] == [
        ("norm_in", "reduction", "consumer", "as it is"),
        ("norm_out", "reduction", "producer", ""),
    ]
    assert how_read(torch.randn(2, 3, 3, 4), torch.zeros(2, 4)) is None
    grid = torch.randn(2, 3, 3, 4)
    assert how_read(grid, grid.mean(dim=(1, 2))) == "mean over tokens"
