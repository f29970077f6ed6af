"""Run a model once and record what named submodules receive and return.

Pairing needs the real shapes around each norm; passports need the real input of each producer.
Both come from one forward of the user's ``example_input`` in eval mode without gradients, so
nothing in the model changes (BatchNorm running statistics included).

A module can also be used without being called: torchvision's Swin attention passes its
``qkv.weight`` to ``F.linear`` itself, so no hook on ``qkv`` fires. A torch-function mode sees
those calls and records them as calls of the Linear whose weight they pass.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

__all__ = [
    "Capture",
    "call_model",
    "capture",
    "frozen_copy",
    "frozen_eval",
    "measuring_statistics",
    "same_output",
]


@contextmanager
def measuring_statistics(model: nn.Module) -> Iterator[None]:
    """Inside: ``model`` in eval mode but its statistics-tracking norms in training mode, reset,
    with momentum None (a cumulative average over every call), so only their running statistics
    change; dropout and stochastic depth stay off. After: eval mode and the norms' own momentum."""
    from torch.nn.modules.batchnorm import _NormBase

    model.eval()
    norms = [
        m
        for m in model.modules()
        if isinstance(m, _NormBase) and m.track_running_stats and m.running_mean is not None
    ]
    saved = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.training = True
    try:
        yield
    finally:
        for norm, momentum in zip(norms, saved):
            norm.momentum = momentum
            norm.training = False


def call_model(model: nn.Module, example_input: Any) -> Any:
    """Call ``model`` with ``example_input``: a tensor, a tuple/list of positional args, or a dict of
    kwargs."""
    if isinstance(example_input, Mapping):
        return model(**example_input)
    if isinstance(example_input, (tuple, list)):
        return model(*example_input)
    return model(example_input)


def same_output(before: Any, after: Any) -> bool:
    """Two outputs the same to 1e-4 of their scale: what float rounding through a function-preserving
    edit (a permutation, a fold, a rotation) leaves; False where either is not one tensor."""
    if not isinstance(before, Tensor) or not isinstance(after, Tensor):
        return False
    return torch.allclose(after, before, rtol=1e-4, atol=1e-4 * float(before.abs().amax()))


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


def _note(record: Capture, path: str, tensors: list[Tensor], output: Any) -> None:
    """Count one call of ``path``; keep what its first call received and returned."""
    record.calls[path] = record.calls.get(path, 0) + 1
    if path in record.order:
        return
    record.order.append(path)
    if tensors:
        first = tensors[0]
        record.inputs[path] = first.detach().clone()
        alike = [t for t in tensors[1:] if t.shape == first.shape and t.dtype == first.dtype]
        record.one_input[path] = all(torch.equal(t, first) for t in alike)
    if isinstance(output, tuple) and output and isinstance(output[0], Tensor):
        output = output[0]  # a self-attention's (output, attention weights)
    if isinstance(output, Tensor):
        record.outputs[path] = output.detach().clone()


class _FunctionalLinears(TorchFunctionMode):
    """Records ``F.linear(x, linear.weight, ...)`` called outside ``linear``'s own forward."""

    def __init__(self, record: Capture, linears: dict[int, str], inside: set[str]) -> None:
        super().__init__()
        self.record, self.linears, self.inside = record, linears, inside

    def __torch_function__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        if func is F.linear and len(args) >= 2:
            path = self.linears.get(id(args[1]))
            if path is not None and path not in self.inside:
                _note(self.record, path, [args[0]], output)
        return output


def capture(model: nn.Module, example_input: Any, paths: Iterable[str]) -> Capture:
    """Run ``model`` once (eval, no grad) and record the modules at ``paths``.

    Values are cloned: an in-place op later in the forward cannot change what was recorded.
    """
    modules = dict(model.named_modules())
    record = Capture()
    inside: set[str] = set()  # the watched modules whose forward is running
    handles = []

    def entered(path: str):
        return lambda module, args: inside.add(path)

    def returned(path: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
            inside.discard(path)
            _note(record, path, _tensor_arguments(args, kwargs), output)

        return hook

    watched = list(paths)
    for path in watched:
        handles.append(modules[path].register_forward_pre_hook(entered(path)))
        handles.append(modules[path].register_forward_hook(returned(path), with_kwargs=True))
    linears = {id(modules[p].weight): p for p in watched if isinstance(modules[p], nn.Linear)}
    try:
        with frozen_eval(model), _FunctionalLinears(record, linears, inside):
            call_model(model, example_input)
    finally:
        for handle in handles:
            handle.remove()
    return record
