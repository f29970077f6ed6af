"""Passport generators: the secret inputs whose producer responses carry the signature.

A passport for a producer is one sample shaped like that producer's real input (batch 1). Two
are made per protected layer, one for gamma and one for beta. Three kinds, as in the passport
literature:

- ``random``: i.i.d. U(-1, 1), seeded.
- ``image``: the producer's input activations for two real inputs run through a plain model.
- ``shuffle``: every channel taken from a random real input's activations at a random channel,
  so a passport looks natural channel by channel but matches no single input.

Activations are captured from a *calibrated* copy of the plain model: one train-mode forward of
the real inputs without gradients sets every norm's running statistics to theirs first. On an
untrained deep model the statistics are still mean 0, variance 1, so eval-mode activations
blow up or vanish with depth (torchvision resnet50 reached NaN within 6 alternating steps and
efficientnet_b0's signature never moved, issue 16). Each activation passport is then scaled by
one positive factor so that the producer's initial responses to it have the root mean square of
its responses to a U(-1, 1) input, the scale random passports start at
(:meth:`PassportGenerator.fit_to`): every layer starts where random passports, measured stable
on every model of docs/COVERAGE.md, start, whatever its depth or its input's statistics. Weak
layers (grayscale, RGB or xyz inputs) start at the sign loss's margin instead (protect.py).

"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .capture import call_model, capture, measuring_statistics
from .errors import PassportError
from .registry import Registry

__all__ = [
    "PassportGenerator",
    "RandomPassports",
    "ActivationPassports",
    "ImagePassports",
    "ShufflePassports",
    "calibrated_copy",
    "make_passport_generator",
    "PASSPORT_KINDS",
    "PASSPORTS",
]


def calibrated_copy(model: nn.Module, inputs: Any) -> nn.Module:
    """A copy of ``model`` whose running statistics are those of ``inputs`` (the model is untouched).

    Only the norms run in training mode (momentum None: the statistics of this one batch), so
    dropout and stochastic depth stay off and nothing but the copy's statistics change.
    """
    twin = copy.deepcopy(model)
    with torch.no_grad(), measuring_statistics(twin):
        call_model(twin, inputs)
    return twin


def _batch_of(inputs: Any) -> Tensor:
    """The first tensor of a model input (a tensor, a tuple/list of them, or a dict of keyword tensors)."""
    if isinstance(inputs, Mapping):
        inputs = list(inputs.values())
    if isinstance(inputs, (tuple, list)):
        return next((t for t in inputs if isinstance(t, Tensor)), torch.empty(0))
    return inputs


PASSPORTS: Registry[type[PassportGenerator]] = Registry("passport kind", error=PassportError)


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
    def generate(
        self, activations: Tensor, channel_dim: int, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Two passports shaped ``(1, *activations.shape[1:])`` from a producer's input batch.

        ``channel_dim`` is where that input keeps its channels (1 for conv, the last axis for Linear).
        """

    def fit_to(self, passport: Tensor, responses: Tensor, target: float) -> Tensor:
        """The passport to use, given the producer's initial ``responses`` to it; by default as drawn."""
        return passport

    def config(self) -> dict[str, Any]:
        """What to record about this generator so a run can be described and repeated."""
        return {"kind": self.name}


@PASSPORTS.register("random")
class RandomPassports(PassportGenerator):
    """U(-1, 1) passports; only the shape of the real input is used."""

    name = "random"

    def generate(
        self, activations: Tensor, channel_dim: int, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        shape = (2, *activations.shape[1:])
        draws = torch.rand(shape, generator=generator, dtype=torch.float32) * 2 - 1
        draws = draws.to(device=activations.device, dtype=activations.dtype)
        return draws[0:1].clone(), draws[1:2].clone()


class ActivationPassports(PassportGenerator):
    """Shared by the kinds built from real activations: where those activations come from."""

    def __init__(self, inputs: Any = None, model: nn.Module | None = None):
        self.inputs = inputs
        self.model = model

    def activations(self, model, example_input, producer_paths, captured):
        source = self.model if self.model is not None else model
        missing = [p for p in producer_paths if p not in dict(source.named_modules())]
        if missing:
            raise PassportError(
                f"{self.name} passports: the passport model has no module {missing[0]!r}; "
                "give a model with the same module paths as the protected one"
            )
        inputs = self.inputs if self.inputs is not None else example_input
        self._need_several(
            _batch_of(inputs), self.name
        )  # before calibrating: one input has no batch statistics
        try:
            return capture(calibrated_copy(source, inputs), inputs, producer_paths).inputs
        except Exception as error:
            raise PassportError(
                f"{self.name} passports: running the passport inputs through {type(source).__name__} failed "
                f"({type(error).__name__}: {error}); give inputs the passport model accepts"
            ) from error

    def fit_to(self, passport: Tensor, responses: Tensor, target: float) -> Tensor:
        """``passport`` times the one positive factor that makes its responses' RMS equal ``target``.

        Chosen on measurement: the gradient the branch sends into the producer grows with the
        passport's square. At their natural scale (initial responses 0.2-0.5 RMS) or at the sign
        loss's margin (0.1; issue 16's choice) activation passports start 2-10x above random ones
        (0.01-0.05), and AlexNet x0.25 on mnist5k reached NaN within 15 alternating steps at lr 0.05
        (issue 17); at the random passports' scale it trains. Centring or per-channel scaling
        instead removes what 1x1 convs and one-channel first layers respond to (their ``g`` is the
        filter times the channel means) or inflates near-dead channels. One factor keeps the
        activation's pattern and signs, and so the bits it spells.
        """
        rms = float(responses.pow(2).mean().sqrt())
        return passport * (target / rms) if rms > 0 else passport.clone()

    def mixed(self, activations: Tensor, channel_dim: int, choose) -> tuple[Tensor, Tensor]:
        """Two passports whose channel ``k`` is ``activations[images[k], sources[k]]``, with
        ``images, sources = choose(count, channels)`` drawn afresh for each passport."""
        count = self._need_several(activations, self.name)
        by_channel = activations.movedim(channel_dim, 1)
        passports = []
        for _ in range(2):
            images, sources = choose(count, by_channel.shape[1])
            mixed = by_channel[images.to(activations.device), sources.to(activations.device)].unsqueeze(0)
            passports.append(mixed.movedim(1, channel_dim).contiguous())
        return passports[0], passports[1]

    @staticmethod
    def _need_several(activations: Tensor, kind: str) -> int:
        count = activations.shape[0]
        if count < 2:
            raise PassportError(
                f"{kind} passports need at least 2 real inputs, got a batch of {count}; pass a larger "
                f"example_input or {kind.capitalize()}Passports(inputs=batch)"
            )
        return count


@PASSPORTS.register("image")
class ImagePassports(ActivationPassports):
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


@PASSPORTS.register("shuffle")
class ShufflePassports(ActivationPassports):
    """Each channel copied from a random input's activation at a random (permuted) channel."""

    name = "shuffle"

    def generate(self, activations, channel_dim, generator):
        def choose(count: int, channels: int) -> tuple[Tensor, Tensor]:
            images = torch.randint(0, count, (channels,), generator=generator)
            return images, torch.randperm(channels, generator=generator)

        return self.mixed(activations, channel_dim, choose)


PASSPORT_KINDS = tuple(PASSPORTS.names())  # the names make_passport_generator accepts


def make_passport_generator(spec: str | PassportGenerator) -> PassportGenerator:
    """A generator from its name (``random``, ``image``, ``shuffle``) or an instance as it is."""
    if isinstance(spec, PassportGenerator):
        return spec
    if isinstance(spec, str) and spec in PASSPORTS:
        return PASSPORTS[spec]()
    raise PassportError(
        f"unknown passport kind {spec!r}; choose one of {', '.join(PASSPORTS.names())} or pass a "
        "PassportGenerator"
    )
