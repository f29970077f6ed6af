"""Unprotected norms keep separate statistics for the passport-aware forward (aware_statistics.py).

PointNet shows why: with the xyz norms skipped, the input T-Net (protected) turns the points
differently in the two forwards, so the embedding norm after it sees two input distributions.
"""

import dataclasses
import warnings

import pytest
import torch

import passportnorm as pn
from passportnorm import zoo
from passportnorm.aware_statistics import AwareStatistics
from passportnorm.errors import OwnerKeyError
from passportnorm.key import OwnerKey, attach_key, extract_key
from passportnorm.protect import statistics_layers
from passportnorm.verify import recalibrate_branch

SKIPPED = {"input_transform.points.1", "embed.1"}  # the norms after the two convs that read xyz


def _pointnet(separate_statistics=True):
    torch.manual_seed(0)
    model = zoo.build("pointnet", in_channels=3, num_classes=5, width=0.125)
    x = torch.randn(8, 3, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        protected = pn.protect(model, x, signature="(c) S", weak_layers="skip", seed=1, separate_statistics=separate_statistics)
    return model, protected, x


def _stats(model, path):
    return dict(model.named_modules())[path].running_mean.clone()


def test_skipped_norms_get_aware_statistics_and_only_the_running_forward_updates_its_set():
    _, protected, x = _pointnet()
    layers = statistics_layers(protected)
    assert set(layers) == SKIPPED
    free_before, aware_before = _stats(protected, "embed.1"), _stats(protected, "embed.1.passport_aware.branch_norm")
    assert torch.equal(free_before, aware_before), "aware statistics start as a copy of the norm's"
    protected.train()
    with pn.passport_mode(protected):
        assert all(layer.passport_mode for layer in layers.values())
        protected(x)
    assert not any(layer.passport_mode for layer in layers.values())
    assert torch.equal(_stats(protected, "embed.1"), free_before), "the aware forward left the released statistics alone"
    aware_after = _stats(protected, "embed.1.passport_aware.branch_norm")
    assert not torch.equal(aware_after, aware_before)
    protected(x)
    assert not torch.equal(_stats(protected, "embed.1"), free_before)
    assert torch.equal(_stats(protected, "embed.1.passport_aware.branch_norm"), aware_after), "the free forward left the aware statistics alone"
    # the aware forward uses the norm's own affine parameters: no second set to train
    branch = layers["embed.1"]
    assert not list(branch.parameters()) and set(branch.substitutes()) == {"running_mean", "running_var", "num_batches_tracked"}


def test_shared_statistics_on_request_mix_both_forwards():
    _, protected, x = _pointnet(separate_statistics=False)
    assert not statistics_layers(protected)
    before = _stats(protected, "embed.1")
    with pn.passport_mode(protected):
        protected.train()(x)
    assert not torch.equal(_stats(protected, "embed.1"), before)


def test_strip_removes_aware_statistics_and_free_outputs_are_the_norms():
    model, protected, x = _pointnet()
    with pn.passport_mode(protected):
        protected.train()(x)
    protected.eval()
    released = pn.strip(protected)
    assert not statistics_layers(released) and not pn.is_protected(released)
    assert list(released.state_dict()) == list(model.state_dict())
    assert [type(m) for m in released.modules()] == [type(m) for m in model.modules()]
    assert torch.equal(released(x), protected(x))


def test_key_carries_aware_statistics_and_old_keys_still_attach(tmp_path):
    _, protected, x = _pointnet()
    with pn.passport_mode(protected):
        protected.train()(x)
    protected.eval()
    extract_key(protected).save(tmp_path / "key")
    key = OwnerKey.load(tmp_path / "key")
    assert {layer.norm for layer in key.statistics_layers} == SKIPPED
    rebuilt = attach_key(pn.strip(protected), key).eval()
    assert set(statistics_layers(rebuilt)) == SKIPPED
    with pn.passport_mode(rebuilt), pn.passport_mode(protected):
        assert torch.equal(rebuilt(x), protected(x))
    # a key written before aware statistics existed: branches only, shared statistics as before
    old = OwnerKey({k: v for k, v in key.tensors.items() if k.split(".branch_norm.")[0] not in SKIPPED},
                   dataclasses.replace(key.manifest, statistics_layers=()))
    assert not statistics_layers(attach_key(pn.strip(protected), old))


def test_key_statistics_for_another_architecture_name_the_layer(tmp_path):
    _, protected, _ = _pointnet()
    key = extract_key(protected)
    suspect = pn.strip(protected)
    suspect.embed[1] = torch.nn.BatchNorm1d(3)
    with pytest.raises(OwnerKeyError, match=r"'embed\.1' is a BatchNorm1d with 3 channels, the key expects a BatchNorm1d with \d+$"):
        attach_key(suspect, key)
    # a consistent (re-hashed) key whose statistics entry does not match its tensors
    entries = tuple(
        dataclasses.replace(e, channels=7) if e.norm == "embed.1" else e for e in key.statistics_layers
    )
    OwnerKey(key.tensors, dataclasses.replace(key.manifest, statistics_layers=entries)).save(tmp_path / "key")
    with pytest.raises(OwnerKeyError, match=r"statistics layer 'embed\.1' has no branch_norm\.running_mean of 7 channels"):
        OwnerKey.load(tmp_path / "key")


def test_recalibration_re_estimates_aware_statistics_only():
    _, protected, x = _pointnet()
    protected.eval()
    branch = statistics_layers(protected)["embed.1"]
    branch.branch_norm.running_mean.fill_(100.0)
    free = branch.norm.running_mean.clone()
    recalibrate_branch(protected, [(x, None)], torch.device("cpu"))
    assert isinstance(branch, AwareStatistics) and branch.branch_norm.running_mean.abs().max() < 100.0
    assert torch.equal(branch.norm.running_mean, free)
    assert branch.norm.momentum == 0.1 and not branch.norm.training
