"""What the method needs to know about norms and producers: which ones, their channels, their responses.

The branch itself (branch.py) and pairing (pairing.py) ask these questions; the answers live in
one place so a norm is judged the same way everywhere.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .attach import substituted

# a user's module read by attribute (weight, bias, running statistics, in_channels ...): torch types
# such attributes as ``Tensor | Module``, so the functions that accept any such layer take a Layer
Layer = Any

__all__ = [
    "SUPPORTED_NORMS",
    "SUPPORTED_PRODUCERS",
    "affine_free_copy",
    "Layer",
    "along",
    "norm_channel_dim",
    "norm_channels",
    "observed_channel_dim",
    "producer_channel_dim",
    "producer_fan_in",
    "producer_responses",
    "reparametrized_weight_reason",
    "torch_norm_class",
    "unsupported_norm_reason",
]

SUPPORTED_PRODUCERS: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
SUPPORTED_NORMS: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
)


def _names(types: tuple[type, ...]) -> str:
    return ", ".join(t.__name__ for t in types)


def torch_norm_class(norm: nn.Module) -> type[nn.Module]:
    """The supported ``torch.nn`` class a norm is, or subclasses (``MyBN(nn.BatchNorm2d)`` -> BatchNorm2d)."""
    return next(cls for cls in type(norm).__mro__ if cls in SUPPORTED_NORMS)


def unsupported_norm_reason(norm: nn.Module) -> str | None:
    """Why ``norm`` cannot carry a passport-aware branch, or ``None`` when it can."""
    if not isinstance(norm, SUPPORTED_NORMS):
        return f"{type(norm).__name__} is not a supported norm (supported: {_names(SUPPORTED_NORMS)})"
    reparametrized = [name for name in ("weight", "bias") if parametrize.is_parametrized(norm, name)]
    if reparametrized:  # the branch substitutes the stored affine; a parametrization computes it instead
        chain: Any = getattr(norm, "parametrizations")[reparametrized[0]]  # noqa: B009 (typed Any)
        kinds = ", ".join(type(p).__name__ for p in chain)
        return (
            f"its {' and '.join(reparametrized)} is reparametrized ({kinds}): the branch substitutes the "
            "norm's stored affine, so remove the parametrization (parametrize.remove_parametrizations) "
            "or exclude the layer"
        )
    if isinstance(norm, nn.LayerNorm):
        if not norm.elementwise_affine:
            return "LayerNorm has no affine parameters (elementwise_affine=False)"
        if len(norm.normalized_shape) != 1:
            return (
                f"LayerNorm normalizes over {len(norm.normalized_shape)} axes "
                f"{tuple(norm.normalized_shape)}; "
                "only LayerNorm over the last axis has one affine value per channel"
            )
        return None
    if not norm.affine:
        return f"{type(norm).__name__} has no affine parameters (affine=False)"
    if not isinstance(getattr(norm, "weight", None), Tensor) or norm.weight.shape != (norm_channels(norm),):
        return (
            f"{type(norm).__name__} says affine=True but has no per-channel weight of {norm_channels(norm)} "
            "values "
            f"(found {type(getattr(norm, 'weight', None)).__name__}); the branch substitutes that weight"
        )
    return None


def norm_channels(norm: Layer) -> int:
    """Number of channels (one affine value each) of a supported norm."""
    if isinstance(norm, nn.LayerNorm):
        return int(norm.normalized_shape[0])
    if isinstance(norm, nn.GroupNorm):
        return int(norm.num_channels)
    return int(norm.num_features)


def along(values: Tensor, ndim: int, dim: int = 0) -> Tensor:
    """One value per channel shaped to broadcast over a tensor of ``ndim`` dimensions whose channels
    lie on ``dim`` (0: a producer's weight, by output channel)."""
    shape = [1] * ndim
    shape[dim] = -1
    return values.reshape(shape)


def norm_channel_dim(norm: nn.Module, ndim: int) -> int:
    """The axis a norm's affine parameters run along, for an input of rank ``ndim``."""
    return ndim - 1 if isinstance(norm, nn.LayerNorm) else 1


def observed_channel_dim(norm: Layer, x: Tensor) -> int | None:
    """The axis of ``x`` along which ``norm``'s own forward applies its affine values, seen by running it.

    The forward runs with weight 0 and bias ``1..C`` substituted (no hooks, no gradients), so its
    output is the bias (after whatever a subclass adds, such as a monotone activation) spread along
    the channel axis: the one axis whose slices are each constant and all different. timm's
    LayerNorm2d is a LayerNorm that permutes inside its forward, so its channels are axis 1, not
    the last; a forward that ignores its weight and bias gives no such axis (None).
    """
    channels = norm_channels(norm)
    weight = norm.weight
    ramp = torch.arange(1, channels + 1, dtype=weight.dtype, device=weight.device)
    was_training, norm.training = norm.training, False  # eval: running statistics are read, never updated
    try:
        with torch.no_grad(), substituted(norm, {"weight": torch.zeros_like(ramp), "bias": ramp}):
            out = type(norm).forward(norm, x)
    finally:
        norm.training = was_training
    if not isinstance(out, Tensor) or out.shape != x.shape:
        return None
    for axis in range(1, out.dim()):
        if out.shape[axis] != channels:
            continue
        rows = out.movedim(axis, 0).reshape(channels, -1)
        constant = bool((rows == rows[:, :1]).all())
        if constant and rows[:, 0].unique().numel() == channels:
            return axis
    return None


def producer_channel_dim(producer: nn.Module, ndim: int) -> int:
    """The axis a producer writes its output channels to, for an output of rank ``ndim``."""
    return ndim - 1 if isinstance(producer, nn.Linear) else 1


def producer_fan_in(producer: Layer) -> int:
    """Input channels each output channel of a producer reads (``in_channels // groups`` or ``in_features``).

    With a fan-in of 1 (a grayscale first conv, a depthwise conv) a channel's passport response is
    the filter's DC gain times the passport's mean, a weak lever for the sign loss.
    """
    if isinstance(producer, nn.Linear):
        return int(producer.in_features)
    return int(producer.in_channels // producer.groups)


def producer_responses(producer: Layer, weight: Tensor, passports: Tensor, channels: int) -> Tensor:
    """``(N, C)``: ``producer``'s own forward, with ``weight`` and no bias, on each passport, averaged
    per channel.

    The producer's own forward, so a subclass's padding or weight handling is kept (timm's
    Conv2dSame pads like TensorFlow; a plain conv call would not). This is the branch's ``g``
    (and ``b``); for the torch.nn producers it is linear in ``weight``, row by row, which is what
    lets alignment (align.py) tell the bit-carrying direction of a filter from the rest.
    """
    with substituted(producer, {"weight": weight, "bias": None}):
        response = type(producer).forward(producer, passports)  # no hooks: this is not a model call
    channel_dim = producer_channel_dim(producer, response.dim())
    return response.movedim(channel_dim, 1).reshape(len(passports), channels, -1).mean(dim=2)


def reparametrized_weight_reason(producer: Layer) -> str | None:
    """Why a producer's ``weight`` is not a plain parameter (weight norm, spectral norm), or None.

    The sign loss must move the stored weights; a weight computed from other parameters each
    forward (parametrizations, or the older hook-based weight_norm/spectral_norm) is not one.
    """
    if parametrize.is_parametrized(producer, "weight"):
        kinds = ", ".join(type(p).__name__ for p in producer.parametrizations["weight"])
        return f"its weight is reparametrized ({kinds}): the signature must live in stored weights"
    for name in ("weight_g", "weight_orig"):
        if hasattr(producer, name):
            return f"its weight is computed from '{name}' by a forward hook (weight_norm or spectral_norm)"
    return None


def affine_free_copy(norm: Layer) -> nn.Module:
    """The same normalization without affine parameters and with fresh running statistics.

    The ERB attack's own normalization next to a norm. Built from the torch.nn class the norm is
    or subclasses, so a subclass's constructor (which may take other arguments) is never called.
    """
    ref = (
        norm.weight if getattr(norm, "weight", None) is not None else norm.running_mean
    )  # affine=False: a buffer
    factory = {"device": ref.device, "dtype": ref.dtype}
    if isinstance(norm, nn.LayerNorm):
        return nn.LayerNorm(norm.normalized_shape, eps=norm.eps, elementwise_affine=False, **factory)
    if isinstance(norm, nn.GroupNorm):
        return nn.GroupNorm(norm.num_groups, norm.num_channels, eps=norm.eps, affine=False, **factory)
    extra: dict[str, Any] = {}
    if isinstance(norm, nn.SyncBatchNorm):
        extra["process_group"] = norm.process_group
    return torch_norm_class(norm)(
        norm.num_features,
        eps=norm.eps,
        momentum=norm.momentum,
        affine=False,
        track_running_stats=norm.track_running_stats,
        **extra,
        **factory,
    )
