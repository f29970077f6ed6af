"""DeepIPR passport layers (Fan et al., NeurIPS 2019), the scheme passport-aware normalization improves on.

A DeepIPR layer takes a norm's affine parameters straight from the producer's response to two
passports: ``gamma = g = mean(W * P_gamma)``, ``beta = b = mean(W * P_beta)`` (no MLP), and the
sign loss ``alpha * sum relu(0.1 - s * g)`` writes the signature into g. The comparison uses the
same alpha (0.1) as passport-aware normalization: with alpha 1 and activation passports, ``|g|``
grows to ~10 within an epoch and the network stops learning (an exploratory run, not a committed
benchmark: 28% on digits after 4 epochs vs 98% at alpha 0.1), so a larger alpha would handicap DeepIPR.

- Scheme V1: the norm has no affine parameters of its own; the passport-derived ones are used in
  every forward, so the passports ship with the model (public) and the released model is NOT
  the original architecture: its norms lose their affine parameters and carry passport buffers,
  and each forward also runs the producer on the passports.
- Scheme V2: a public branch with ordinary learnable affine parameters (released) and a private
  passport branch (kept secret) share the producer AND the normalization statistics; both are
  trained together (one backward over both losses, as in the authors' code). The released model
  is the original architecture, but its statistics were estimated on both branches' features.

Passport-aware normalization differs from V2 in exactly two places: separate statistics for
the private branch, and an MLP between ``g`` and ``gamma``. Both layers here reuse the
:class:`PassportAwareNorm` machinery (keys, detection, verification, attacks) with those two
pieces swapped, so the comparison isolates the scheme.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from ..errors import ConfigError
from ..norm import PassportAwareNorm, affine_free_copy, register_branch_kind
from ..protect import protect, protected_layers, strip

__all__ = ["SCHEMES", "DeepIPRNorm", "protect_deepipr", "release_deepipr", "normalize_without_affine"]

SCHEMES = ("v1", "v2")


def normalize_without_affine(norm: nn.Module, x: Tensor) -> Tensor:
    """``norm``'s normalization of ``x`` with its statistics (updated in training, as its own forward
    would) but without its affine parameters: the private branch of DeepIPR V2 shares them."""
    if isinstance(norm, (_BatchNorm, _InstanceNorm)):
        batch = norm.training or norm.running_mean is None
        momentum = 0.1 if norm.momentum is None else norm.momentum
        if isinstance(norm, _BatchNorm):
            if norm.training and norm.num_batches_tracked is not None:
                norm.num_batches_tracked.add_(1)
            return F.batch_norm(x, norm.running_mean, norm.running_var, None, None, batch, momentum, norm.eps)
        return F.instance_norm(x, norm.running_mean, norm.running_var, None, None, batch, momentum, norm.eps)
    if isinstance(norm, nn.GroupNorm):
        return F.group_norm(x, norm.num_groups, None, None, norm.eps)
    if isinstance(norm, nn.LayerNorm):
        return F.layer_norm(x, norm.normalized_shape, None, None, norm.eps)
    raise TypeError(f"DeepIPR cannot normalise with a {type(norm).__name__}")


class _SharedStatistics(nn.Module):
    """The private branch's normalization in V2: the released norm itself, without its affine.

    Holds the norm by reference (not as a child), so its statistics are stored once."""

    def __init__(self, norm: nn.Module):
        super().__init__()
        self.__dict__["_norm"] = norm

    def forward(self, x: Tensor) -> Tensor:
        return normalize_without_affine(self.__dict__["_norm"], x)


class DeepIPRNorm(PassportAwareNorm):
    """A DeepIPR passport layer around one norm: scheme ``v1`` (passports always on) or ``v2``."""

    def __init__(self, norm: nn.Module, producer: nn.Module, passport_gamma: Tensor, passport_beta: Tensor,
                 signature: Tensor, *, scheme: str, producer_path: str, message_bits: int = 0,
                 message_offset: int = 0, alpha: float = 0.1, margin: float = 0.1):
        if scheme not in SCHEMES:
            raise ConfigError(f"unknown DeepIPR scheme {scheme!r}; choose v1 or v2")
        super().__init__(norm, producer, passport_gamma, passport_beta, signature, producer_path=producer_path,
                         message_bits=message_bits, message_offset=message_offset, alpha=alpha, margin=margin, l2=0.0)
        self.scheme = scheme
        self.branch_kind = f"deepipr-{scheme}"
        self.mlp = nn.Identity()  # DeepIPR uses g and b themselves as gamma and beta
        if scheme == "v1":
            # no affine of its own: the passport-derived one replaces it in every forward
            self.norm = affine_free_copy(norm) if getattr(norm, "weight", None) is not None else norm
            self.branch_norm = self.norm
        else:
            self.branch_norm = _SharedStatistics(self.norm)

    def forward(self, x: Tensor) -> Tensor:
        if self.scheme == "v1":
            self.passport_mode = True  # V1 has no passport-free branch
        return super().forward(x)

    def extra_repr(self) -> str:
        return f"scheme={self.scheme}, " + super().extra_repr()


def _from_key(norm: nn.Module, producer: nn.Module, parts: dict[str, Tensor], layer: dict[str, Any]) -> DeepIPRNorm:
    return DeepIPRNorm(
        norm, producer, parts["passport_gamma"], parts["passport_beta"], parts["signature"],
        scheme=layer["branch"].split("-", 1)[1], producer_path=layer["producer"],
        message_bits=int(parts.get("message_bits", torch.tensor(0))),
        message_offset=int(parts.get("message_offset", torch.tensor(0))),
        alpha=layer.get("alpha", 0.1), margin=layer.get("margin", 0.1),
    )


for _scheme in SCHEMES:
    register_branch_kind(f"deepipr-{_scheme}", _from_key)


def protect_deepipr(model: nn.Module, example_input: Any, scheme: str = "v2", alpha: float = 0.1, **options: Any) -> nn.Module:
    """A copy of ``model`` with DeepIPR passport layers on the norms ``protect`` would choose.

    ``options`` are :func:`passportnorm.protect`'s (signature, passports, seed, include,
    exclude, pairs, weak_layers): the same pairs, passports and signature layout as passport-
    aware normalization would get from the same call, so schemes differ only in the layer.
    """
    # DeepIPR's other norms keep one set of statistics (its V2 even shares them with the passport branch)
    protected = protect(model, example_input, alpha=alpha, separate_statistics=False, **options)
    for path, layer in protected_layers(protected).items():
        protected.set_submodule(path, DeepIPRNorm(
            layer.norm, layer.producer, layer.passport_gamma, layer.passport_beta, layer.signature, scheme=scheme,
            producer_path=layer.producer_path, message_bits=int(layer.message_bits),
            message_offset=int(layer.message_offset), alpha=alpha, margin=layer.margin,
        ))
    return protected


def release_deepipr(model: nn.Module) -> nn.Module:
    """What a DeepIPR owner ships: V2 the public branch (the original architecture, via ``strip``);
    V1 the passport model itself (passports included, norms without affine parameters)."""
    schemes = {layer.scheme for layer in protected_layers(model).values() if isinstance(layer, DeepIPRNorm)}
    if schemes == {"v1"}:
        return copy.deepcopy(model).eval()
    if schemes == {"v2"}:
        return strip(model)
    raise ConfigError(f"not a DeepIPR model of one scheme (found {sorted(schemes) or 'none'})")
