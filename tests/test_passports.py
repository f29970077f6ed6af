import math

import pytest
import torch

import passportnorm as pn
from passportnorm import ImagePassports, PassportError, ShufflePassports, protect, protected_layers
from passportnorm.capture import capture
from passportnorm.passports import RandomPassports, calibrated_copy, make_passport_generator
from models import CASES, PlainCNN, PointNetLike, TinyResNet, TransformerBlockNet


def _same_up_to_scale(activation, passport):
    """An activation passport is a real activation times one positive factor (see fit_to)."""
    return torch.allclose(activation / activation.norm(), passport / passport.norm(), atol=1e-6)


def _producer_inputs(model, x):
    """What activation passports are drawn from: producer inputs of the model calibrated on ``x``."""
    paths = [layer.producer_path for layer in protected_layers(protect(model, x)).values()]
    return capture(calibrated_copy(model, x), x, paths).inputs


def _passport_space(layer, inputs):
    """A producer's passports are shaped like its inputs; a consumer's like its outputs x W^T."""
    if layer.role == "consumer":
        return torch.nn.functional.linear(inputs, layer.lever_weight.detach())
    return inputs


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_passport_shapes_follow_real_producer_inputs(case):
    model, x = case.build(), case.example()
    protected = protect(model, x)
    seen = _producer_inputs(model, x)
    for layer in protected_layers(protected).values():
        expected = (1, *_passport_space(layer, seen[layer.producer_path]).shape[1:])
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
        hits = [i for i in range(5) if _same_up_to_scale(batch[i : i + 1], layer.passport_gamma)]
        hits_b = [i for i in range(5) if _same_up_to_scale(batch[i : i + 1], layer.passport_beta)]
        assert len(hits) == 1 and len(hits_b) == 1 and hits != hits_b


def test_image_passports_from_own_inputs_and_model():
    model = PlainCNN()
    donor = PlainCNN()
    real = torch.randn(3, 1, 12, 12)
    protected = protect(model, torch.randn(1, 1, 12, 12), passports=ImagePassports(inputs=real, model=donor))
    layer = protected_layers(protected)["bn2"]
    batch = capture(calibrated_copy(donor, real), real, ["conv2"]).inputs["conv2"]
    assert any(_same_up_to_scale(batch[i : i + 1], layer.passport_gamma) for i in range(3))


@pytest.mark.parametrize("model,shape", [(PlainCNN, (4, 1, 12, 12)), (TransformerBlockNet, (4, 6, 8))])
def test_shuffle_passports_take_each_channel_from_some_input_channel(model, shape):
    model, x = model(), torch.randn(shape)
    protected = protect(model, x, passports="shuffle", seed=2)
    acts = _producer_inputs(model, x)
    for layer in protected_layers(protected).values():
        linear = isinstance(layer.producer, torch.nn.Linear) or layer.role == "consumer"
        batch = _passport_space(layer, acts[layer.producer_path])
        dim = batch.dim() - 1 if linear else 1
        pool = batch.movedim(dim, 1).flatten(0, 1)  # every (input, channel) slice
        passport = layer.passport_gamma.movedim(dim, 1)[0]
        # each channel is one (input, channel) slice of the calibrated activations (times one factor)
        for channel in passport:
            assert any(torch.allclose(channel / channel.norm(), candidate / candidate.norm(), atol=1e-5) for candidate in pool)
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


class _DeepResidual(torch.nn.Module):
    """A deep untrained residual net whose eval-mode activations explode: BN statistics at their init."""

    def __init__(self, blocks: int = 10, width: int = 16):
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, width, 3, padding=1), torch.nn.BatchNorm2d(width))
        self.blocks = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.Conv2d(width, width, 3, padding=1), torch.nn.BatchNorm2d(width), torch.nn.ReLU(),
                                torch.nn.Conv2d(width, width, 3, padding=1), torch.nn.BatchNorm2d(width))
            for _ in range(blocks))
        self.head = torch.nn.Linear(width, 10)
        with torch.no_grad():
            for conv in (m for m in self.modules() if isinstance(m, torch.nn.Conv2d)):
                conv.weight.mul_(4.0)  # a gain above 1 per layer, as deep nets without calibrated BN show

    def forward(self, x):
        x = torch.relu(self.stem(x))
        for block in self.blocks:
            x = torch.relu(x + block(x))
        return self.head(x.mean((2, 3)))


@pytest.mark.parametrize("kind", ["shuffle", "image"])
def test_activation_passports_come_from_calibrated_statistics_and_training_stays_finite(kind):
    import warnings

    import torch.nn.functional as F

    from passportnorm.capture import capture
    from passportnorm.protect import response_outliers

    torch.manual_seed(0)
    model, x = _DeepResidual(), torch.randn(16, 3, 16, 16)
    last = "blocks.9.3"
    raw = capture(model, x, [last]).inputs[last]  # eval mode with initial statistics: what was used before
    assert raw.abs().max() > 1e4, "the hazard this test guards against must be real"
    with warnings.catch_warnings():
        warnings.simplefilter("error", pn.PassportWarning)  # no range warning may fire
        protected = pn.protect(model, x, signature="(c) deep", passports=kind, seed=0, weak_layers="skip")
    assert response_outliers(protected) == {}
    calibrated = capture(calibrated_copy(model, x), x, [last]).inputs[last]
    if kind == "image":  # drawn from the calibrated activations, not the exploding raw ones
        passport = pn.protected_layers(protected)["blocks.9.4"].passport_gamma
        assert any(_same_up_to_scale(calibrated[i : i + 1], passport) for i in range(16))
        assert not any(_same_up_to_scale(raw[i : i + 1], passport) for i in range(16))
    schedule = pn.PassportSchedule(protected)
    optimizer = torch.optim.SGD(protected.parameters(), lr=0.05, momentum=0.9)
    protected.train()
    losses, start = [], pn.signature_detection(protected).rate
    for step in range(30):
        y = torch.randint(0, 10, (16,))
        for aware in (False, True):
            with pn.passport_mode(protected, enabled=aware):
                loss = F.cross_entropy(protected(x), y)
                loss = schedule.with_sign_loss(loss) if aware else loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert start < 0.7 and pn.signature_detection(protected).rate > 0.9


@pytest.mark.parametrize("kind", ["image", "shuffle"])
def test_activation_passports_start_with_responses_at_the_scale_of_random_ones(kind):
    from passportnorm.norm import producer_responses

    model, x = TinyResNet(), torch.randn(6, 3, 16, 16)
    protected = protect(model, x, passports=kind, seed=0, weak_layers="skip")  # weak layers: at the margin
    for layer in protected_layers(protected).values():
        uniform = torch.rand(layer.passport_gamma.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
        scale = producer_responses(layer.producer, layer.producer.weight, uniform, layer.channels).pow(2).mean().sqrt()
        for passport in (layer.passport_gamma, layer.passport_beta):
            responses = producer_responses(layer.producer, layer.producer.weight, passport, layer.channels)
            torch.testing.assert_close(responses.pow(2).mean().sqrt(), scale, rtol=1e-4, atol=0)
    with pytest.warns(pn.PassportWarning, match="embed slowly"):
        with_weak = protect(model, x, passports=kind, seed=0, weak_layers="protect", margin=0.2)
    weak = [layer for layer in protected_layers(with_weak).values() if layer.producer.in_channels <= 3]
    assert weak
    for layer in weak:
        responses = producer_responses(layer.producer, layer.producer.weight, layer.passport_gamma, layer.channels)
        torch.testing.assert_close(responses.pow(2).mean().sqrt(), torch.tensor(0.2), rtol=1e-4, atol=0)
    random = protect(model, x, passports="random", seed=0)
    values = torch.cat([layer.passport_gamma.flatten() for layer in protected_layers(random).values()])
    assert values.abs().max() <= 1.0, "random passports stay U(-1, 1), as the paper draws them"


def test_shuffle_passports_train_alexnet_on_mnist5k_without_nan(tmp_path):
    """Issue 17's finding: shuffle passports scaled to the sign loss's margin (2-10x the scale of random
    ones) sent AlexNet x0.25 on mnist5k to NaN within 15 alternating steps at lr 0.05."""
    from passportnorm import zoo
    from passportnorm.data import load_dataset
    from passportnorm.train import TrainConfig, Trainer

    data = load_dataset("mnist5k", seed=0)
    torch.manual_seed(0)
    model = zoo.build("alexnet", in_channels=1, num_classes=10, width=0.25, norm="bn")
    protected = protect(model, data.train.tensors[0][:16], passports="shuffle", seed=0, weak_layers="skip")
    config = TrainConfig(epochs=1, batch_size=64, lr=0.05, schedule="alternate", seed=0)
    trainer = Trainer(protected, data, config, out_dir=tmp_path, device=torch.device("cpu"))
    for step, batch in zip(range(30), trainer._batches(0)):
        losses = trainer.step(batch)  # raises TrainingError on a non-finite loss
        assert all(math.isfinite(v) for v in losses.values()), step


def test_out_of_range_passports_are_named_at_protect_and_at_the_first_aware_step():
    import warnings

    import torch.nn.functional as F

    class Loud(pn.RandomPassports):
        def generate(self, activations, channel_dim, generator):
            gamma, beta = super().generate(activations, channel_dim, generator)
            return gamma * 1e4, beta * 1e4

    model, x = PlainCNN(), torch.randn(8, 1, 12, 12)
    with pytest.warns(pn.PassportWarning, match=r"passport responses out of range \(\|g\| > 10\) at bn1 \("):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*(embed slowly|hash-bound)")
            protected = pn.protect(model, x, passports=Loud(), seed=0)
    schedule = pn.PassportSchedule(protected)
    with pn.passport_mode(protected):
        loss = F.cross_entropy(protected(x), torch.zeros(8, dtype=torch.long))
        with pytest.warns(pn.PassportWarning, match=r"sign loss at the first passport-aware step .* beyond 10 at bn1"):
            schedule.with_sign_loss(loss)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            schedule.with_sign_loss(loss)  # once only
