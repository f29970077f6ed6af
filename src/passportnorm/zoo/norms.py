"""The norm choice shared by zoo models: ``bn``, ``gn`` or ``in``, each with affine parameters."""

from __future__ import annotations

from torch import nn

from ..choices import NormKind, words
from ..errors import ConfigError

NORM_KINDS = words(NormKind)


def make_norm(kind: str, channels: int, dims: int = 2) -> nn.Module:
    """A norm layer of ``kind`` for ``channels`` channels of a ``dims``-D feature map (1: sequences)."""
    if kind == "bn":
        return {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims](channels)
    if kind == "gn":
        # up to 32 groups (the GroupNorm paper's default), at least 2 channels in each
        groups = next((g for g in (32, 16, 8, 4, 2) if channels % g == 0 and channels // g >= 2), 1)
        return nn.GroupNorm(groups, channels)
    if kind == "in":
        return {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[dims](channels, affine=True)
    raise ConfigError(f"unknown norm {kind!r}; choose one of {', '.join(NORM_KINDS)}")
