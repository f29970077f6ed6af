"""DESIGN.md promise 8: after ``protect`` the user's model is still the user's model.

Every module keeps its class (``isinstance``) and attributes, every parameter and buffer its
name, so optimizer groups selected by name, EMA copies and existing checkpoints keep working;
the branch adds state only under ``<norm>.passport_aware.*``.
"""

import importlib.util
import warnings

import pytest
import torch
from torch import nn

import passportnorm as pn
from passportnorm import zoo
from models import CASES, PlainCNN

BRANCH = ".passport_aware."


def _protect(model, x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pn.PassportWarning)
        return pn.protect(model, x, signature="(c) mine", seed=0)


def _assert_still_the_users_model(model: nn.Module, protected: nn.Module) -> None:
    modules = dict(protected.named_modules())
    for path, module in model.named_modules():
        assert isinstance(modules[path], type(module)), path
        assert pn.original_class(modules[path]) is type(module), path
    original = dict(model.named_parameters())
    names = dict(protected.named_parameters())
    assert set(original) <= set(names) and all(BRANCH in n for n in set(names) - set(original))
    for name, parameter in original.items():
        assert names[name].shape == parameter.shape and torch.equal(names[name], parameter), name
    state, theirs = model.state_dict(), protected.state_dict()
    assert set(state) <= set(theirs) and all(BRANCH in k for k in set(theirs) - set(state))
    # an existing checkpoint of the unprotected model loads into the protected one by name
    result = protected.load_state_dict(state, strict=False)
    assert not result.unexpected_keys and all(BRANCH in k for k in result.missing_keys)
    for path in pn.protected_layers(protected):
        norm = modules[path]
        assert norm.weight is dict(protected.named_parameters())[f"{path}.weight"]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_protect_keeps_classes_attributes_and_names(case):
    model = case.build()
    _assert_still_the_users_model(model, _protect(model, case.example()))


def test_user_habits_work_on_a_protected_model():
    model, x = PlainCNN(), torch.randn(4, 1, 12, 12)
    protected = _protect(model, x)
    assert isinstance(protected.bn1, nn.BatchNorm2d) and protected.bn1.weight.shape == (8,)
    assert protected.bn1.num_features == 8 and protected.bn1.eps == model.bn1.eps
    # no weight decay on norm parameters, selected by name as users write it
    norm_names = {n for n, _ in model.named_parameters() if n.startswith("bn")}
    decay = [p for n, p in protected.named_parameters() if n not in norm_names and BRANCH not in n]
    no_decay = [p for n, p in protected.named_parameters() if n in norm_names]
    assert len(no_decay) == len(norm_names) and decay
    torch.optim.SGD(
        [{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}], lr=0.1
    )
    # an EMA copy keyed by parameter name
    ema = {n: p.detach().clone() for n, p in protected.named_parameters()}
    assert "bn1.weight" in ema and "bn1.passport_aware.mlp.0.weight" in ema
    # the released model fuses and scripts as the original does
    released = pn.strip(protected).eval()
    fused = torch.ao.quantization.fuse_modules(released, [["conv1", "bn1"]])
    with torch.no_grad():
        torch.testing.assert_close(fused(x), released(x), rtol=1e-4, atol=1e-5)
    torch.jit.script(pn.strip(protected))


def test_strip_restores_the_exact_objects_classes():
    model, x = PlainCNN(), torch.randn(4, 1, 12, 12)
    protected = _protect(model, x)
    assert (
        type(protected.bn1) is not nn.BatchNorm2d
        and type(protected.bn1).__name__ == "PassportAwareBatchNorm2d"
    )
    released = pn.strip(protected)
    assert type(released.bn1) is nn.BatchNorm2d and not hasattr(released.bn1, "passport_aware")
    assert type(protected.bn1).__name__ == "PassportAwareBatchNorm2d", "strip works on a copy"


@pytest.mark.skipif(
    not all(importlib.util.find_spec(name) for name in ("torchvision", "timm")),
    reason="the zoo extra is not installed: pip install 'passportnorm[zoo]'",
)
@pytest.mark.parametrize("name", ["tv:resnet18", "timm:efficientnet_b0", "tv:convnext_tiny"])
def test_models_we_did_not_write_stay_the_users(name):
    torch.manual_seed(0)
    model = zoo.build(name, in_channels=3, num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    protected = _protect(model, x).eval()
    _assert_still_the_users_model(model, protected)
    with torch.no_grad():
        assert torch.equal(protected(x), model(x))
