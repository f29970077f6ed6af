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
the passport-aware branch, and an MLP between ``g`` and ``gamma``. Both layers here reuse the
:class:`PassportAwareBranch` machinery (keys, detection, verification, attacks) with those two
pieces swapped, so the comparison isolates the scheme.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from ..attach import attach_branch, detach_branch
from ..aware_statistics import BranchStatistics
from ..branch import PassportAwareBranch, register_branch_kind
from ..errors import ConfigError
from ..key_manifest import KeyLayer
from ..passports import ActivationPassports
from ..protect import protect, protected_layers, strip

__all__ = ["SCHEMES", "DeepIPRBranch", "DeepIPRPassports", "protect_deepipr", "release_deepipr"]

SCHEMES = ("v1", "v2")


class DeepIPRBranch(PassportAwareBranch):
    """A DeepIPR passport layer on one norm: scheme ``v1`` (passports always on) or ``v2``.

    ``gamma, beta = g, b`` (no MLP). V2 substitutes only the affine, so both branches share the
    norm's statistics and update them; V1 substitutes it in every forward, so the norm's own
    affine parameters are never used (V1 has none of its own).
    """

    def __init__(
        self,
        norm: nn.Module,
        producer: nn.Module,
        passport_gamma: Tensor,
        passport_beta: Tensor,
        signature: Tensor,
        *,
        scheme: str,
        producer_path: str,
        message_bits: int = 0,
        message_offset: int = 0,
        alpha: float = 0.1,
        margin: float = 0.1,
    ):
        if scheme not in SCHEMES:
            raise ConfigError(f"unknown DeepIPR scheme {scheme!r}; choose v1 or v2")
        super().__init__(
            norm,
            producer,
            passport_gamma,
            passport_beta,
            signature,
            producer_path=producer_path,
            message_bits=message_bits,
            message_offset=message_offset,
            alpha=alpha,
            margin=margin,
            l2=0.0,
        )
        self.scheme = scheme
        self.branch_kind = f"deepipr-{scheme}"
        self.mlp = nn.Identity()  # DeepIPR uses g and b themselves as gamma and beta
        self.branch_norm = BranchStatistics(
            nn.Identity(), copy=False
        )  # none of its own: the norm's are shared
        if scheme == "v1":  # no affine of its own: the passport-derived one replaces it in every forward
            norm.register_parameter("weight", None)
            norm.register_parameter("bias", None)

    def passport_responses(self) -> Tensor:
        """``(2, C)``: ``g`` and ``b``, each averaged over its passport batch too, as the authors do
        (their passports may hold several samples; ours default to one, where this is the same)."""
        with torch.autocast(device_type=self.passport_gamma.device.type, enabled=False):
            passports = (self.passport_gamma, self.passport_beta)
            return torch.stack([self.responses_of(batch).mean(0) for batch in passports])

    @property
    def passport_mode(self) -> bool:
        return self.scheme == "v1" or bool(self.__dict__["_passport_mode"])

    @passport_mode.setter
    def passport_mode(self, enabled: bool) -> None:
        self.__dict__["_passport_mode"] = enabled  # V1 has no passport-free branch: it stays on

    def extra_repr(self) -> str:
        return f"scheme={self.scheme}, " + super().extra_repr()


class DeepIPRPassports(ActivationPassports):
    """DeepIPR's ``shuffle`` passports, as its authors build them from a pretrained plain model.

    ``inputs`` (the authors draw 20 held-out images) run through ``model`` (pretrained, plain);
    passport channel ``k`` is copied from image ``k mod N`` at a random channel of that image not
    used before, so the images take turns; a 3-channel input (an RGB first layer) takes one
    whole image instead. The passports keep the activations' own scale (the authors rescale
    nothing), unlike the library's activation passports, which start at random passports' scale.
    """

    name = "deepipr"

    def generate(self, activations, channel_dim, generator):
        def choose(count: int, channels: int) -> tuple[Tensor, Tensor]:
            if channels == 3:  # one whole image
                pick = int(torch.randint(0, count, (1,), generator=generator))
                return torch.full((3,), pick), torch.arange(3)
            images = torch.arange(channels) % count
            turn = torch.arange(channels) // count  # how often image k mod N was used before
            unused = torch.stack([torch.randperm(channels, generator=generator) for _ in range(count)])
            return images, unused[images, turn]

        return self.mixed(activations, channel_dim, choose)

    def fit_to(self, passport: Tensor, responses: Tensor, target: float) -> Tensor:
        return passport.clone()


@register_branch_kind("deepipr-v1")
@register_branch_kind("deepipr-v2")
def _from_key(
    norm: nn.Module, producer: nn.Module, parts: dict[str, Tensor], layer: KeyLayer
) -> DeepIPRBranch:
    return DeepIPRBranch(
        norm,
        producer,
        parts["passport_gamma"],
        parts["passport_beta"],
        parts["signature"],
        scheme=layer.branch.split("-", 1)[1],
        producer_path=layer.producer,
        message_bits=int(parts.get("message_bits", torch.tensor(0))),
        message_offset=int(parts.get("message_offset", torch.tensor(0))),
        alpha=layer.alpha,
        margin=layer.margin,
    )


def protect_deepipr(
    model: nn.Module, example_input: Any, scheme: str = "v2", alpha: float = 0.1, **options: Any
) -> nn.Module:
    """A copy of ``model`` with DeepIPR passport layers on the norms ``protect`` would choose.

    ``options`` are :func:`passportnorm.protect`'s (signature, passports, seed, include,
    exclude, pairs, weak_layers): the same pairs, passports and signature layout as passport-
    aware normalization would get from the same call, so schemes differ only in the layer.
    """
    # DeepIPR's other norms keep one set of statistics (its V2 even shares them with the passport branch)
    protected = protect(model, example_input, alpha=alpha, separate_statistics=False, **options)
    for layer in protected_layers(protected).values():
        norm = detach_branch(layer.norm)
        attach_branch(
            norm,
            DeepIPRBranch(
                norm,
                layer.producer,
                layer.passport_gamma,
                layer.passport_beta,
                layer.signature,
                scheme=scheme,
                producer_path=layer.producer_path,
                message_bits=int(layer.message_bits),
                message_offset=int(layer.message_offset),
                alpha=alpha,
                margin=layer.margin,
            ),
        )
    return protected


def release_deepipr(model: nn.Module) -> nn.Module:
    """What a DeepIPR owner ships: V2 the public branch (the original architecture, via ``strip``);
    V1 the passport model itself (passports included, norms without affine parameters)."""
    schemes = {layer.scheme for layer in protected_layers(model).values() if isinstance(layer, DeepIPRBranch)}
    if schemes == {"v1"}:
        return copy.deepcopy(model).eval()
    if schemes == {"v2"}:
        return strip(model)
    raise ConfigError(f"not a DeepIPR model of one scheme (found {sorted(schemes) or 'none'})")
