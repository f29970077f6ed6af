"""Passport generators: the secret inputs whose producer responses carry the signature.

A passport for a producer is one sample shaped like that producer's real input (batch 1). Two
are made per protected layer, one for gamma and one for beta. Three kinds, as in the passport
literature:

- ``random``: i.i.d. U(-1, 1), seeded.
- ``image``: the producer's input activations for two real inputs run through a plain model.
- ``shuffle``: every channel taken from a random real input's activations at a random channel,
  so a passport looks natural channel by channel but matches no single input.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .capture import capture
from .errors import PassportError

__all__ = [
    "PassportGenerator",
    "RandomPassports",
    "ImagePassports",
    "ShufflePassports",
    "make_passport_generator",
]


class PassportGenerator(ABC):
    """Makes the (gamma, beta) passport pair of one producer."""

    name: str = "custom"

    def activations(
        self,
        model: nn.Module,
        example_input: Any,
        producer_paths: Sequence[str],
        captured: Mapping[str, Tensor],
    ) -> Mapping[str, Tensor]:
        """The producer inputs to draw from; by default those ``protect`` captured from ``example_input``."""
        return captured

    @abstractmethod
    def generate(self, activations: Tensor, channel_dim: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Two passports shaped ``(1, *activations.shape[1:])`` from a producer's input batch.

        ``channel_dim`` is where that input keeps its channels (1 for conv, the last axis for Linear).
        """

    def config(self) -> dict[str, Any]:
        """What to record about this generator so a run can be described and repeated."""
        return {"kind": self.name}


class RandomPassports(PassportGenerator):
    """U(-1, 1) passports; only the shape of the real input is used."""

    name = "random"

    def generate(self, activations: Tensor, channel_dim: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        shape = (2, *activations.shape[1:])
        draws = torch.rand(shape, generator=generator, dtype=torch.float32) * 2 - 1
        draws = draws.to(device=activations.device, dtype=activations.dtype)
        return draws[0:1].clone(), draws[1:2].clone()


class _ActivationPassports(PassportGenerator):
    """Shared by the kinds built from real activations: where those activations come from."""

    def __init__(self, inputs: Any = None, model: nn.Module | None = None):
        self.inputs = inputs
        self.model = model

    def activations(self, model, example_input, producer_paths, captured):
        if self.inputs is None and self.model is None:
            return captured
        source = self.model if self.model is not None else model
        missing = [p for p in producer_paths if p not in dict(source.named_modules())]
        if missing:
            raise PassportError(
                f"{self.name} passports: the passport model has no module {missing[0]!r}; "
                "give a model with the same module paths as the protected one"
            )
        inputs = self.inputs if self.inputs is not None else example_input
        try:
            return capture(source, inputs, producer_paths).inputs
        except Exception as error:
            raise PassportError(
                f"{self.name} passports: running the passport inputs through {type(source).__name__} failed "
                f"({type(error).__name__}: {error}); give inputs the passport model accepts"
            ) from error

    @staticmethod
    def _need_several(activations: Tensor, kind: str) -> int:
        count = activations.shape[0]
        if count < 2:
            raise PassportError(
                f"{kind} passports need at least 2 real inputs, got a batch of {count}; pass a larger "
                f"example_input or {kind.capitalize()}Passports(inputs=batch)"
            )
        return count


class ImagePassports(_ActivationPassports):
    """Activations of two distinct real inputs (chosen with the seed) at the producer's input.

    ``inputs``: real inputs (default: ``protect``'s ``example_input``, which then needs a batch
    of at least 2). ``model``: the plain model to run them through (default: the model being
    protected, before protection); it must have the same module paths.
    """

    name = "image"

    def generate(self, activations, channel_dim, generator):
        count = self._need_several(activations, self.name)
        first, second = torch.randperm(count, generator=generator)[:2].tolist()
        return activations[first : first + 1].clone(), activations[second : second + 1].clone()


class ShufflePassports(_ActivationPassports):
    """Each channel copied from a random input's activation at a random (permuted) channel."""

    name = "shuffle"

    def generate(self, activations, channel_dim, generator):
        count = self._need_several(activations, self.name)
        by_channel = activations.movedim(channel_dim, 1)
        channels = by_channel.shape[1]
        passports = []
        for _ in range(2):
            images = torch.randint(0, count, (channels,), generator=generator).to(activations.device)
            sources = torch.randperm(channels, generator=generator).to(activations.device)
            mixed = by_channel[images, sources].unsqueeze(0)
            passports.append(mixed.movedim(1, channel_dim).contiguous())
        return passports[0], passports[1]


_KINDS = {"random": RandomPassports, "image": ImagePassports, "shuffle": ShufflePassports}


def make_passport_generator(spec: "str | PassportGenerator") -> PassportGenerator:
    """A generator from its name (``random``, ``image``, ``shuffle``) or an instance as it is."""
    if isinstance(spec, PassportGenerator):
        return spec
    if isinstance(spec, str) and spec in _KINDS:
        return _KINDS[spec]()
    raise PassportError(f"unknown passport kind {spec!r}; choose one of {', '.join(_KINDS)} or pass a PassportGenerator")
