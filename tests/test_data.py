import pytest
import torch

from passportnorm.data import available_datasets, load_dataset
from passportnorm.errors import DatasetError


def test_mnist5k_is_the_shipped_real_data_split_4000_1000_stratified():
    data = load_dataset("mnist5k", seed=0)
    assert (len(data.train), len(data.test)) == (4000, 1000)
    x, y = data.train.tensors
    assert x.shape == (4000, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10
    counts = torch.bincount(data.test.tensors[1], minlength=10)
    assert counts.sum() == 1000 and counts.min() >= 90 and counts.max() <= 115
    assert abs(float(x.mean())) < 0.1 and 0.8 < float(x.std()) < 1.2  # standardised
    again = load_dataset("mnist5k", seed=0)
    assert torch.equal(again.train.tensors[0], x)
    other = load_dataset("mnist5k", seed=1)
    assert not torch.equal(other.train.tensors[1], y)


def test_digits_is_scikit_learns_8x8():
    data = load_dataset("digits", seed=0)
    assert data.input_shape == (1, 8, 8)
    assert len(data.train) + len(data.test) == 1797


def test_unknown_dataset_names_the_choices():
    assert {"mnist5k", "digits", "cifar10", "cifar100"} <= set(available_datasets())
    with pytest.raises(DatasetError, match="unknown dataset 'mnist6k'; choose one of .*mnist5k"):
        load_dataset("mnist6k")


def test_holdout_is_a_stratified_seeded_share_of_the_training_split_only():
    from passportnorm.data.holdout import hold_out
    from passportnorm.errors import ConfigError

    data = load_dataset("digits", seed=0)
    held = hold_out(data, 0.25, seed=3)
    train_x, _ = data.train.tensors
    assert len(held.train) + len(held.test) == len(data.train) and abs(len(held.test) - 0.25 * len(data.train)) < 1
    rows = lambda x: {tuple(r.flatten().tolist()) for r in x}  # noqa: E731
    assert rows(held.train.tensors[0]) | rows(held.test.tensors[0]) == rows(train_x)
    assert not rows(held.test.tensors[0]) & rows(data.test.tensors[0])  # the test split is never used
    counts = torch.bincount(held.test.tensors[1], minlength=10) / len(held.test)
    assert torch.allclose(counts, torch.bincount(data.train.tensors[1], minlength=10) / len(data.train), atol=0.01)
    again = hold_out(data, 0.25, seed=3)
    assert torch.equal(again.test.tensors[0], held.test.tensors[0])
    assert hold_out(data, 0.0) is data
    with pytest.raises(ConfigError, match="holdout 1.0 must be in"):
        hold_out(data, 1.0)
