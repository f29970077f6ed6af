"""Several processes under ``torchrun``: PyTorch's own DistributedDataParallel, nothing of our own.

``torchrun --nproc_per_node N -m passportnorm.cli protect ...`` sets ``WORLD_SIZE``, ``RANK``
and ``LOCAL_RANK``; :func:`join_world` joins the process group (``gloo`` on CPU, ``nccl`` on
CUDA). Every rank builds the same model and the same branches (the secret seed is drawn once, by
rank 0, and broadcast), walks the same seeded order of the data and trains on its share of each
global batch (``--batch-size`` is the global batch: each rank takes every N-th sample of it), so
N processes see the data one process would. Rank 0 alone writes checkpoints, keys and releases.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import cast

import torch
import torch.distributed as dist

from .attach import attach_branch, branch_of, detach_branch
from .errors import ConfigError

__all__ = ["World", "join_world", "leave_world", "check_sync_bn", "restore_batchnorm", "to_sync_batchnorm"]


@dataclass(frozen=True)
class World:
    """This process's place among the ``size`` processes of a torchrun job."""

    rank: int
    size: int
    local_rank: int

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes files and prints results."""
        return self.rank == 0

    def barrier(self) -> None:
        dist.barrier()

    def broadcast_int(self, value: int | None) -> int:
        """Rank 0's non-negative integer (up to 2^128) on every rank."""
        limbs = torch.zeros(4, dtype=torch.int64)
        if self.main:
            if value is None:
                raise ValueError("rank 0 must give the value it broadcasts")
            limbs = torch.tensor([(int(value) >> (32 * i)) & 0xFFFFFFFF for i in range(4)], dtype=torch.int64)
        dist.broadcast(limbs, src=0)
        return sum(int(limb) << (32 * i) for i, limb in enumerate(limbs.tolist()))

    def share(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's share of a global batch of indices: every ``size``-th from ``rank``."""
        return batch[self.rank :: self.size]


BACKEND_VARIABLE = "PASSPORTNORM_BACKEND"  # overrides the backend: gloo lets processes share one GPU


def join_world(device: torch.device) -> World | None:
    """The torchrun world this process belongs to (joined on first call), or None for one process."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return None
    if not dist.is_initialized():
        dist.init_process_group(_backend(device))
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def _backend(device: torch.device) -> str:
    """nccl on CUDA (one GPU per process), gloo on CPU, or what PASSPORTNORM_BACKEND names."""
    chosen = os.environ.get(BACKEND_VARIABLE) or ("nccl" if device.type == "cuda" else "gloo")
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if device.type == "cuda" and chosen == "nccl" and torch.cuda.device_count() < local:
        raise ConfigError(
            f"{local} processes on this node but {torch.cuda.device_count()} CUDA device(s): nccl needs one "
            "GPU per "
            f"process; use --nproc_per_node {torch.cuda.device_count()}, or {BACKEND_VARIABLE}=gloo to share "
            "them"
        )
    return chosen


def leave_world(world: World | None) -> None:
    if world is not None and dist.is_initialized():
        dist.destroy_process_group()


def check_batch(batch_size: int, world: World | None) -> None:
    """A global batch every rank can take an equal share of, or one line saying which sizes work."""
    if world is not None and batch_size % world.size:
        raise ConfigError(
            f"--batch-size {batch_size} does not split over {world.size} processes; use a multiple of "
            f"{world.size} (it is the global batch; each process takes {world.size}-th of it)"
        )


def check_sync_bn(world: World | None, device: torch.device) -> None:
    """SyncBatchNorm across processes needs CUDA tensors; say so before anything is written."""
    if world is not None and device.type != "cuda":
        raise ConfigError(
            "--sync-bn needs CUDA: torch's SyncBatchNorm syncs GPU tensors only; drop --sync-bn on CPU "
            "(each process then normalizes over its share of the global batch)"
        )


def to_sync_batchnorm(model: torch.nn.Module) -> dict[str, type]:
    """torch's BatchNorm layers become SyncBatchNorm (in place, before ``protect``, so each passport-aware
    forward, which runs the norm's own forward, syncs its statistics too); returns the classes to restore.

    Only BatchNorm1d/2d/3d themselves are converted: a subclass adds behaviour (timm's BatchNormAct2d
    applies an activation) that SyncBatchNorm would drop.
    """
    exact = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)
    classes = {name: type(m) for name, m in model.named_modules() if type(m) in exact}
    for name in classes:
        norm = model.get_submodule(name)
        norm.__class__ = torch.nn.SyncBatchNorm  # same parameters, buffers and names; forward syncs
        cast(torch.nn.SyncBatchNorm, norm).process_group = None
    return classes


def restore_batchnorm(model: torch.nn.Module, classes: dict[str, type]) -> torch.nn.Module:
    """Undo :func:`to_sync_batchnorm` in place, branches kept: the release, and the key that names
    each norm's class, are the user's architecture."""
    for name, original in classes.items():
        norm = model.get_submodule(name)
        branch = branch_of(norm)
        if branch is not None:
            detach_branch(norm)
        norm.__class__ = original
        del norm.process_group
        if branch is not None:
            attach_branch(norm, branch)
    return model
