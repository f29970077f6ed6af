"""Separate running statistics for the passport-aware forward, and the branch that carries only them.

A norm that carries no passports (skipped weak layers, excluded layers, norms without a producer)
still sits inside a model whose protected layers behave differently in passport mode. When its
input depends on them (PointNet: the input T-Net turns the points before the xyz embedding), a
single set of running statistics averages the two forwards and fits neither: measured on the
point-cloud benchmark, released accuracy fell 3 points and passport-aware accuracy to 69%, both
restored by per-mode statistics. So ``protect`` gives every such norm that tracks running
statistics an :class:`AwareStatistics` branch: in passport mode the norm's own forward runs with
these statistics substituted (its affine, and whatever a subclass adds, unchanged); the free
forward is the norm untouched, and ``strip`` removes the branch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase

from .norm import Layer, norm_channels

__all__ = ["AwareStatistics", "Branch", "BranchStatistics", "needs_aware_statistics"]

_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


def needs_aware_statistics(module: nn.Module) -> bool:
    """BatchNorm and InstanceNorm (subclasses too) that track running statistics (GroupNorm and
    LayerNorm keep none)."""
    return (
        isinstance(module, _NormBase) and bool(module.track_running_stats) and module.running_mean is not None
    )


class BranchStatistics(nn.Module):
    """The passport-aware forward's running statistics for one norm, named as the norm's own.

    ``copy=True`` starts from the norm's current statistics (a trained model's two forwards then
    agree until training moves them apart); ``copy=False`` starts fresh (mean 0, variance 1).
    A norm without running statistics gets an empty holder.
    """

    running_mean: Tensor
    running_var: Tensor
    num_batches_tracked: Tensor

    def __init__(self, norm: Layer, copy: bool):
        super().__init__()
        if not needs_aware_statistics(norm):
            return
        for name in _STATISTICS:
            value = getattr(norm, name)
            if value is not None:
                self.register_buffer(name, value.detach().clone())
        if not copy:
            self.reset()

    @torch.no_grad()
    def reset(self) -> None:
        """Mean 0, variance 1, no batches seen (what ``reset_running_stats`` does to a norm)."""
        if "running_mean" in self._buffers:
            self.running_mean.zero_()
            self.running_var.fill_(1.0)
        if "num_batches_tracked" in self._buffers:
            self.num_batches_tracked.zero_()

    @property
    def tracked(self) -> bool:
        return "running_mean" in self._buffers

    def tensors(self) -> dict[str, Tensor]:
        return {name: value for name, value in self._buffers.items() if value is not None}

    @torch.no_grad()
    def copy_from(self, norm: nn.Module) -> None:
        """Take ``norm``'s current running statistics (a branch that starts as the trained norm)."""
        for name, value in self.tensors().items():
            value.copy_(getattr(norm, name))


class Branch(nn.Module, ABC):
    """What an attached branch shares: the norm it belongs to (referenced, not a child) and its mode.

    Subclasses say which of the norm's tensors the passport-aware forward replaces.
    """

    branch_norm: BranchStatistics
    passport_mode: bool

    def __init__(self, norm: nn.Module):
        super().__init__()
        self.__dict__["_norm"] = norm  # not a child: the norm owns the branch, not the other way round
        self.passport_mode = False

    @property
    def norm(self) -> Layer:
        """The norm module this branch is attached to (its parameters are the released ones)."""
        return self.__dict__["_norm"]

    @property
    def channels(self) -> int:
        return norm_channels(self.norm)

    @abstractmethod
    def substitutes(self) -> dict[str, Tensor]:
        """Tensors the passport-aware forward uses in place of the norm's own, by name."""

    # the state an owner key stores (and gives back) for this branch, by state-dict name prefix
    key_prefixes: tuple[str, ...] = ("branch_norm.",)
    # the part of it that is learned or tracked, whose names and shapes depend on the branch kind
    trained_prefixes: tuple[str, ...] = ("branch_norm.",)

    def key_tensors(self) -> dict[str, Tensor]:
        """The branch's secret state (detached CPU copies), keyed by state-dict name: what a key holds."""
        return {
            name: value.detach().cpu().clone()
            for name, value in self.state_dict().items()
            if name.startswith(self.key_prefixes)
        }

    def load_trained(self, parts: dict[str, Tensor]) -> None:
        """Load the learned/tracked part of a key's ``parts``; ValueError when names or shapes differ."""
        keyed = {k: v for k, v in parts.items() if k.startswith(self.trained_prefixes)}
        own = {k: v for k, v in self.state_dict().items() if k.startswith(self.trained_prefixes)}
        if set(keyed) != set(own) or any(tuple(keyed[k].shape) != tuple(own[k].shape) for k in own):
            wrong = sorted(set(keyed) ^ set(own)) or [k for k in own if keyed[k].shape != own[k].shape]
            raise ValueError(
                f"the key's tensors {', '.join(wrong)} do not fit a branch of {self.channels} channels"
            )
        self.load_state_dict({**self.state_dict(), **keyed})


class AwareStatistics(Branch):
    """An unprotected norm's second set of statistics; the norm's own affine is shared."""

    def __init__(self, norm: nn.Module):
        if not needs_aware_statistics(norm):
            raise TypeError(f"{type(norm).__name__} keeps no running statistics to separate")
        super().__init__(norm)
        self.branch_norm = BranchStatistics(norm, copy=True)

    def substitutes(self) -> dict[str, Tensor]:
        return self.branch_norm.tensors()

    def extra_repr(self) -> str:
        return f"channels={self.channels}, passport_mode={self.passport_mode}"
