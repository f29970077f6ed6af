"""What the method needs to know about norms and the layers whose weights carry their bits.

A norm's *lever* is the layer the branch reads its ``g`` and ``b`` from: its *producer* (the
Conv/Linear whose output the norm normalizes) where one exists, else its *consumer* (the first
Linear or self-attention that reads the norm's output, as in a pre-norm transformer block, whose
norm reads the residual stream that no single layer writes). The branch itself (branch.py) and
pairing (pairing.py) ask these questions; the answers live in one place so a norm is judged the
same way everywhere.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .attach import substituted

# a user's module read by attribute (weight, bias, running statistics, in_channels ...): torch types
# such attributes as ``Tensor | Module``, so the functions that accept any such layer take a Layer
Layer = Any

__all__ = [
    "SUPPORTED_CONSUMERS",
    "SUPPORTED_NORMS",
    "SUPPORTED_PRODUCERS",
    "affine_free_copy",
    "consumer_conv_reason",
    "consumer_kinds",
    "consumer_outputs",
    "consumer_responses",
    "has_bias",
    "is_hand_written_rmsnorm",
    "Layer",
    "lever_weight",
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
# a consumer reads the norm's channels on its input's last axis through one weight matrix (O, C)
SUPPORTED_CONSUMERS: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.MultiheadAttention,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
)


def consumer_kinds() -> tuple[type[nn.Module], ...]:
    """The consumer classes: SUPPORTED_CONSUMERS, and transformers' ``Conv1D`` (GPT-2's Linear,
    its weight stored transposed as (C, O)) once transformers is loaded, as any model holding
    one has loaded it; passportnorm itself never imports transformers."""
    transposed = getattr(sys.modules.get("transformers.pytorch_utils"), "Conv1D", None)
    return SUPPORTED_CONSUMERS + ((transposed,) if isinstance(transposed, type) else ())


def _is_transposed_linear(layer: nn.Module) -> bool:
    return isinstance(layer, consumer_kinds()[len(SUPPORTED_CONSUMERS) :])


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
_RMSNORM: tuple[type[nn.Module], ...] = (nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()  # torch >= 2.4
SUPPORTED_NORMS += _RMSNORM
_LAST_AXIS_NORMS: tuple[type[nn.Module], ...] = (nn.LayerNorm, *_RMSNORM)


def is_hand_written_rmsnorm(module: nn.Module) -> bool:
    """The RMSNorm class decoder LMs write themselves (Llama, Mistral, Gemma, T5 ...): named ``*RMSNorm``,
    no children, one parameter, a 1-D ``weight``. Its forward is the user's; pairing runs it to see
    that it applies that weight per channel on the last axis before the norm is accepted."""
    if isinstance(module, SUPPORTED_NORMS) or not type(module).__name__.endswith("RMSNorm"):
        return False
    parameters = dict(module.named_parameters(recurse=False))
    weight = parameters.get("weight")
    return (
        next(module.children(), None) is None
        and list(parameters) == ["weight"]
        and isinstance(weight, Tensor)
        and weight.dim() == 1
    )


def has_bias(norm: Layer) -> bool:
    """Whether the norm's forward takes a per-channel bias (RMSNorm's does not): the branch
    substitutes a ``b``-derived bias only where there is that slot. ``LayerNorm(bias=False)`` keeps
    one (set to None), and its forward adds whatever is substituted there."""
    return "bias" in norm._parameters or "bias" in norm._buffers


def _names(types: tuple[type, ...]) -> str:
    return ", ".join(t.__name__ for t in types)


def torch_norm_class(norm: nn.Module) -> type[nn.Module]:
    """The supported ``torch.nn`` class a norm is, or subclasses (``MyBN(nn.BatchNorm2d)`` -> BatchNorm2d)."""
    return next(cls for cls in type(norm).__mro__ if cls in SUPPORTED_NORMS)


def unsupported_norm_reason(norm: Layer) -> str | None:
    """Why ``norm`` cannot carry a passport-aware branch, or ``None`` when it can."""
    if is_hand_written_rmsnorm(norm):
        return None  # its forward is checked on real shapes by pairing (observed_channel_dim)
    if not isinstance(norm, SUPPORTED_NORMS):
        return (
            f"{type(norm).__name__} is not a supported norm (supported: {_names(SUPPORTED_NORMS)}, and "
            "hand-written *RMSNorm classes with one 1-D weight)"
        )
    reparametrized = [name for name in ("weight", "bias") if parametrize.is_parametrized(norm, name)]
    if reparametrized:  # the branch substitutes the stored affine; a parametrization computes it instead
        chain: Any = getattr(norm, "parametrizations")[reparametrized[0]]  # noqa: B009 (typed Any)
        kinds = ", ".join(type(p).__name__ for p in chain)
        return (
            f"its {' and '.join(reparametrized)} is reparametrized ({kinds}): the branch substitutes the "
            "norm's stored affine, so remove the parametrization (parametrize.remove_parametrizations) "
            "or exclude the layer"
        )
    if isinstance(norm, _LAST_AXIS_NORMS):
        name = torch_norm_class(norm).__name__
        if not norm.elementwise_affine:
            return f"{name} has no affine parameters (elementwise_affine=False)"
        shape = _normalized_shape(norm)
        if len(shape) != 1:
            return (
                f"{name} normalizes over {len(shape)} axes {shape}; "
                f"only {name} over the last axis has one affine value per channel"
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


def _normalized_shape(norm: Layer) -> tuple[int, ...]:
    return tuple(int(size) for size in norm.normalized_shape)


def norm_channels(norm: Layer) -> int:
    """Number of channels (one affine value each) of a supported norm."""
    if isinstance(norm, _LAST_AXIS_NORMS):
        return _normalized_shape(norm)[0]
    if is_hand_written_rmsnorm(norm):
        return int(norm.weight.numel())
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
    return ndim - 1 if isinstance(norm, _LAST_AXIS_NORMS) or is_hand_written_rmsnorm(norm) else 1


def observed_channel_dim(norm: Layer, x: Tensor) -> int | None:
    """The axis of ``x`` along which ``norm``'s own forward applies its affine values, seen by running it.

    The forward runs with weight 0 and bias ``1..C`` substituted (no hooks, no gradients), so its
    output is the bias (after whatever a subclass adds, such as a monotone activation) spread along
    the channel axis: the one axis whose slices are each constant and all different. timm's
    LayerNorm2d is a LayerNorm that permutes inside its forward, so its channels are axis 1, not
    the last; a forward that ignores its weight and bias gives no such axis (None). A norm without
    a bias (RMSNorm) is run twice instead, with weight ``1..C`` and with weight 1: their ratio is
    that axis's constant (Gemma's ``x * (1 + w)`` included).
    """
    if not has_bias(norm):
        return _gain_axis(norm, x)
    channels = norm_channels(norm)
    ramp = torch.arange(1, channels + 1, dtype=norm.weight.dtype, device=norm.weight.device)
    out = _run_with(norm, x, {"weight": torch.zeros_like(ramp), "bias": ramp})
    if not isinstance(out, Tensor) or out.shape != x.shape:
        return None
    for axis in _axes_of_size(out, channels):
        rows = out.movedim(axis, 0).reshape(channels, -1)
        constant = bool((rows == rows[:, :1]).all())
        if constant and rows[:, 0].unique().numel() == channels:
            return axis
    return None


def _run_with(norm: Layer, x: Tensor, tensors: dict[str, Tensor]) -> Any:
    """``norm``'s own forward on ``x`` in eval mode (running statistics read, never updated), with
    ``tensors`` substituted; no hooks, no gradients."""
    was_training, norm.training = norm.training, False
    try:
        with torch.no_grad(), substituted(norm, tensors):
            return type(norm).forward(norm, x)
    finally:
        norm.training = was_training


def _axes_of_size(out: Tensor, size: int) -> list[int]:
    return [axis for axis in range(1, out.dim()) if out.shape[axis] == size]


def _gain_axis(norm: Layer, x: Tensor) -> int | None:
    """The axis on which a bias-free norm multiplies by its weight: the ratio of its outputs with
    weight ``1..C`` and with weight 1 is constant along it, one distinct value per channel."""
    channels = norm_channels(norm)
    ramp = torch.arange(1, channels + 1, dtype=norm.weight.dtype, device=norm.weight.device)
    ramped, flat = (_run_with(norm, x, {"weight": w}) for w in (ramp, torch.ones_like(ramp)))
    if not all(isinstance(out, Tensor) and out.shape == x.shape for out in (ramped, flat)):
        return None
    for axis in _axes_of_size(ramped, channels):
        up, base = (out.movedim(axis, 0).reshape(channels, -1).double() for out in (ramped, flat))
        seen = base.abs() > 1e-6 * base.abs().amax().clamp_min(1e-30)
        if not bool(seen.any(dim=1).all()):
            continue
        ratio = torch.where(seen, up / torch.where(seen, base, 1.0), torch.nan)
        first = ratio.nanmean(dim=1, keepdim=True)
        constant = bool(((ratio - first).abs() <= 1e-3 * first.abs()).logical_or(~seen).all())
        if constant and _all_distinct(first.squeeze(1)):
            return axis
    return None


def _all_distinct(values: Tensor) -> bool:
    gaps = values.sort().values.diff().abs()
    return bool((gaps > 1e-3 * values.abs().amax()).all())


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


def lever_weight(lever: Layer) -> Tensor:
    """The weight a lever's bits live in: a producer's or a Linear consumer's ``weight``, a
    self-attention's fused q/k/v projection ``in_proj_weight`` (3E, E), a ``Conv1D``'s weight seen
    as a Linear's (O, C) (a transposed view of the stored parameter: writes reach it)."""
    if isinstance(lever, nn.MultiheadAttention):
        return lever.in_proj_weight
    if _is_transposed_linear(lever):
        return lever.weight.t()
    return lever.weight


def consumer_conv_reason(conv: nn.Module) -> str | None:
    """Why a convolution cannot be a consumer, or None: its transpose must be one plain
    ``conv_transpose`` (zero padding given as numbers) and its weight's columns the norm's channels
    (one group)."""
    if not isinstance(conv, nn.modules.conv._ConvNd):
        return None
    if conv.groups != 1:
        return f"it has {conv.groups} groups"
    if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
        return f"its padding is {conv.padding!r} ({conv.padding_mode})"
    return None


_TRANSPOSED = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def consumer_responses(consumer: Layer, weight: Tensor, passports: Tensor, channels: int) -> Tensor:
    """``(N, C)``: what a consumer's weight ``W`` gives each passport ``P``, a point of its output
    space; for a Linear (O, C), ``P`` being T rows of O values::

        g_j = mean_t sum_o P[t, o] W[o, j]      (the transpose of the consumer's map, averaged)

    linear in column ``j`` of ``W``, the weights that read norm channel ``j``: the branch's ``g``
    for a norm whose lever is its consumer. A passport lives in the consumer's output space as a
    producer's lives in its input space (docs/DESIGN.md section 3b). A convolution's transpose is
    its ``conv_transpose``, averaged over the positions.
    """
    if weight.shape[1] != channels:
        raise RuntimeError(f"the consumer reads {weight.shape[1]} channels, the norm has {channels}")
    if isinstance(consumer, nn.modules.conv._ConvNd):
        spatial = weight.dim() - 2
        back = _TRANSPOSED[spatial](
            passports.to(weight.dtype),
            weight,
            stride=consumer.stride,
            padding=consumer.padding,  # type: ignore[arg-type]  # numbers: consumer_conv_reason
            dilation=consumer.dilation,
        )
        return back.reshape(len(passports), channels, -1).mean(dim=2)
    rows = passports.reshape(len(passports), -1, weight.shape[0]).to(weight.dtype)
    return (rows @ weight).mean(dim=1)


def consumer_outputs(consumer: Layer, inputs: Tensor) -> Tensor:
    """The consumer's map, bias left out, on ``inputs``: the space its passports are drawn from."""
    weight = lever_weight(consumer)
    if isinstance(consumer, nn.modules.conv._ConvNd):
        with substituted(consumer, {"bias": None}):
            return type(consumer).forward(consumer, inputs.to(weight.dtype))
    return F.linear(inputs.to(weight.dtype), weight)


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
    if is_hand_written_rmsnorm(norm) or isinstance(norm, _RMSNORM):
        eps = getattr(norm, "eps", getattr(norm, "variance_epsilon", None))
        return nn.RMSNorm(norm_channels(norm), eps=eps, elementwise_affine=False, **factory)
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
