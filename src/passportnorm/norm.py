"""PassportAwareNorm: one norm layer with its secret passport-aware branch.

The wrapped norm module is kept untouched and is the passport-free (released) branch. The
passport-aware branch computes its affine parameters from the producer's weights ``W``::

    g, b   = mean(W * P_gamma), mean(W * P_beta)     per channel, producer bias left out
    gamma1 = MLP(g),  beta1 = MLP(b)                  one MLP per layer, C -> C/4 -> C
    y      = gamma1 * norm1(x) + beta1                norm1: same norm, no affine, own statistics

and the sign loss ``alpha * sum relu(margin - s * g) + l2 * sum g**2`` ties ``sign(g)`` to the
signature ``s``. The producer is referenced, not owned, so its weights appear once in the
state dict and gradients of the branch flow into the very weights the model releases.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize, skip_init

from .errors import NoPassportForwardError

__all__ = [
    "PassportAwareNorm",
    "SUPPORTED_NORMS",
    "SUPPORTED_PRODUCERS",
    "affine_free_copy",
    "norm_channel_dim",
    "norm_channels",
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


def adds_to_forward(module: nn.Module, base: type[nn.Module]) -> bool:
    """True when ``module``'s class overrides ``base.forward`` (timm's BatchNormAct2d adds an activation)."""
    return type(module).forward is not base.forward


def unsupported_norm_reason(norm: nn.Module) -> str | None:
    """Why ``norm`` cannot carry a passport-aware branch, or ``None`` when it can."""
    if not isinstance(norm, SUPPORTED_NORMS):
        return f"{type(norm).__name__} is not a supported norm (supported: {_names(SUPPORTED_NORMS)})"
    base = torch_norm_class(norm)
    if adds_to_forward(norm, base):
        return (
            f"{type(norm).__name__} subclasses {base.__name__} and overrides forward (it adds behaviour, an "
            "activation for example); the passport-aware branch would not run what it adds, so it is left "
            "unprotected rather than given a different layer"
        )
    if isinstance(norm, nn.LayerNorm):
        if not norm.elementwise_affine:
            return "LayerNorm has no affine parameters (elementwise_affine=False)"
        if len(norm.normalized_shape) != 1:
            return (
                f"LayerNorm normalizes over {len(norm.normalized_shape)} axes {tuple(norm.normalized_shape)}; "
                "only LayerNorm over the last axis has one affine value per channel"
            )
        return None
    if not norm.affine:
        return f"{type(norm).__name__} has no affine parameters (affine=False)"
    return None


def norm_channels(norm: nn.Module) -> int:
    """Number of channels (one affine value each) of a supported norm."""
    if isinstance(norm, nn.LayerNorm):
        return int(norm.normalized_shape[0])
    if isinstance(norm, nn.GroupNorm):
        return int(norm.num_channels)
    return int(norm.num_features)


def norm_channel_dim(norm: nn.Module, ndim: int) -> int:
    """The axis a norm's affine parameters run along, for an input of rank ``ndim``."""
    return ndim - 1 if isinstance(norm, nn.LayerNorm) else 1


def producer_channel_dim(producer: nn.Module, ndim: int) -> int:
    """The axis a producer writes its output channels to, for an output of rank ``ndim``."""
    return ndim - 1 if isinstance(producer, nn.Linear) else 1


def producer_fan_in(producer: nn.Module) -> int:
    """Input channels each output channel of a producer reads (``in_channels // groups`` or ``in_features``).

    With a fan-in of 1 (a grayscale first conv, a depthwise conv) a channel's passport response is
    the filter's DC gain times the passport's mean, a weak lever for the sign loss.
    """
    if isinstance(producer, nn.Linear):
        return int(producer.in_features)
    return int(producer.in_channels // producer.groups)


def producer_responses(producer: nn.Module, weight: Tensor, passports: Tensor, channels: int) -> Tensor:
    """``(N, C)``: ``producer`` run with ``weight`` (no bias) on each passport, averaged per channel.

    This is the branch's ``g`` (and ``b``); it is linear in ``weight``, row by row, which is
    what lets alignment (align.py) tell the bit-carrying direction of a filter from the rest.
    """
    if isinstance(producer, nn.Linear):
        response = F.linear(passports, weight)
    else:
        response = producer._conv_forward(passports, weight, None)
    channel_dim = producer_channel_dim(producer, response.dim())
    return response.movedim(channel_dim, 1).reshape(len(passports), channels, -1).mean(dim=2)


def reparametrized_weight_reason(producer: nn.Module) -> str | None:
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


def affine_free_copy(norm: nn.Module) -> nn.Module:
    """The same normalization without affine parameters and with fresh running statistics.

    This is ``norm1`` of the passport-aware branch: BatchNorm (and InstanceNorm that tracks
    running statistics) keeps statistics of its own, separate from the released ones. It is built
    from the torch.nn class the norm is or subclasses, so a subclass's own constructor (which
    may take other arguments) is never called; subclasses that change forward are not protected.
    """
    ref = norm.weight if getattr(norm, "weight", None) is not None else norm.running_mean  # affine=False: a buffer
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


def _branch_mlp(channels: int, generator: torch.Generator, like: Tensor) -> nn.Sequential:
    """C -> C/4 -> C without biases, LeakyReLU between; initialised like nn.Linear, from ``generator``."""
    hidden = max(1, channels // 4)
    # skip_init: the default init would draw from the global RNG, which protect() must not touch
    mlp = nn.Sequential(
        skip_init(nn.Linear, channels, hidden, bias=False),
        nn.LeakyReLU(),
        skip_init(nn.Linear, hidden, channels, bias=False),
    )
    for layer in (mlp[0], mlp[2]):
        nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
    return mlp.to(device=like.device, dtype=like.dtype)


# branch kind -> factory(norm, producer, key tensors, key layer entry), so keys can rebuild branches
# of other schemes (the baselines register theirs) without this module importing them
BRANCH_KINDS: dict[str, Any] = {}


def register_branch_kind(kind: str, factory: Any) -> None:
    """Let ``attach_key`` rebuild layers whose key entry says ``"branch": kind`` with ``factory``."""
    BRANCH_KINDS[kind] = factory


class PassportAwareNorm(nn.Module):
    """A norm layer with a passport-aware branch next to it.

    Outside passport mode the forward is exactly ``self.norm(x)``: the original module, its
    parameters and statistics untouched. In passport mode (see :func:`passportnorm.passport_mode`)
    the forward runs the passport-aware branch instead.

    Build these through :func:`passportnorm.protect`, which finds producers and makes passports.
    """

    passport_gamma: Tensor
    passport_beta: Tensor
    signature: Tensor
    message_bits: Tensor
    message_offset: Tensor
    branch_kind = "passport-aware"

    def __init__(
        self,
        norm: nn.Module,
        producer: nn.Module,
        passport_gamma: Tensor,
        passport_beta: Tensor,
        signature: Tensor,
        *,
        producer_path: str,
        message_bits: int = 0,
        message_offset: int = 0,
        alpha: float = 0.1,
        margin: float = 0.1,
        l2: float = 1e-5,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        channels = norm_channels(norm)
        if signature.shape != (channels,):
            raise ValueError(f"signature has shape {tuple(signature.shape)}, the norm has {channels} channels")
        self.norm = norm
        self.branch_norm = affine_free_copy(norm)
        self.mlp = _branch_mlp(channels, generator or torch.Generator().manual_seed(0), norm.weight)
        like = {"device": norm.weight.device}
        self.register_buffer("passport_gamma", passport_gamma.detach().clone().to(**like, dtype=norm.weight.dtype))
        self.register_buffer("passport_beta", passport_beta.detach().clone().to(**like, dtype=norm.weight.dtype))
        self.register_buffer("signature", signature.detach().to(device=norm.weight.device, dtype=torch.int8).clone())
        # the first ``message_bits`` channels carry message[message_offset : message_offset + message_bits]
        self.register_buffer("message_bits", torch.tensor(int(message_bits), dtype=torch.int64, device=norm.weight.device))
        self.register_buffer("message_offset", torch.tensor(int(message_offset), dtype=torch.int64, device=norm.weight.device))
        self.producer_path = producer_path
        self.alpha = float(alpha)
        self.margin = float(margin)
        self.l2 = float(l2)
        self.passport_mode = False
        self._last_g: Tensor | None = None
        self.attach_producer(producer)

    @property
    def producer(self) -> nn.Module:
        """The Conv/Linear module whose weights the branch reads (referenced, not a child)."""
        return self.__dict__["_producer"]

    def attach_producer(self, producer: nn.Module) -> None:
        """Point the branch at ``producer`` without registering it as a child module."""
        if not isinstance(producer, SUPPORTED_PRODUCERS):
            raise TypeError(f"producer must be one of {_names(SUPPORTED_PRODUCERS)}, got {type(producer).__name__}")
        self.__dict__["_producer"] = producer

    @property
    def channels(self) -> int:
        return int(self.signature.numel())

    def responses_of(self, passports: Tensor) -> Tensor:
        """``(N, C)``: each passport's bias-free producer response averaged per channel (linear in it)."""
        return producer_responses(self.producer, self.producer.weight, passports, self.channels)

    def passport_responses(self) -> Tensor:
        """``(2, C)``: row 0 is ``g`` (from the gamma passport), row 1 is ``b`` (beta passport).

        Always in the weights' precision with autocast off: the signature is read from the signs
        of these values and the sign loss acts on them, so mixed precision must not round them.
        """
        device_type = self.passport_gamma.device.type
        with torch.autocast(device_type=device_type, enabled=False):
            return self.responses_of(torch.cat([self.passport_gamma, self.passport_beta], dim=0))

    def forward(self, x: Tensor) -> Tensor:
        if not self.passport_mode:
            return self.norm(x)
        responses = self.passport_responses()
        self._last_g = responses[0]
        gamma, beta = self.mlp(responses)
        shape = [1] * x.dim()
        shape[norm_channel_dim(self.norm, x.dim())] = self.channels
        return self.branch_norm(x) * gamma.view(shape) + beta.view(shape)

    def sign_loss_of(self, g: Tensor) -> Tensor:
        """The sign loss for given pre-MLP responses ``g``."""
        target = self.signature.to(g.dtype)
        return self.alpha * F.relu(self.margin - target * g).sum() + self.l2 * g.pow(2).sum()

    def sign_loss(self) -> Tensor:
        """The sign loss of the ``g`` used by the last passport-aware forward (with its graph)."""
        if self._last_g is None:
            raise NoPassportForwardError(
                "no passport-aware forward has run on this layer yet; run the model inside "
                "passport_mode(model) before asking for the sign loss"
            )
        return self.sign_loss_of(self._last_g)

    @torch.no_grad()
    def extracted_bits(self) -> Tensor:
        """``sign(g)`` as int8 +-1 (0 stays 0), read from the producer weights and passports alone."""
        return torch.sign(self.passport_responses()[0]).to(torch.int8)

    def __getstate__(self) -> dict:
        # The cached g carries an autograd graph, which can be neither copied nor pickled.
        state = super().__getstate__()
        state["_last_g"] = None
        return state

    def extra_repr(self) -> str:
        return f"producer={self.producer_path!r}, channels={self.channels}, passport_mode={self.passport_mode}"
