"""AwareStatisticsNorm: an unprotected norm that keeps its own statistics for the passport-aware forward.

A norm that carries no branch (skipped weak layers, excluded layers, norms without a producer)
still sits inside a model whose protected layers behave differently in passport mode. When its
input depends on them (PointNet: the input T-Net turns the points before the xyz embedding), a
single set of running statistics averages the two forwards and fits neither: measured on the
point-cloud benchmark, released accuracy fell 3 points and passport-aware accuracy to 69%, both
restored by per-mode statistics. So ``protect`` wraps every such norm that tracks running
statistics; the passport-aware forward uses these statistics with the norm's own (shared) affine
parameters, the free forward is the wrapped norm untouched, and ``strip`` puts the norm back.
"""

from __future__ import annotations

from torch import Tensor, nn

from .norm import SUPPORTED_NORMS, adds_to_forward, affine_free_copy, torch_norm_class

__all__ = ["AwareStatisticsNorm", "needs_aware_statistics"]


def needs_aware_statistics(module: nn.Module) -> bool:
    """BatchNorm and InstanceNorm that track running statistics; GroupNorm/LayerNorm keep none.

    A subclass that overrides forward (an activation inside the norm) is left alone: the aware
    forward below would skip what it adds and differ from the free one before any training.
    """
    if not (isinstance(module, nn.modules.batchnorm._NormBase) and bool(module.track_running_stats)):
        return False
    return not (isinstance(module, SUPPORTED_NORMS) and adds_to_forward(module, torch_norm_class(module)))


class AwareStatisticsNorm(nn.Module):
    """``norm`` (free forward, released) plus ``branch_norm``: its statistics for the aware forward.

    ``branch_norm`` starts as a copy of the norm's current statistics, so a pretrained model's
    two forwards agree until training moves them apart; it has no affine parameters of its own.
    """

    def __init__(self, norm: nn.Module):
        super().__init__()
        if not needs_aware_statistics(norm):
            raise TypeError(f"{type(norm).__name__} keeps no running statistics to separate")
        self.norm = norm
        # the aware forward borrows the norm's own affine parameters, so the copy holds statistics only
        self.branch_norm = affine_free_copy(norm)
        own = norm.state_dict()
        self.branch_norm.load_state_dict({name: own[name] for name in self.branch_norm.state_dict()})
        self.passport_mode = False

    @property
    def channels(self) -> int:
        return int(self.norm.num_features)

    def forward(self, x: Tensor) -> Tensor:
        if not self.passport_mode:
            return self.norm(x)
        y = self.branch_norm(x)
        if self.norm.affine:
            shape = [1] * x.dim()
            shape[1] = self.channels
            y = y * self.norm.weight.view(shape) + self.norm.bias.view(shape)
        return y

    def extra_repr(self) -> str:
        return f"channels={self.channels}, passport_mode={self.passport_mode}"
