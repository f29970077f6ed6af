"""Batch norms folded into their producers (obfuscate.fold_norm, DeepEclipse-style): the function
stays, and verify --reference gives back the release's evidence, whether the fold's shift went into
the producer's bias or stayed in the norm (align._take_reference_bias)."""

import warnings

import pytest
import torch
from torch import nn

import passportnorm as pn
from passportnorm import zoo
from passportnorm.attacks.obfuscate import obfuscate
from passportnorm.data import load_dataset
from passportnorm.key import extract_key
from passportnorm.verify import verify

DATA = load_dataset("digits")
X = DATA.train.tensors[0]


def _biased_net():
    """Convolutions with biases before their batch norms, as torchvision's VGG-BN has them."""
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def _with_trained_statistics(model):
    """Running statistics and affine values away from 0 and 1, as training leaves them."""
    model.train()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 2.0)
                module.bias.normal_()
        model(X[:256] * 3 + 1)
    return model.eval()


def _trained(protected, epochs=8):
    """Both branches trained a little (the paper's alternating steps), so the passport-aware forward
    answers well above chance and a broken alignment shows."""
    inputs, labels = DATA.train.tensors
    optimizer = torch.optim.SGD(protected.parameters(), lr=0.05, momentum=0.9)
    for _ in range(epochs):
        for start in range(0, len(inputs), 64):
            for aware in (False, True):
                with pn.passport_mode(protected, aware):
                    loss = nn.functional.cross_entropy(protected(inputs[start:start + 64]), labels[start:start + 64])
                    loss = loss + (pn.sign_loss(protected) if aware else 0)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    return protected.eval()


@pytest.mark.parametrize("build", [_biased_net, lambda: zoo.build("small_cnn", in_channels=1, num_classes=10, width=1.0)],
                         ids=["bias-before-norm", "small-cnn-no-bias"])
def test_a_folded_release_computes_the_same_and_verifies_back_to_the_release(build):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        protected = _trained(pn.protect(build(), X[:8], seed=1))
    key, release = extract_key(protected), pn.strip(protected).eval()
    folded, changed = obfuscate(release, X[:8], permute=False, flip=0.0, rescale=None, fold=True)
    assert len(changed["folded"]) >= 2
    with torch.no_grad():
        torch.testing.assert_close(folded(X[:64]), release(X[:64]), rtol=1e-4, atol=1e-4)
    original = verify(release, key, data=DATA.test)
    assert original.passport_aware_accuracy > 0.5
    aligned = verify(folded, key, data=DATA.test, reference=release)
    assert aligned.alignment["used"]
    assert aligned.per_layer == pytest.approx(original.per_layer)
    assert aligned.passport_aware_accuracy == pytest.approx(original.passport_aware_accuracy, abs=0.01)


def test_an_independent_model_folded_is_not_taken_for_the_release():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        protected = pn.protect(_with_trained_statistics(_biased_net()), X[:8], seed=1)
    key, release = extract_key(protected), pn.strip(protected).eval()
    torch.manual_seed(5)
    stranger, _ = obfuscate(_with_trained_statistics(_biased_net()), X[:8], permute=False, flip=0.0, rescale=None,
                            fold=True)
    report = verify(stranger, key, data=DATA.test, reference=release)
    assert not report.alignment["used"] and not report.verified
