import pytest
import torch

from passportnorm import ImagePassports, PassportError, ShufflePassports, protect, protected_layers
from passportnorm.capture import capture
from passportnorm.passports import RandomPassports, make_passport_generator
from models import CASES, PlainCNN, PointNetLike, TransformerBlockNet


def _producer_inputs(model, x):
    paths = [layer.producer_path for layer in protected_layers(protect(model, x)).values()]
    return capture(model, x, paths).inputs


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_passport_shapes_follow_real_producer_inputs(case):
    model, x = case.build(), case.example()
    protected = protect(model, x)
    seen = _producer_inputs(model, x)
    for layer in protected_layers(protected).values():
        expected = (1, *seen[layer.producer_path].shape[1:])
        assert tuple(layer.passport_gamma.shape) == expected
        assert tuple(layer.passport_beta.shape) == expected


def test_random_passports_are_uniform_seeded_and_distinct():
    model, x = PlainCNN(), torch.randn(2, 1, 12, 12)
    a, b, c = protect(model, x, seed=5), protect(model, x, seed=5), protect(model, x, seed=6)
    la, lb, lc = (protected_layers(m)["bn2"] for m in (a, b, c))
    assert torch.equal(la.passport_gamma, lb.passport_gamma)
    assert not torch.equal(la.passport_gamma, lc.passport_gamma)
    assert not torch.equal(la.passport_gamma, la.passport_beta)
    values = torch.cat([la.passport_gamma.flatten(), la.passport_beta.flatten()])
    assert values.min() >= -1 and values.max() <= 1
    assert values.min() < -0.9 and values.max() > 0.9


def test_image_passports_are_real_activations_of_two_inputs():
    model, x = PlainCNN().eval(), torch.randn(5, 1, 12, 12)
    protected = protect(model, x, passports="image", seed=1)
    acts = _producer_inputs(model, x)
    for layer in protected_layers(protected).values():
        batch = acts[layer.producer_path]
        hits = [i for i in range(5) if torch.equal(batch[i : i + 1], layer.passport_gamma)]
        hits_b = [i for i in range(5) if torch.equal(batch[i : i + 1], layer.passport_beta)]
        assert len(hits) == 1 and len(hits_b) == 1 and hits != hits_b


def test_image_passports_from_own_inputs_and_model():
    model = PlainCNN()
    donor = PlainCNN()
    real = torch.randn(3, 1, 12, 12)
    protected = protect(model, torch.randn(1, 1, 12, 12), passports=ImagePassports(inputs=real, model=donor))
    layer = protected_layers(protected)["bn2"]
    batch = capture(donor, real, ["conv2"]).inputs["conv2"]
    assert any(torch.equal(batch[i : i + 1], layer.passport_gamma) for i in range(3))


@pytest.mark.parametrize("model,shape", [(PlainCNN, (4, 1, 12, 12)), (TransformerBlockNet, (4, 6, 8))])
def test_shuffle_passports_take_each_channel_from_some_input_channel(model, shape):
    model, x = model(), torch.randn(shape)
    protected = protect(model, x, passports="shuffle", seed=2)
    acts = _producer_inputs(model, x)
    for layer in protected_layers(protected).values():
        linear = isinstance(layer.producer, torch.nn.Linear)
        batch = acts[layer.producer_path]
        dim = batch.dim() - 1 if linear else 1
        pool = batch.movedim(dim, 1).flatten(0, 1)  # every (input, channel) slice
        passport = layer.passport_gamma.movedim(dim, 1)[0]
        for channel in passport:
            assert any(torch.equal(channel, candidate) for candidate in pool)
        if passport.shape[0] > 1:  # with one channel a shuffled passport is simply one input
            assert not any(torch.equal(layer.passport_gamma, batch[i : i + 1]) for i in range(batch.shape[0]))


@pytest.mark.parametrize("kind", ["image", "shuffle"])
def test_activation_passports_need_several_inputs(kind):
    with pytest.raises(PassportError, match="at least 2 real inputs"):
        protect(PointNetLike(), torch.randn(1, 3, 16), passports=kind)


def test_unknown_kind_and_wrong_donor_are_clear_errors():
    with pytest.raises(PassportError, match="unknown passport kind 'noise'"):
        make_passport_generator("noise")
    assert isinstance(make_passport_generator("random"), RandomPassports)
    with pytest.raises(PassportError, match="no module 'conv1'"):
        protect(PlainCNN(), torch.randn(2, 1, 12, 12), passports=ShufflePassports(model=torch.nn.Sequential()))
    with pytest.raises(PassportError, match="PointNetLike failed"):
        protect(PlainCNN(), torch.randn(2, 1, 12, 12), passports=ShufflePassports(model=PointNetLike()))
