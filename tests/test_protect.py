"""DESIGN.md promises 1-4 on every model family, plus round trips, devices and misuse."""

import copy
import inspect
import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from passportnorm import (
    AlreadyProtectedError,
    NotProtectedError,
    PairingError,
    PassportAwareBranch,
    SignatureCapacityError,
    capacity,
    passport_mode,
    protect,
    protected_layers,
    sign_loss,
    signature_detection,
    strip,
)
from models import CASES, PlainCNN, TinyResNet

IDS = [c.name for c in CASES]


def _train_both_branches(model, case, steps=3, lr=0.05):
    """A few real updates of both branches, so equality checks compare trained weights."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    for step in range(steps):
        x, y = case.example(seed=100 + step), case.targets(seed=100 + step)
        for aware in (False, True):
            with passport_mode(model, enabled=aware):
                loss = F.cross_entropy(model(x), y) + (sign_loss(model) if aware else 0)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_promise1_protect_leaves_passport_free_outputs_bit_exact(case):
    model, x = case.build(), case.example()
    original = copy.deepcopy(model.state_dict())
    protected = protect(model, x, signature="ok", seed=1)
    assert protected is not model
    assert all(torch.equal(original[k], v) for k, v in model.state_dict().items())
    assert not any(isinstance(m, PassportAwareBranch) for m in model.modules())
    model.eval(), protected.eval()
    probe = case.example(batch=5, seed=7)
    assert torch.equal(model(probe), protected(probe))
    # one training-mode forward too: batch statistics, running-stat updates, all identical
    # (same RNG state for both, so dropout draws the same mask)
    twin = copy.deepcopy(model).train()
    protected.train()
    with torch.random.fork_rng():
        torch.manual_seed(3)
        twin_out = twin(probe)
        torch.manual_seed(3)
        assert torch.equal(twin_out, protected(probe))
    for path, layer in protected_layers(protected).items():
        assert torch.equal(layer.norm.running_mean if hasattr(layer.norm, "running_mean") and layer.norm.running_mean is not None else torch.zeros(0),
                           twin.get_submodule(path).running_mean if getattr(twin.get_submodule(path), "running_mean", None) is not None else torch.zeros(0))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_promise2_strip_gives_the_original_architecture(case):
    model, x = case.build(), case.example()
    protected = protect(model, x, signature="sig", seed=2)
    _train_both_branches(protected, case)
    released = strip(protected)

    assert {n: type(m) for n, m in released.named_modules()} == {n: type(m) for n, m in model.named_modules()}
    assert {k: v.shape for k, v in released.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert list(released.state_dict()) == list(model.state_dict())
    assert protected_layers(protected), "strip must not touch the protected model"

    released.eval(), protected.eval()
    probe = case.example(batch=5, seed=9)
    assert torch.equal(released(probe), protected(probe))
    with passport_mode(protected):
        assert not torch.equal(released(probe), protected(probe))
    # the released model loads into a fresh copy of the user's architecture
    fresh = case.build()
    fresh.load_state_dict(released.state_dict(), strict=True)
    assert torch.equal(fresh.eval()(probe), released(probe))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_promise3_passport_mode_switches_branches_without_new_forward_arguments(case):
    model, x = case.build(), case.example()
    protected = protect(model, x, seed=3).eval()
    assert type(protected) is type(model)
    assert inspect.signature(protected.forward) == inspect.signature(model.forward)

    free = protected(x)
    with passport_mode(protected) as same:
        assert same is protected
        aware = protected(x)
        assert all(layer.passport_mode for layer in protected_layers(protected).values())
        with passport_mode(protected, enabled=False):
            assert torch.equal(protected(x), free)
        assert torch.equal(protected(x), aware)
    assert not torch.equal(free, aware)
    assert torch.equal(protected(x), free)
    assert not any(layer.passport_mode for layer in protected_layers(protected).values())


def test_passport_mode_restores_after_an_exception():
    protected = protect(PlainCNN(), torch.randn(2, 1, 12, 12))
    with pytest.raises(RuntimeError, match="boom"):
        with passport_mode(protected):
            raise RuntimeError("boom")
    assert not any(layer.passport_mode for layer in protected_layers(protected).values())


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_promise4_every_pairable_norm_is_protected(case):
    protected = protect(case.build(), case.example())
    layers = protected_layers(protected)
    assert list(layers) == list(case.protectable)
    for path in case.reported:
        assert path not in layers and not hasattr(protected.get_submodule(path), "passport_aware")


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_state_dict_round_trip_keeps_the_branch(case):
    model, x = case.build(), case.example()
    protected = protect(model, x, signature="rt", seed=4)
    _train_both_branches(protected, case, steps=2)
    buffer = io.BytesIO()
    torch.save(protected.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    fresh = protect(model, x, signature="rt", seed=99)  # other seed: everything must come from the state
    fresh.load_state_dict(state, strict=True)
    probe = case.example(batch=5, seed=11)
    protected.eval(), fresh.eval()
    assert torch.equal(fresh(probe), protected(probe))
    with passport_mode(fresh), passport_mode(protected):
        assert torch.equal(fresh(probe), protected(probe))
    assert signature_detection(fresh).to_dict() == signature_detection(protected).to_dict()

    released = strip(fresh)
    assert {n: type(m) for n, m in released.named_modules()} == {n: type(m) for n, m in model.named_modules()}
    assert {k: v.shape for k, v in released.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert torch.equal(released.eval()(probe), fresh(probe))


def test_protect_is_deterministic_and_leaves_global_rng_alone():
    case = CASES[0]
    model, x = case.build(), case.example()
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = protect(model, x, signature="s", seed=8)
    assert torch.equal(torch.rand(3), expected_next)
    b = protect(model, x, signature="s", seed=8)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_signature_spreads_over_layers_and_capacity_is_checked():
    model, x = TinyResNet(), torch.randn(2, 3, 16, 16)
    protected = protect(model, x, signature="(c) Alice 2026")
    assert capacity(protected) == 168
    report = signature_detection(protected)
    assert report.total == 168
    with pytest.raises(SignatureCapacityError, match="capacity of 21 bytes"):
        protect(model, x, signature="x" * 22, signature_mode="text")
    # hash-bound bits hash any identity, however long, into the channels there are
    assert capacity(protect(model, x, signature="x" * 22)) == 168


def test_include_and_exclude_select_layers():
    model, x = TinyResNet(), torch.randn(2, 3, 16, 16)
    only = protect(model, x, include=["layer3.*"], exclude=["*.shortcut.*"])
    assert list(protected_layers(only)) == ["layer3.bn1", "layer3.bn2"]
    with pytest.raises(PairingError, match="include pattern 'layer9.*' matches no protectable"):
        protect(model, x, include=["layer9.*"])


def test_misuse_raises_specific_errors_that_say_what_to_do():
    model, x = PlainCNN(), torch.randn(2, 1, 12, 12)
    protected = protect(model, x)
    with pytest.raises(AlreadyProtectedError, match="strip"):
        protect(protected, x)
    with pytest.raises(NotProtectedError, match="protect"):
        strip(model)
    with pytest.raises(NotProtectedError, match="passport mode"):
        with passport_mode(model):
            pass
    with pytest.raises(NotProtectedError, match="has no passport-aware branches, so it cannot .*protect\\(model"):
        signature_detection(model)
    with pytest.raises(NotProtectedError, match="has no passport-aware branches"):
        sign_loss(model)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_branch_follows_dtype_changes(case):
    model, x = case.build(), case.example()
    protected = protect(model, x, signature="d").double()
    layer = next(iter(protected_layers(protected).values()))
    assert layer.passport_gamma.dtype == torch.float64 and layer.mlp[0].weight.dtype == torch.float64
    assert layer.signature.dtype == torch.int8
    with passport_mode(protected):
        out = protected(x.double())
    assert out.dtype == torch.float64 and torch.isfinite(out).all()
    assert sign_loss(protected).dtype == torch.float64


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_branch_runs_on_cuda(case):
    model, x = case.build().cuda(), case.example().cuda()
    protected = protect(model, x, signature="cu")
    assert all(t.is_cuda for t in protected.state_dict().values())
    with passport_mode(protected):
        protected(x)
    sign_loss(protected).backward()
    cpu = protected.cpu()
    with passport_mode(cpu):
        cpu(x.cpu())
    assert signature_detection(cpu).total == capacity(cpu)


def test_weak_lever_layers_are_warned_about_and_get_no_message_bits():
    from passportnorm import PassportWarning, Signature, find_pairs

    model, x = PlainCNN(), torch.randn(2, 1, 12, 12)
    report = find_pairs(model, x)
    assert [p.weak for p in report.pairs] == [True, False] and "fan-in 1" in str(report)
    with pytest.warns(PassportWarning, match=r"^bn1: the layer carrying the bits has at most 3 channels"):
        protected = protect(model, x, signature="ok", signature_mode="text")
    layers = protected_layers(protected)
    assert int(layers["bn1"].message_bits) == 0
    assert int(layers["bn2"].message_bits) == 16 and int(layers["bn2"].message_offset) == 0
    assert torch.equal(layers["bn2"].signature[:16], Signature.from_text("ok").bits)


def test_message_spread_over_layers_is_stored_at_its_offsets():
    import warnings

    from passportnorm import Signature
    from passportnorm.norm import producer_fan_in

    model, x = TinyResNet(), torch.randn(2, 3, 16, 16)
    text = "(c) Alice 2026"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the RGB first conv is a weak lever: its channels come last
        protected = protect(model, x, signature=text, signature_mode="text")
    layers = protected_layers(protected)
    parts = sorted(
        (int(layer.message_offset), layer.signature[: int(layer.message_bits)], producer_fan_in(layer.producer))
        for layer in layers.values()
        if int(layer.message_bits)
    )
    # contiguous slices, strongest levers (largest producer fan-in) first
    assert [offset for offset, _, _ in parts] == [0, *np.cumsum([len(bits) for _, bits, _ in parts[:-1]]).tolist()]
    fan_ins = [fan_in for _, _, fan_in in parts]
    assert fan_ins == sorted(fan_ins, reverse=True) and fan_ins[0] == 32  # layer3 reads 32 channels
    unused = [producer_fan_in(layer.producer) for layer in layers.values() if not int(layer.message_bits)]
    assert unused and max(unused) <= min(fan_ins)
    assert torch.equal(torch.cat([bits for _, bits, _ in parts]), Signature.from_text(text).bits)


def test_skipping_weak_layers_that_are_all_there_is_says_how_to_protect_them():
    from passportnorm import NothingToProtectError

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, groups=1), torch.nn.BatchNorm2d(16))
    with pytest.raises(NothingToProtectError, match=r"every protectable norm of Sequential \(1, e\.g\. '1'\).*--weak-layers protect"):
        protect(model, torch.randn(2, 3, 8, 8), weak_layers="skip")
