"""What an attack cost (cost.py, stopwatch.py) and the field's removal rule (removal.py), unit by unit."""

import time

import pytest
import torch
from torch.utils.data import DataLoader, Subset, TensorDataset

from passportnorm.attacks.cost import ReadCounter, timed
from passportnorm.attacks.removal import removal_succeeded
from passportnorm.stopwatch import evaluation_seconds, measurement


@measurement
def _inner():
    time.sleep(0.05)


@measurement
def _outer():
    _inner()
    time.sleep(0.05)


def test_a_measurement_inside_another_counts_once_and_timed_splits_it_off():
    before = evaluation_seconds()
    _outer()
    assert 0.1 <= evaluation_seconds() - before < 0.15  # not 0.15: the inner call is part of the outer
    _, wall, measuring = timed(lambda: (time.sleep(0.05), _inner()))
    assert wall >= 0.1 and 0.05 <= measuring < wall - 0.04


def test_the_read_counter_counts_distinct_samples_through_a_loader_and_by_index():
    share = ReadCounter(Subset(TensorDataset(torch.arange(100.0), torch.zeros(100)), list(range(10, 40))))
    for _ in range(2):  # two epochs read the same 30 samples
        for _ in DataLoader(share, batch_size=7, shuffle=True):
            pass
    assert len(share.read) == 30
    fresh = ReadCounter(Subset(TensorDataset(torch.arange(100.0)), list(range(50))))
    fresh[3], fresh[[4, 5, 4]]
    assert fresh.read == {3, 4, 5}


@pytest.mark.parametrize(
    "row,removed",
    [
        ({"attacker_accuracy": 0.93, "verified": False}, True),  # 4 points lost, proof gone
        ({"attacker_accuracy": 0.90, "verified": False}, False),  # 7 points: the model was broken too
        ({"attacker_accuracy": 0.97, "verified": True}, False),  # the proof held
        ({"attacker_accuracy": 0.97, "verified": True, "aligned_verified": False}, True),  # the owner's check aligns
        ({"attacker_accuracy": 0.96, "owner_proof_shows": True}, False),  # re-protection: decided by the dispute
        ({"attacker_accuracy": 0.96, "white_box_verified": False, "black_box_verified": True}, False),
        ({"forged_accuracy": 0.96, "forged_verified": False}, None),  # a forgery is no removal
    ],
)
def test_the_removal_rule_needs_the_proof_gone_and_the_accuracy_kept(row, removed):
    assert removal_succeeded(0.97, row) is removed


def test_refits_schedule_rises_to_the_peak_and_decays_to_zero():
    from passportnorm.attacks.finetune import warmup_cosine

    rates = [warmup_cosine(step, 100, 0.3, 0.1) for step in range(100)]
    assert rates[0] == pytest.approx(0.03) and rates[9] == pytest.approx(0.3)  # 10 steps up
    assert max(rates) == pytest.approx(0.3) and rates[-1] < 1e-3
    assert all(a >= b for a, b in zip(rates[9:], rates[10:]))  # then only down
