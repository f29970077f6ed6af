"""Run a model once and record what named submodules receive and return.

Pairing needs the real shapes around each norm; passports need the real input of each producer.
Both come from one forward of the user's ``example_input`` in eval mode without gradients, so
nothing in the model changes (BatchNorm running statistics included).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["Capture", "call_model", "capture", "frozen_copy", "frozen_eval"]


def call_model(model: nn.Module, example_input: Any) -> Any:
    """Call ``model`` with ``example_input``: a tensor, a tuple/list of positional args, or a dict of
    kwargs."""
    if isinstance(example_input, Mapping):
        return model(**example_input)
    if isinstance(example_input, (tuple, list)):
        return model(*example_input)
    return model(example_input)


@contextmanager
def frozen_eval(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no autograd for the duration; every module's own train flag is restored after."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        for module, was_training in modes:
            module.training = was_training


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode with no parameter asking for gradients: what every measurement of
    evidence runs on, so the same model gives the same bits, accuracies and trigger answers however
    it was handed over (a model left in training mode answers with batch statistics and dropout)."""
    frozen = copy.deepcopy(model).eval()
    for parameter in frozen.parameters():
        parameter.requires_grad_(False)
    return frozen


@dataclass
class Capture:
    """First input and output of each watched module, how often it was called, and in which order.

    ``one_input`` says whether every tensor argument shaped like the first equals it (a
    self-attention called as ``attn(x, x, x)``, not a cross-attention): pairing a norm with its
    consumer needs to know the consumer reads nothing else of that shape.
    """

    inputs: dict[str, Tensor] = field(default_factory=dict)
    outputs: dict[str, Tensor] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)  # paths by first call
    one_input: dict[str, bool] = field(default_factory=dict)


def _tensor_arguments(args: tuple, kwargs: dict[str, Any]) -> list[Tensor]:
    return [a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)]


def capture(model: nn.Module, example_input: Any, paths: Iterable[str]) -> Capture:
    """Run ``model`` once (eval, no grad) and record the modules at ``paths``.

    Values are cloned: an in-place op later in the forward cannot change what was recorded.
    """
    modules = dict(model.named_modules())
    record = Capture()
    handles = []

    def hook_for(path: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
            record.calls[path] = record.calls.get(path, 0) + 1
            if path in record.order:
                return
            record.order.append(path)
            tensors = _tensor_arguments(args, kwargs)
            if tensors:
                first = tensors[0]
                record.inputs[path] = first.detach().clone()
                alike = [t for t in tensors[1:] if t.shape == first.shape and t.dtype == first.dtype]
                record.one_input[path] = all(torch.equal(t, first) for t in alike)
            if isinstance(output, Tensor):
                record.outputs[path] = output.detach().clone()

        return hook

    for path in paths:
        handles.append(modules[path].register_forward_hook(hook_for(path), with_kwargs=True))
    try:
        with frozen_eval(model):
            call_model(model, example_input)
    finally:
        for handle in handles:
            handle.remove()
    return record
