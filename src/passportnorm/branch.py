"""PassportAwareBranch: the passport-aware (secret) branch of one norm layer, attached to it (attach.py).

The norm module itself is the passport-free (released) branch. The passport-aware branch
computes the norm's affine parameters from the producer's weights ``W``::

    g, b   = mean(W * P_gamma), mean(W * P_beta)     per channel, producer bias left out
    gamma1 = MLP(g),  beta1 = MLP(b)                  one MLP per layer, C -> C/4 -> C
    y      = norm(x; weight=gamma1, bias=beta1, statistics=the branch's own)

i.e. the norm's own forward with those tensors substituted, so the affine stays in the norm's
kernel and a subclass's additions run in both branches. A norm without a producer (a pre-norm
transformer block's) computes them from its *consumer*'s weight columns instead (role
``consumer``: ``g_j = mean_t sum_o P[t, o] W[o, j]``, norm.consumer_responses), and a norm without
a bias (RMSNorm) gets only ``gamma1``. The sign loss
``alpha * sum relu(margin - s * g) + l2 * sum g**2`` ties ``sign(g)`` to the signature ``s``.
The producer is referenced, not owned, so its weights appear once in the state dict and the
branch's gradients flow into the very weights the model releases.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import skip_init

from .aware_statistics import Branch, BranchStatistics
from .choices import LeverRole, words
from .errors import NoPassportForwardError, OwnerKeyError
from .norm import (
    SUPPORTED_PRODUCERS,
    Layer,
    consumer_kinds,
    consumer_responses,
    has_bias,
    lever_weight,
    norm_channels,
    producer_responses,
)
from .registry import Registry
from .signature import read_bits

__all__ = ["BRANCH_KINDS", "PassportAwareBranch", "register_branch_kind"]


def _branch_mlp(channels: int, generator: torch.Generator, like: Tensor) -> nn.Sequential:
    """C -> C/4 -> C without biases, LeakyReLU between; initialised like nn.Linear, from ``generator``."""
    hidden = max(1, channels // 4)
    # skip_init: the default init would draw from the global RNG, which protect() must not touch
    down = skip_init(nn.Linear, channels, hidden, bias=False)
    up = skip_init(nn.Linear, hidden, channels, bias=False)
    for layer in (down, up):
        nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
    return nn.Sequential(down, nn.LeakyReLU(), up).to(device=like.device, dtype=like.dtype)


# branch kind -> factory(norm, producer, key tensors, key layer entry): how attach_key rebuilds a
# layer whose key entry says ``"branch": kind``; the baselines register theirs next to their code
BRANCH_KINDS: Registry[Callable[..., PassportAwareBranch]] = Registry(
    "branch kind", modules=("passportnorm.key", "passportnorm.baselines.deepipr"), error=OwnerKeyError
)


def register_branch_kind(kind: str) -> Callable[[Any], Any]:
    """``@register_branch_kind("deepipr-v1")`` above the factory that rebuilds such a layer from a key."""
    return BRANCH_KINDS.register(kind)


class PassportAwareBranch(Branch):
    """The passport-aware branch of one norm: passports, signature, MLP and statistics of its own.

    Build these through :func:`passportnorm.protect`, which finds producers, makes passports and
    attaches each branch to its norm as ``norm.passport_aware``.
    """

    passport_gamma: Tensor
    passport_beta: Tensor
    signature: Tensor
    message_bits: Tensor
    message_offset: Tensor
    mlp: nn.Module  # a Sequential here; DeepIPR's layers use g and b themselves (Identity)
    branch_kind = "passport-aware"
    key_prefixes = (
        "passport_gamma",
        "passport_beta",
        "signature",
        "message_bits",
        "message_offset",
        "mlp.",
        "branch_norm.",
    )
    trained_prefixes = ("mlp.", "branch_norm.")

    def __init__(
        self,
        norm: Layer,
        producer: Layer,
        passport_gamma: Tensor,
        passport_beta: Tensor,
        signature: Tensor,
        *,
        producer_path: str,
        role: LeverRole = "producer",
        message_bits: int = 0,
        message_offset: int = 0,
        alpha: float = 0.1,
        margin: float = 0.1,
        l2: float = 1e-5,
        generator: torch.Generator | None = None,
    ):
        super().__init__(norm)
        if role not in words(LeverRole):
            raise ValueError(f"role must be one of {', '.join(words(LeverRole))}, got {role!r}")
        self.role = role
        channels = norm_channels(norm)
        if signature.shape != (channels,):
            raise ValueError(
                f"signature has shape {tuple(signature.shape)}, the norm has {channels} channels"
            )
        self.branch_norm = BranchStatistics(norm, copy=False)
        self.mlp = _branch_mlp(channels, generator or torch.Generator().manual_seed(0), norm.weight)
        like = {"device": norm.weight.device}
        self.register_buffer(
            "passport_gamma", passport_gamma.detach().clone().to(**like, dtype=norm.weight.dtype)
        )
        self.register_buffer(
            "passport_beta", passport_beta.detach().clone().to(**like, dtype=norm.weight.dtype)
        )
        self.register_buffer("signature", signature.detach().to(**like, dtype=torch.int8).clone())
        # the first ``message_bits`` channels carry message[message_offset : message_offset + message_bits]
        self.register_buffer("message_bits", torch.tensor(int(message_bits), dtype=torch.int64, **like))
        self.register_buffer("message_offset", torch.tensor(int(message_offset), dtype=torch.int64, **like))
        self.producer_path = producer_path
        self.alpha = float(alpha)
        self.margin = float(margin)
        self.l2 = float(l2)
        self._last_g: Tensor | None = None
        self.attach_producer(producer)

    @property
    def producer(self) -> Layer:
        """The layer whose weights the branch reads (referenced, not a child): the norm's producer,
        or its consumer for role ``consumer``."""
        return self.__dict__["_producer"]

    def attach_producer(self, producer: nn.Module) -> None:
        """Point the branch at its lever ``producer`` without registering it as a child module."""
        kinds = (
            consumer_kinds() if self.role == "consumer" else SUPPORTED_PRODUCERS
        )  # a writer's rows: as a producer's
        if not isinstance(producer, kinds):
            names = ", ".join(t.__name__ for t in kinds)
            raise TypeError(f"a {self.role} must be one of {names}, got {type(producer).__name__}")
        self.__dict__["_producer"] = producer

    @property
    def channels(self) -> int:
        return int(self.signature.numel())

    @property
    def lever_weight(self) -> Tensor:
        """The weight the bits live in (a self-attention's is its fused q/k/v projection)."""
        return lever_weight(self.producer)

    @property
    def lever_channel_dim(self) -> int:
        """The axis of :attr:`lever_weight` that runs along the norm's channels: a producer's rows
        (output channels), a consumer's columns (input features)."""
        return 1 if self.role == "consumer" else 0

    def responses_with(self, weight: Tensor, passports: Tensor) -> Tensor:
        """``(N, C)``: each passport's bias-free response averaged per channel, for ``weight`` in
        place of the lever's; linear in it, channel ``c`` in slice ``c`` along lever_channel_dim."""
        if self.role == "consumer":
            return consumer_responses(self.producer, weight, passports, self.channels)
        return producer_responses(self.producer, weight, passports, self.channels)

    def responses_of(self, passports: Tensor) -> Tensor:
        """``(N, C)``: each passport's bias-free response averaged per channel (linear in the weights)."""
        return self.responses_with(self.lever_weight, passports)

    def passport_responses(self) -> Tensor:
        """``(2, C)``: row 0 is ``g`` (from the gamma passport), row 1 is ``b`` (beta passport).

        Always in the weights' precision with autocast off: the signature is read from the signs
        of these values and the sign loss acts on them, so mixed precision must not round them.
        """
        device_type = self.passport_gamma.device.type
        with torch.autocast(device_type=device_type, enabled=False):
            return self.responses_of(torch.cat([self.passport_gamma, self.passport_beta], dim=0))

    def affine(self, responses: Tensor) -> tuple[Tensor, Tensor]:
        """The branch's ``(gamma, beta)`` from the responses ``(g, b)``."""
        gamma, beta = self.mlp(responses)
        return gamma, beta

    def substitutes(self) -> dict[str, Tensor]:
        responses = self.passport_responses()
        self._last_g = responses[0]
        gamma, beta = self.affine(responses)
        dtype = (
            self.passport_gamma.dtype
        )  # the norm's parameter dtype: what its kernel expects, also under autocast
        affine = {"weight": gamma.to(dtype), "bias": beta.to(dtype)} if has_bias(self.norm) else {}
        return {"weight": gamma.to(dtype), **affine, **self.branch_norm.tensors()}

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

    def message(self) -> tuple[int, Tensor]:
        """``(offset, bits)``: the part of the owner's message this layer's first channels carry."""
        used = int(self.message_bits)
        return int(self.message_offset), self.signature[:used].detach().cpu()

    @torch.no_grad()
    def set_passports(self, gamma: Tensor | None = None, beta: Tensor | None = None) -> None:
        """Replace the passports in place (same shape; a claim or an attack writes them this way)."""
        for current, new in ((self.passport_gamma, gamma), (self.passport_beta, beta)):
            if new is not None:
                if new.numel() != current.numel():
                    raise ValueError(f"a passport of {new.numel()} values for one of {tuple(current.shape)}")
                current.copy_(new.reshape(current.shape))

    @torch.no_grad()
    def set_signature(self, bits: Tensor) -> None:
        """Replace the bits the sign loss targets (+-1 per channel)."""
        if tuple(bits.shape) != (self.channels,) or not bool((bits.abs() == 1).all()):
            raise ValueError(f"a signature is {self.channels} values of +-1, got shape {tuple(bits.shape)}")
        self.signature.copy_(bits.to(self.signature.dtype))

    @torch.no_grad()
    def fit_affine(self, gamma: Tensor, beta: Tensor) -> float:
        """Solve the MLP's output layer (minimum norm) so that MLP(g) = gamma and MLP(b) = beta, then
        share its gain evenly with the first layer; returns the largest gap left.

        The solved layer can carry a gain of ~100 (small ``g``, norm weights near 1); shared by
        both bias-free layers (LeakyReLU is positively homogeneous, so the function is unchanged)
        it no longer makes a from-scratch learning rate diverge (ResNet18 x0.25 on digits at 0.05 did).
        """
        mlp: Any = self.mlp  # _branch_mlp's Sequential: Linear, LeakyReLU, Linear
        first, second = mlp[0].weight, mlp[2].weight
        responses = self.passport_responses()
        hidden = mlp[1](mlp[0](responses))  # (2, H): g and b, hidden
        target = torch.stack([gamma, beta]).to(responses.dtype)  # (2, C)
        solution = torch.linalg.pinv(hidden.double()) @ target.double()  # hidden @ solution = target
        second.copy_(solution.T.to(second.dtype))
        factor = (second.norm() / first.norm().clamp_min(1e-12)).sqrt()
        first.mul_(factor)
        second.div_(factor)
        return float((self.mlp(responses) - target).abs().max())

    @torch.no_grad()
    def reset_mlp(self, generator: torch.Generator) -> None:
        """Draw the MLP's linear layers afresh from ``generator`` (as a new branch would), before a fit."""
        for layer in (m for m in self.mlp.modules() if isinstance(m, nn.Linear)):
            nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)

    @torch.no_grad()
    def extracted_bits(self) -> Tensor:
        """``sign(g)`` as int8 +-1 (0 stays 0), read from the producer weights and passports alone."""
        return read_bits(self.passport_responses()[0])

    def __getstate__(self) -> dict:
        # The cached g carries an autograd graph, which can be neither copied nor pickled.
        state = super().__getstate__()
        state["_last_g"] = None
        return state

    def extra_repr(self) -> str:
        mode = self.passport_mode
        return f"{self.role}={self.producer_path!r}, channels={self.channels}, passport_mode={mode}"
