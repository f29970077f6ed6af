"""The schemes ``passportnorm compare`` trains side by side, each registered with what sets it apart:
how it trains its branches by default, how it wraps the model, and how it releases and verifies it."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from torch import nn

from ..key import attach_key, extract_key
from ..protect import protect, strip
from ..registry import Registry
from ..verify import VerificationReport, verify, verify_attached
from .deepipr import protect_deepipr, release_deepipr

__all__ = ["COMPARE_SCHEMES", "SCHEMES", "Scheme"]

# the released model, its verification with the owner's evidence, and the suspect an attacker forges
# passports for (the release with the branch put back); plain has neither
Released = tuple[nn.Module, VerificationReport | None, nn.Module | None]


@dataclass(frozen=True)
class Scheme:
    """How a compared scheme trains (its branch schedule, as published), wraps and releases a model."""

    schedule: str
    wrap: Callable[..., nn.Module]  # (model, example input, protect options) -> the model to train
    release: Callable[[nn.Module, Any], Released]  # (trained model, test split) -> Released


SCHEMES: Registry[Scheme] = Registry("comparison scheme")


def _unchanged(model: nn.Module, example_input: Any, **options: Any) -> nn.Module:
    return model


def _plain_release(model: nn.Module, test: Any) -> Released:
    return model, None, None


def _keyed_release(release: Callable[[nn.Module], nn.Module]) -> Callable[[nn.Module, Any], Released]:
    """Release, then verify with the key extracted from the trained model (pan, DeepIPR V2)."""

    def released(model: nn.Module, test: Any) -> Released:
        plain, key = release(model), extract_key(model)
        return plain, verify(plain, key, data=test), attach_key(plain, key)

    return released


def _v1_release(model: nn.Module, test: Any) -> Released:
    """DeepIPR V1 ships its passports inside the model, so the model itself is what gets verified."""
    released = release_deepipr(model)
    return released, verify_attached(copy.deepcopy(released), data=test), copy.deepcopy(released)


# registration order is the default order of the comparison's rows; pan alternates (the paper),
# DeepIPR V2 backpropagates both branches at once (the authors' code), V1 has only its passport branch
SCHEMES.register("plain")(Scheme("alternate", _unchanged, _plain_release))
SCHEMES.register("deepipr-v1")(Scheme("aware", partial(protect_deepipr, scheme="v1"), _v1_release))
SCHEMES.register("deepipr-v2")(
    Scheme("joint", partial(protect_deepipr, scheme="v2"), _keyed_release(release_deepipr))
)
SCHEMES.register("pan")(Scheme("alternate", protect, _keyed_release(strip)))

COMPARE_SCHEMES = tuple(SCHEMES.names())
