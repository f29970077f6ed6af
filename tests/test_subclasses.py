"""Subclassed norms and producers (issue 16, first part): paired as what they are, or reported truly.

torch.fx used to trace into any module not defined in torch.nn, so ``class MyBN(nn.BatchNorm2d)``
or timm's BatchNormAct2d never reached pairing and were reported as "never called". Now every
norm and producer is a leaf. A subclass is protected as what it is: no constructor of it is ever
called, and its own forward (with an activation inside, say) runs in both branches, the aware
one with the branch's affine and statistics substituted.
"""

import torch
from torch import nn
from torch.nn.utils import parametrizations

import passportnorm as pn
from passportnorm.protect import protected_layers, statistics_layers


class MyBN(nn.BatchNorm2d):
    pass


class MyConv(nn.Conv2d):
    pass


class NamedBN(nn.BatchNorm2d):
    """A subclass whose constructor takes other arguments: protect must never call it."""

    built = 0

    def __init__(self, note: str, channels: int):
        super().__init__(channels)
        self.note = note
        NamedBN.built += 1


class BNAct(nn.BatchNorm2d):
    """Like timm's BatchNormAct2d: the activation lives inside the norm's forward."""

    def forward(self, x):
        return torch.nn.functional.silu(super().forward(x))


class Net(nn.Module):
    def __init__(self, norm_a: nn.Module, norm_b: nn.Module, conv=nn.Conv2d):
        super().__init__()
        self.conv1, self.bn1 = conv(3, 96, 3, padding=1), norm_a
        self.conv2, self.bn2 = conv(96, 96, 3, padding=1), norm_b
        self.head = nn.Linear(96, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.head(x.mean((2, 3)))


def _trained_statistics(model: nn.Module) -> nn.Module:
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, 8, 8))
    return model.eval()


def test_subclassed_norms_and_producers_are_paired_and_keep_every_promise():
    torch.manual_seed(0)
    model = _trained_statistics(Net(MyBN(96), NamedBN("mine", 96), conv=MyConv))
    x = torch.randn(4, 3, 8, 8)
    report = pn.find_pairs(model, x)
    assert [(p.norm, p.norm_type, p.producer_type) for p in report.pairs] == [
        ("bn1", "MyBN", "MyConv"), ("bn2", "NamedBN", "MyConv")]
    built = NamedBN.built
    protected = pn.protect(model, x, signature="(c) sub", seed=0).eval()
    assert NamedBN.built == built  # the branch copy comes from BatchNorm2d, not the subclass constructor
    with torch.no_grad():
        assert torch.equal(protected(x), model(x))  # promise 1
        released = pn.strip(protected)
        assert torch.equal(released(x), protected(x))  # promise 2: outputs
    assert type(released.bn1) is MyBN and type(released.bn2) is NamedBN and type(released.conv1) is MyConv
    assert released.bn2.note == "mine"
    assert {k: v.shape for k, v in released.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    with pn.passport_mode(protected):
        assert torch.isfinite(protected(x)).all()


def test_a_norm_subclass_that_adds_to_forward_is_protected_and_keeps_what_it_adds():
    torch.manual_seed(0)
    model = _trained_statistics(Net(BNAct(96), BNAct(96)))
    x = torch.randn(4, 3, 8, 8)
    protected = pn.protect(model, x, signature="(c) act", seed=0, exclude=["bn2"]).eval()
    assert list(protected_layers(protected)) == ["bn1"] and list(statistics_layers(protected)) == ["bn2"]
    assert isinstance(protected.bn1, BNAct) and pn.original_class(protected.bn1) is BNAct
    with torch.no_grad():
        assert torch.equal(protected(x), model(x))  # promise 1
        h = protected.conv2(torch.randn(4, 96, 8, 8))
        free = protected.bn2(h)
        with pn.passport_mode(protected):
            # the unprotected subclass: its aware statistics start as a copy, so both forwards agree
            assert torch.equal(protected.bn2(h), free)
            aware = protected.bn1(protected.conv1(x))
    assert (aware >= -0.2785).all(), "SiLU's minimum: the aware forward ran BNAct's activation"
    # the aware forward is BNAct's own forward with the branch's affine substituted: give it the
    # norm's own affine and running statistics and it is the free forward, bit for bit
    branch = protected_layers(protected)["bn1"]
    bn = protected.bn1
    with torch.no_grad():
        branch.branch_norm.running_mean.copy_(bn.running_mean)
        branch.branch_norm.running_var.copy_(bn.running_var)
        branch.affine = lambda responses: (bn.weight, bn.bias)
        h = protected.conv1(x)
        free = protected.bn1(h)
        with pn.passport_mode(protected):
            assert torch.equal(protected.bn1(h), free)
    released = pn.strip(protected)
    assert type(released.bn1) is BNAct and type(released.bn2) is BNAct


def test_reparametrized_producers_are_reported_by_name():
    x = torch.randn(4, 3, 8, 8)
    for wrap, kind in ((parametrizations.weight_norm, "_WeightNorm"), (parametrizations.spectral_norm, "_SpectralNorm")):
        model = Net(nn.BatchNorm2d(96), nn.BatchNorm2d(96))
        wrap(model.conv2)
        report = pn.find_pairs(model, x)
        (reason,) = [u.reason for u in report.unprotectable if u.norm == "bn2"]
        assert f"its producer 'conv2' (ParametrizedConv2d) cannot carry bits: its weight is reparametrized ({kind})" in reason
        assert [p.norm for p in report.pairs] == ["bn1"]


def test_norms_without_running_statistics_are_protected():
    torch.manual_seed(0)
    model = Net(nn.BatchNorm2d(96, track_running_stats=False), nn.BatchNorm2d(96)).eval()
    x = torch.randn(4, 3, 8, 8)
    protected = pn.protect(model, x, signature="(c) nostats", seed=0).eval()
    assert "bn1" in protected_layers(protected)
    with torch.no_grad():
        assert torch.equal(protected(x), model(x)) and torch.equal(pn.strip(protected)(x), model(x))


class Mixer(nn.Module):
    """Norms after a sum, after a concatenation, inside a torch.nn container fx does not enter, and unused."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1)
        self.after_add, self.after_cat, self.unused = nn.BatchNorm2d(8), nn.BatchNorm2d(16), nn.BatchNorm2d(8)
        self.encoder = nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=16, batch_first=True)

    def forward(self, x):
        a, b = self.a(x), self.b(x)
        y = self.after_add(a + b).mean((2, 3)) + self.after_cat(torch.cat([a, b], 1)).mean((2, 3)).sum(1, keepdim=True)
        return self.encoder(torch.cat([y, y], 1).unsqueeze(1))


def test_every_reason_agrees_with_what_runs():
    report = pn.find_pairs(Mixer().eval(), torch.randn(2, 3, 4, 4))
    reasons = {u.norm: u.reason for u in report.unprotectable}
    assert "call_function 'add'" in reasons["after_add"]
    assert "call_function 'cat'" in reasons["after_cat"]
    assert reasons["unused"] == "the forward with example_input never calls it"
    # the encoder is a torch.nn module the tracer does not enter, yet its norms run once per forward:
    # post-norm, norm1 reads a residual sum and is paired with its consumer from the calls; norm2's
    # output is the model's, read by no layer, and it reads norm1's output plus linear2's: its writer
    consumers = {p.norm: (p.producer, p.role) for p in report.pairs}
    assert consumers["encoder.norm1"] == ("encoder.linear1", "consumer")
    assert consumers["encoder.norm2"] == ("encoder.linear2", "writer")


class ChannelsLast(nn.Module):
    """ConvNeXt's pattern: conv, permute to channels-last, LayerNorm over channels, Linear."""

    def __init__(self):
        super().__init__()
        self.conv, self.norm, self.fc = nn.Conv2d(3, 160, 3, padding=1), nn.LayerNorm(160), nn.Linear(160, 10)

    def forward(self, x):
        return self.fc(self.norm(self.conv(x).permute(0, 2, 3, 1)).mean((1, 2)))


class Tokens(nn.Module):
    """LeViT's pattern: Linear on tokens, flatten batch and tokens, BatchNorm1d, and back; a Dropout too."""

    def __init__(self):
        super().__init__()
        self.linear, self.bn = nn.Linear(12, 160), nn.BatchNorm1d(160)
        self.conv, self.drop, self.bn2 = nn.Conv2d(3, 160, 1), nn.Dropout(0.1), nn.BatchNorm2d(160)

    def forward(self, tokens, image):
        t = self.bn(self.linear(tokens).flatten(0, 1)).reshape(tokens.shape[0], tokens.shape[1], -1)
        return t.mean(1) + self.bn2(self.drop(self.conv(image))).mean((2, 3))


class Mixing(nn.Module):
    """A reshape that does mix channels: the traced ops look harmless, the values show they are not."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 1), nn.BatchNorm1d(4)

    def forward(self, x):
        return self.bn(self.conv(x).reshape(x.shape[0], 4, -1).transpose(1, 2).reshape(x.shape[0], 4, -1))


def test_norms_after_channel_moving_ops_are_paired_and_say_what_was_crossed():
    torch.manual_seed(0)
    for model, example in ((ChannelsLast().eval(), torch.randn(2, 3, 6, 6)),
                           (Tokens().eval(), (torch.randn(2, 5, 12), torch.randn(2, 3, 4, 4)))):
        report = pn.find_pairs(model, example)
        assert not report.unprotectable, report
        protected = pn.protect(model, example, signature="(c) moved", seed=0).eval()
        call = (lambda m: m(*example)) if isinstance(example, tuple) else (lambda m: m(example))
        with torch.no_grad():
            assert torch.equal(call(protected), call(model)) and torch.equal(call(pn.strip(protected)), call(model))
            with pn.passport_mode(protected):
                assert torch.isfinite(call(protected)).all()
    text = str(pn.find_pairs(ChannelsLast().eval(), torch.randn(2, 3, 6, 6)))
    assert "norm (LayerNorm, 160 ch) <- conv (Conv2d) via permute(0, 2, 3, 1)" in text
    crossed = {p.norm: p.crossed for p in pn.find_pairs(Tokens().eval(), (torch.randn(2, 5, 12), torch.randn(2, 3, 4, 4))).pairs}
    assert crossed == {"bn": ("flatten(0, 1)",), "bn2": ("Dropout 'drop'",)}


def test_a_reshape_that_mixes_channels_is_caught_by_the_values():
    report = pn.find_pairs(Mixing().eval(), torch.randn(2, 3, 2, 2))
    (reason,) = [u.reason for u in report.unprotectable]
    assert "does not carry producer 'conv''s channels" in reason and not report.pairs


class WeightlessBN(nn.BatchNorm2d):
    """Claims to be an affine BatchNorm but its weight was taken away (a user's pruning code, say)."""

    def __init__(self, channels):
        super().__init__(channels)
        self.register_parameter("weight", None)


def test_a_norm_without_its_channel_weight_is_reported_by_name():
    model = Net(WeightlessBN(96), nn.BatchNorm2d(96))
    x = torch.randn(4, 3, 8, 8)
    report = pn.find_pairs(model, x)
    (reason,) = [u.reason for u in report.unprotectable if u.norm == "bn1"]
    assert "WeightlessBN says affine=True but has no per-channel weight of 96 values (found NoneType)" in reason
    protected = pn.protect(model.eval(), x, signature="(c) w", seed=0).eval()
    assert list(protected_layers(protected)) == ["bn2"]
    with torch.no_grad():
        assert torch.equal(protected(x), model(x))


def test_layernorm_without_a_bias_gets_the_branch_affine_in_passport_mode():
    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.norm, self.head = nn.Linear(8, 160), nn.LayerNorm(160, bias=False), nn.Linear(160, 10)

        def forward(self, x):
            return self.head(self.norm(self.fc(x)).mean(1))

    model, x = Tokens().eval(), torch.randn(4, 5, 8)
    protected = pn.protect(model, x, signature="(c) nb", seed=0).eval()
    assert protected.norm.bias is None and "norm" in protected_layers(protected)
    with torch.no_grad():
        assert torch.equal(protected(x), model(x))
        with pn.passport_mode(protected):
            assert torch.isfinite(protected(x)).all()
        assert pn.strip(protected).norm.bias is None


class SameConv(nn.Conv2d):
    """Like timm's Conv2dSame: pads in forward (TensorFlow 'same'), with padding=0 in the module."""

    def forward(self, x):
        return super().forward(torch.nn.functional.pad(x, (2, 2, 2, 2)))


def test_a_producer_that_pads_in_its_forward_answers_passports_through_that_forward():
    torch.manual_seed(0)
    model = Net(nn.BatchNorm2d(96), nn.BatchNorm2d(96))
    model.conv2 = SameConv(96, 96, 5)
    x = torch.randn(4, 3, 4, 4)  # 4x4 maps: a 5x5 kernel fits only after the forward's own padding
    protected = pn.protect(model.eval(), x, signature="(c) same", seed=0).eval()
    layer = protected_layers(protected)["bn2"]
    expected = torch.nn.functional.conv2d(torch.nn.functional.pad(layer.passport_gamma, (2, 2, 2, 2)),
                                          layer.producer.weight).mean(dim=(0, 2, 3))
    torch.testing.assert_close(layer.passport_responses()[0], expected)
    with torch.no_grad():
        assert torch.equal(protected(x), model(x))


class LayerNorm2d(nn.LayerNorm):
    """timm's and torchvision's ConvNeXt norm: a LayerNorm over channels that permutes inside its forward."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class Unscaled(nn.BatchNorm2d):
    """Claims to be a BatchNorm but never applies its weight and bias."""

    def forward(self, x):
        return torch.nn.functional.batch_norm(x, self.running_mean, self.running_var, None, None, self.training)


def test_the_channel_axis_is_what_the_norms_own_forward_shows():
    torch.manual_seed(0)
    model = Net(LayerNorm2d(96), Unscaled(96)).eval()
    x = torch.randn(4, 3, 8, 8)
    report = pn.find_pairs(model, x)
    assert [p.norm for p in report.pairs] == ["bn1"]
    (reason,) = [u.reason for u in report.unprotectable if u.norm == "bn2"]
    assert "Unscaled does not apply its weight and bias per channel" in reason
    protected = pn.protect(model, x, signature="(c) ln2d", seed=0, exclude=["bn2"]).eval()
    with torch.no_grad():
        assert torch.equal(protected(x), model(x))
        with pn.passport_mode(protected):
            assert torch.isfinite(protected(x)).all()
    assert type(pn.strip(protected).bn1) is LayerNorm2d
