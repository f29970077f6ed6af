"""Error rates over null pairs (roc.py) and the fingerprinting peer they are compared with
(baselines/ipguard.py): the threshold arithmetic, and IPGuard's points on real trained models."""

import pytest
import torch
import torch.nn.functional as F

from passportnorm import zoo
from passportnorm.baselines.ipguard import boundary_points, matching_rate
from passportnorm.data import load_dataset
from passportnorm.roc import roc_points, tpr_at_fpr


def test_tpr_at_a_fixed_fpr_leaves_at_most_that_share_of_nulls_above_the_threshold():
    null = [float(i) for i in range(100)]  # 0..99
    assert tpr_at_fpr([99.5, 98.5, 50.0], null, 0.01) == pytest.approx(2 / 3)  # threshold 98: one null above
    assert tpr_at_fpr([99.5, 98.5, 50.0], null, 0.0) == pytest.approx(1 / 3)  # threshold 99: none above
    assert tpr_at_fpr([99.0], null, 0.0) == 0.0  # a tie with the highest null does not count
    assert tpr_at_fpr([5.0], null, 1.0) == 1.0
    fpr, tpr = roc_points([3.0, 1.0], [2.0, 0.0])
    assert fpr == [0.0, 0.5, 0.5, 1.0] and tpr == [0.5, 0.5, 1.0, 1.0]
    with pytest.raises(ValueError):
        tpr_at_fpr([], null, 0.01)


def _trained(seed, data):
    torch.manual_seed(seed)
    model = zoo.build("small_cnn", in_channels=1, num_classes=10, width=1.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    inputs, labels = data.train.tensors
    for _ in range(4):
        for start in range(0, len(inputs), 64):
            loss = F.cross_entropy(model(inputs[start:start + 64]), labels[start:start + 64])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def test_ipguard_points_sit_across_a_boundary_and_tell_a_copy_from_an_independent_model():
    data = load_dataset("digits")
    owner, other = _trained(0, data), _trained(1, data)
    starts = data.test.tensors[0][:60]
    fingerprint = boundary_points(owner, starts, k=0.01, steps=300, seed=0)
    with torch.no_grad():
        top_two = owner(fingerprint.inputs).topk(2, dim=1).values
    assert float((top_two[:, 0] - top_two[:, 1]).median()) < 0.5  # near the boundary, not deep in a class
    assert (fingerprint.labels != owner(starts).argmax(1)).float().mean() > 0.8  # moved across it
    assert fingerprint.inputs.min() >= starts.min() and fingerprint.inputs.max() <= starts.max()
    assert matching_rate(owner, fingerprint) == 1.0
    assert matching_rate(other, fingerprint) < 0.8
