"""The branch math of PassportAwareBranch, checked against DESIGN.md section 1 written out by hand."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from passportnorm import NoPassportForwardError, passport_mode, protect, protected_layers, sign_loss
from models import CASES, PlainCNN, PointNetLike, TransformerBlockNet


def _mlp(layer, v):
    return layer.mlp[2](F.leaky_relu(layer.mlp[0](v), 0.01))


def test_conv_bn_branch_matches_the_formula_in_train_mode():
    model, x = PlainCNN(), torch.randn(6, 1, 12, 12)
    protected = protect(model, x, seed=0).train()
    layer = protected_layers(protected)["bn2"]
    conv = layer.producer
    h = torch.randn(6, 8, 6, 6)
    g = F.conv2d(layer.passport_gamma, conv.weight, None, conv.stride, conv.padding).mean(dim=(0, 2, 3))
    b = F.conv2d(layer.passport_beta, conv.weight, None, conv.stride, conv.padding).mean(dim=(0, 2, 3))
    expected = F.batch_norm(conv(h), None, None, training=True) * _mlp(layer, g).view(1, -1, 1, 1) + _mlp(
        layer, b
    ).view(1, -1, 1, 1)
    with passport_mode(protected):
        got = layer.norm(conv(h))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer._last_g, g)
    assert layer.mlp[0].weight.shape == (4, 16) and layer.mlp[2].weight.shape == (16, 4)
    assert layer.mlp[0].bias is None and layer.mlp[2].bias is None


def test_linear_layernorm_branch_matches_the_formula():
    model, x = TransformerBlockNet(), torch.randn(3, 6, 8)
    layer = protected_layers(protect(model, x))["ln_mlp"]
    fc = layer.producer
    h = torch.randn(3, 6, 16)
    g = F.linear(layer.passport_gamma, fc.weight).mean(dim=(0, 1))
    b = F.linear(layer.passport_beta, fc.weight).mean(dim=(0, 1))
    expected = F.layer_norm(fc(h), (64,)) * _mlp(layer, g) + _mlp(layer, b)
    layer.passport_mode = True
    torch.testing.assert_close(layer.norm(fc(h)), expected, rtol=1e-5, atol=1e-5)


def test_depthwise_conv_response_is_per_channel():
    from models import MobileNetLike

    model, x = MobileNetLike(), torch.randn(2, 3, 16, 16)
    layer = protected_layers(protect(model, x))["depthwise.1"]
    conv = layer.producer
    assert conv.groups == 32
    g = F.conv2d(layer.passport_gamma, conv.weight, None, 1, 1, groups=32).mean(dim=(0, 2, 3))
    torch.testing.assert_close(layer.passport_responses()[0], g)


def test_reflect_padding_is_honoured():
    from models import InstanceNormCNN

    model, x = InstanceNormCNN(), torch.randn(2, 3, 12, 12)
    layer = protected_layers(protect(model, x))["features.1"]
    conv = layer.producer
    padded = F.pad(layer.passport_gamma, (1, 1, 1, 1), mode="reflect")
    g = F.conv2d(padded, conv.weight).mean(dim=(0, 2, 3))
    torch.testing.assert_close(layer.passport_responses()[0], g)


def test_sign_loss_value_is_hinge_plus_l2_on_pre_mlp_g():
    model, x = PointNetLike(), torch.randn(4, 3, 16)
    protected = protect(model, x, alpha=0.3)
    with passport_mode(protected):
        protected(x)
    total = 0
    for layer in protected_layers(protected).values():
        g = layer.passport_responses()[0]
        s = layer.signature.float()
        total = total + 0.3 * F.relu(0.1 - s * g).sum() + 1e-5 * (g**2).sum()
    torch.testing.assert_close(sign_loss(protected), total)


def test_branch_keeps_separate_batchnorm_statistics():
    model, x = PlainCNN(), torch.randn(8, 1, 12, 12)
    protected = protect(model, x).train()
    layer = protected_layers(protected)["bn1"]
    free_before = layer.norm.running_mean.clone()
    branch_before = layer.branch_norm.running_mean.clone()
    with passport_mode(protected):
        protected(x)
    assert torch.equal(layer.norm.running_mean, free_before)
    assert not torch.equal(layer.branch_norm.running_mean, branch_before)
    branch_after = layer.branch_norm.running_mean.clone()
    protected(x)
    assert not torch.equal(layer.norm.running_mean, free_before)
    assert torch.equal(layer.branch_norm.running_mean, branch_after)
    assert not list(layer.branch_norm.parameters())  # statistics only: the affine comes from the MLP


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_gradients_reach_producers_and_mlps_not_the_free_affine(case):
    model, x, y = case.build(), case.example(), case.targets()
    protected = protect(model, x).train()
    layers = protected_layers(protected)

    with passport_mode(protected):
        task = F.cross_entropy(protected(x), y)
    task.backward(retain_graph=True)
    for path, layer in layers.items():
        assert layer.lever_weight.grad is not None and layer.lever_weight.grad.abs().sum() > 0, path
        assert layer.mlp[0].weight.grad.abs().sum() > 0 and layer.mlp[2].weight.grad.abs().sum() > 0, path
        assert layer.norm.weight.grad is None and layer.norm.bias.grad is None, path

    protected.zero_grad(set_to_none=True)
    sign_loss(protected).backward()
    for path, layer in layers.items():
        assert layer.lever_weight.grad.abs().sum() > 0, path
        assert layer.mlp[0].weight.grad is None, f"{path}: the sign loss must act before the MLP"


def test_sign_loss_needs_a_passport_forward_first():
    protected = protect(PlainCNN(), torch.randn(2, 1, 12, 12))
    with pytest.raises(NoPassportForwardError, match="passport_mode"):
        sign_loss(protected)


def test_producer_is_referenced_not_owned():
    protected = protect(PlainCNN(), torch.randn(2, 1, 12, 12))
    layer = protected_layers(protected)["bn1"]
    assert layer.producer is protected.conv1
    assert not any(k.startswith("bn1.producer") or "conv1" in k for k in layer.state_dict())
    names = [n for n, _ in protected.named_parameters()]
    assert len(names) == len(set(names)) and names.count("conv1.weight") == 1


def test_unsupported_producer_type_is_refused():
    from passportnorm.branch import PassportAwareBranch

    with pytest.raises(TypeError, match="producer must be one of"):
        PassportAwareBranch(
            nn.BatchNorm2d(4), nn.ConvTranspose2d(4, 4, 3), torch.zeros(1, 4, 3, 3), torch.zeros(1, 4, 3, 3),
            torch.ones(4), producer_path="up",
        )


def test_copy_and_pickle_work_right_after_a_passport_forward():
    import copy
    import io

    protected = protect(PlainCNN(), torch.randn(2, 1, 12, 12))
    with passport_mode(protected):
        out = protected(torch.randn(2, 1, 12, 12))
    assert protected_layers(protected)["bn1"]._last_g.grad_fn is not None
    twin = copy.deepcopy(protected)
    assert protected_layers(twin)["bn1"].producer is twin.conv1
    assert protected_layers(twin)["bn1"]._last_g is None
    buffer = io.BytesIO()
    torch.save(protected, buffer)  # whole-module pickling, for users who do it with their own models
    sign_loss(protected).backward()  # the original's cached graph is intact
    assert out.shape == (2, 10)


def test_the_public_branch_api_writes_only_what_it_is_asked_to():
    model = protect(PlainCNN(), torch.randn(2, 1, 12, 12), passports="random", seed=0)
    layer = next(iter(protected_layers(model).values()))
    gamma = torch.randn(layer.passport_gamma.shape)
    beta_before = layer.passport_beta.clone()
    layer.set_passports(gamma=gamma.flatten())  # any layout with the right number of values
    assert torch.equal(layer.passport_gamma, gamma) and torch.equal(layer.passport_beta, beta_before)
    with pytest.raises(ValueError, match="a passport of 3 values"):
        layer.set_passports(beta=torch.ones(3))
    flipped = -layer.signature.clone()
    layer.set_signature(flipped.float())
    assert torch.equal(layer.signature, flipped) and layer.signature.dtype == torch.int8
    for bad in (torch.ones(layer.channels + 1), torch.zeros(layer.channels)):
        with pytest.raises(ValueError, match=f"a signature is {layer.channels} values of"):
            layer.set_signature(bad)


def test_fit_affine_makes_the_branch_apply_the_norms_affine():
    model = protect(PlainCNN(), torch.randn(2, 1, 12, 12), passports="random", seed=0)
    for layer in protected_layers(model).values():
        target = torch.randn(2, layer.channels)
        gap = layer.fit_affine(target[0], target[1])
        gamma, beta = layer.affine(layer.passport_responses())
        assert gap < 1e-4 and torch.allclose(torch.stack([gamma, beta]), target, atol=1e-4)
        first, second = layer.mlp[0].weight, layer.mlp[2].weight
        assert torch.isclose(first.norm(), second.norm(), rtol=1e-4)  # the gain is shared


def test_key_tensors_round_trip_and_refuse_another_shape():
    model = protect(PlainCNN(), torch.randn(2, 1, 12, 12), passports="random", seed=0)
    other = protect(PlainCNN(), torch.randn(2, 1, 12, 12), passports="random", seed=1)
    (layer, twin) = (next(iter(protected_layers(m).values())) for m in (model, other))
    parts = layer.key_tensors()
    assert {"passport_gamma", "signature", "mlp.0.weight"} <= set(parts) and "weight" not in parts
    twin.load_trained(parts)
    assert torch.equal(twin.mlp[2].weight, layer.mlp[2].weight)
    assert not torch.equal(twin.passport_gamma, layer.passport_gamma)  # only the trained part moves
    with pytest.raises(ValueError, match=r"the key's tensors mlp\.0\.weight do not fit a branch of \d+"):
        twin.load_trained({**parts, "mlp.0.weight": torch.ones(1, 1)})
