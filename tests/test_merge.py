"""Model merging (attacks/merge.py): weight matching puts a permuted copy's channels back exactly,
averaging and re-measured statistics behave, and a merge with the attacker's fine-tune is judged."""

import warnings

import pytest
import torch

import passportnorm as pn
from passportnorm import zoo
from passportnorm.attacks.merge import average, remeasure_statistics, weight_match
from passportnorm.attacks.obfuscate import obfuscate
from passportnorm.data import load_dataset

DATA = load_dataset("digits")
X = DATA.train.tensors[0]


def _model(seed):
    torch.manual_seed(seed)
    model = zoo.build("resnet18", in_channels=1, num_classes=10, width=0.25)
    return remeasure_statistics(model, torch.utils.data.TensorDataset(X[:256]))


def test_weight_matching_puts_a_permuted_copy_back_channel_for_channel():
    release = _model(0)
    permuted, changed = obfuscate(release, X[:4], flip=0.0, rescale=None, seed=3)
    assert changed["permuted"]
    matched = weight_match(permuted, release, X[:4])
    for name, tensor in release.state_dict().items():
        torch.testing.assert_close(matched.state_dict()[name], tensor, msg=name)


def test_matching_an_independent_model_keeps_its_function():
    release, other = _model(0), _model(1)
    matched = weight_match(other, release, X[:4])
    with torch.no_grad():
        torch.testing.assert_close(matched(X[:32]), other.eval()(X[:32]), rtol=1e-4, atol=1e-4)


def test_averaging_weights_and_measuring_statistics_again():
    first, second = _model(0), _model(1)
    assert all(torch.equal(a, b) for a, b in zip(average(first, second, 0.0).state_dict().values(),
                                                 first.state_dict().values()))
    half = average(first, second, 0.5)
    name = "conv1.weight" if "conv1.weight" in half.state_dict() else next(iter(half.state_dict()))
    torch.testing.assert_close(half.state_dict()[name], (first.state_dict()[name] + second.state_dict()[name]) / 2)
    norm = next(m for m in half.modules() if isinstance(m, torch.nn.BatchNorm2d))
    remeasure_statistics(half, torch.utils.data.TensorDataset(X[:128]))
    assert norm.momentum == pytest.approx(0.1) and not half.training
