"""Datasets by name: real data shipped inside installed packages, and folders the user names."""

from .registry import DatasetSplits, available_datasets, dataset_task, load_dataset, load_recorded_dataset

__all__ = ["DatasetSplits", "available_datasets", "dataset_task", "load_dataset", "load_recorded_dataset"]
