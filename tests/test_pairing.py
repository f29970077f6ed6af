"""Pairing follows the real data flow; what cannot be paired is reported with its reason."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from passportnorm import NothingToProtectError, PairingError, find_pairs, protect, protected_layers
from models import CASES


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_pairs_found_for_every_model_family(case):
    report = find_pairs(case.build(), case.example())
    assert [p.norm for p in report.pairs] == list(case.protectable)
    assert [u.norm for u in report.unprotectable] == list(case.reported)
    assert report.capacity == sum(p.channels for p in report.pairs)


class Awkward(nn.Module):
    """Every way a norm can fail to be protectable, next to one that can."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.good = nn.BatchNorm2d(8)
        self.no_affine = nn.BatchNorm2d(8, affine=False)
        self.after_relu = nn.BatchNorm2d(8)
        self.up = nn.ConvTranspose2d(8, 8, 2, stride=2)
        self.after_up = nn.BatchNorm2d(8)
        self.ln_multi = nn.LayerNorm([8, 8, 8])
        self.twice = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 1)
        self.lrn = nn.LocalResponseNorm(2)
        self.ln_conv = nn.LayerNorm(8)  # over the width axis of a conv output: wrong axis
        self.fc = nn.Linear(8, 6)
        self.bn_tokens = nn.BatchNorm1d(4)  # Linear puts features last, BatchNorm1d wants axis 1
        self.unused = nn.BatchNorm2d(8)

    def forward(self, x):
        h = self.good(self.conv(x))
        a = self.no_affine(self.conv2(h))
        b = self.after_relu(F.relu(h))
        c = self.after_up(self.up(h))
        d = self.ln_multi(self.conv2(h))
        e = self.twice(self.twice(h))
        f = self.lrn(self.conv2(h))
        g = self.ln_conv(self.conv2(h))
        tokens = self.fc(h.mean(dim=(2, 3)).unsqueeze(1).expand(-1, 4, -1))
        t = self.bn_tokens(tokens)
        return a.mean() + b.mean() + c.mean() + d.mean() + e.mean() + f.mean() + g.mean() + t.mean()


def test_unprotectable_norms_are_reported_with_reasons():
    report = find_pairs(Awkward(), torch.randn(2, 3, 8, 8))
    assert [p.norm for p in report.pairs] == ["good"]
    reasons = {u.norm: u.reason for u in report.unprotectable}
    assert "no affine parameters" in reasons["no_affine"]
    assert "comes from call_function 'relu'" in reasons["after_relu"]
    assert "ConvTranspose2d 'up'" in reasons["after_up"]
    assert "over 3 axes" in reasons["ln_multi"]
    assert "called 2 times" in reasons["twice"]
    assert "LocalResponseNorm is not a supported norm" in reasons["lrn"]
    assert "axis 1" in reasons["ln_conv"] and "axis 3" in reasons["ln_conv"]
    assert "axis 2" in reasons["bn_tokens"] and "axis 1" in reasons["bn_tokens"]
    assert "never calls it" in reasons["unused"]
    text = str(report)
    for name in reasons:
        assert f"- {name} " in text


class Branchy(nn.Module):
    """Data-dependent control flow that torch.fx cannot trace, around a traceable child."""

    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x):
        h = self.block(x)
        if h.sum() > 0:
            h = h * 2
        return self.bn(self.conv(h)).mean(dim=(2, 3))


def test_untraceable_parts_are_paired_from_the_calls_and_traceable_children_by_the_trace():
    report = find_pairs(Branchy(), torch.randn(2, 3, 8, 8))
    assert [(p.norm, p.producer, p.read_as) for p in report.pairs] == [
        ("block.1", "block.0", ""),
        ("bn", "conv", "seen in the calls; torch.fx could not trace it"),
    ]
    assert not report.unprotectable
    assert "bn (BatchNorm2d, 8 ch) <- conv (Conv2d, seen in the calls" in str(report)


class BranchyMix(Branchy):
    """The untraced norm reads a sum: no producer's output is its input, so it stays reported."""

    def forward(self, x):
        h = self.block(x)
        if h.sum() > 0:
            h = h * 2
        return self.bn(self.conv(h) + h).mean(dim=(2, 3))


def test_an_untraced_norm_without_a_called_producer_keeps_the_trace_error():
    report = find_pairs(BranchyMix(), torch.randn(2, 3, 8, 8))
    assert [p.norm for p in report.pairs] == ["block.1"]
    (bn,) = report.unprotectable
    assert bn.norm == "bn" and "torch.fx could not trace 'BranchyMix'" in bn.reason and "pairs=" in bn.reason


def test_explicit_pairs_replace_tracing():
    model, x = Branchy(), torch.randn(2, 3, 8, 8)
    report = find_pairs(model, x, pairs={"bn": "conv"})
    assert [(p.norm, p.producer) for p in report.pairs] == [("bn", "conv")]
    assert report.unprotectable[0].reason == "not listed in pairs="
    protected = protect(model, x, pairs={"bn": "conv", "block.1": "block.0"})
    assert list(protected_layers(protected)) == ["block.1", "bn"]


@pytest.mark.parametrize(
    "pairs,message",
    [
        ({"bn": "nope"}, "not a module path"),
        ({"conv": "bn"}, "as a norm but it is a Conv2d"),
        ({"bn": "block.1"}, "only Conv1d, Conv2d, Conv3d, Linear"),
    ],
)
def test_invalid_explicit_pairs_are_clear_errors(pairs, message):
    with pytest.raises(PairingError, match=message):
        find_pairs(Branchy(), torch.randn(2, 3, 8, 8), pairs=pairs)


def test_explicit_pair_contradicted_by_real_shapes():
    with pytest.raises(PairingError, match=r"'bn_tokens' -> 'conv' is invalid: it receives shape \(2, 4, 6\)"):
        find_pairs(Awkward(), torch.randn(2, 3, 8, 8), pairs={"bn_tokens": "conv"})


def test_nothing_to_protect_shows_the_report():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4))
    with pytest.raises(NothingToProtectError, match="comes from call_module|input comes from ReLU"):
        protect(model, torch.randn(2, 3, 8, 8))


def test_pairing_runs_in_eval_without_touching_the_model():
    case = CASES[1]
    model, x = case.build().train(), case.example()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    find_pairs(model, x)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_norm_whose_weight_is_parametrized_is_named_with_its_reason():
    """Issue 33: it was a KeyError deep in the shape probe."""
    from torch.nn.utils import parametrize

    class Positive(torch.nn.Module):
        def forward(self, weight):
            return weight.abs()

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
                                torch.nn.Conv2d(16, 16, 3), torch.nn.BatchNorm2d(16))
    parametrize.register_parametrization(model[1], "weight", Positive())
    report = find_pairs(model, torch.randn(2, 3, 16, 16))
    assert [p.norm for p in report.pairs] == ["4"]
    (refused,) = report.unprotectable
    assert refused.norm == "1" and "weight is reparametrized (Positive)" in refused.reason
