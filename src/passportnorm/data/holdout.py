"""Validation split: hold out part of the training split and evaluate on it instead of the test split.

Choosing settings (schedules, weights, learning rates) by test accuracy overfits the test split;
runs made with a hold-out share are read only to choose, and the test split stays for reporting.
"""

from __future__ import annotations

from dataclasses import replace

from sklearn.model_selection import train_test_split
from torch.utils.data import TensorDataset

from ..errors import ConfigError
from .registry import DatasetSplits

__all__ = ["hold_out"]


def hold_out(splits: DatasetSplits, share: float, seed: int = 0) -> DatasetSplits:
    """``splits`` with a seeded ``share`` of its training split as the new test split (stratified by
    class where a sample has one label; the original test split is dropped); ``share`` 0 returns
    ``splits`` unchanged."""
    if share == 0:
        return splits
    if not 0.0 < share < 1.0:
        raise ConfigError(
            f"holdout {share} must be in (0, 1): it is the share of the training split used for validation"
        )
    if not isinstance(splits.train, TensorDataset):
        raise ConfigError(
            f"--holdout splits data held in memory; {splits.name} is read from disk: give it a val/ folder"
        )
    inputs, labels = splits.train.tensors
    keep, held = train_test_split(
        range(len(labels)),
        test_size=share,
        stratify=labels.numpy() if labels.ndim == 1 else None,
        random_state=seed,
    )
    pick = lambda index: TensorDataset(inputs[list(index)], labels[list(index)])  # noqa: E731
    return replace(splits, train=pick(keep), test=pick(held))
