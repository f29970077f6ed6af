"""Which channels of a model can be moved without changing what it computes.

A norm's channels can be permuted when they reach exactly one Conv (groups 1) or Linear through
channel-wise ops only (activations, pooling, dropout, flatten); per-channel norms (BatchNorm,
InstanceNorm) also allow exact sign flips and positive rescaling of a channel. The obfuscation
attack uses these chains to hide channels, and alignment (align.py) uses them to put them back.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .norm import Layer, along
from .pairing import Pair, trace_graph

__all__ = [
    "Chain",
    "PER_CHANNEL_NORMS",
    "chains_and_trace_error",
    "consumer_columns",
    "flip_channels",
    "norm_tensors",
    "permutable_chains",
    "permute_consumer_inputs",
    "resize_module",
    "set_consumer_columns",
]

_CHANNEL_WISE_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.GELU,
    nn.SiLU,
    nn.ELU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)
_CHANNEL_WISE_FUNCTIONS = {
    F.relu,
    F.relu6,
    F.leaky_relu,
    F.gelu,
    F.silu,
    F.elu,
    torch.relu,
    torch.sigmoid,
    torch.tanh,
    F.dropout,
    F.max_pool1d,
    F.max_pool2d,
    F.max_pool3d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.avg_pool3d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d,
    F.adaptive_max_pool1d,
    F.adaptive_max_pool2d,
    F.adaptive_max_pool3d,
}
PER_CHANNEL_NORMS = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
)


@dataclass(frozen=True)
class Chain:
    """Producer -> norm -> (channel-wise ops) -> the one consumer that reads these channels."""

    pair: Pair
    consumer: str
    flattened: bool


def _flatten_from_channel_dim(node: fx.Node) -> bool:
    if node.op == "call_function" and node.target is torch.flatten:
        start: Any = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        return bool(start == 1)
    if node.op == "call_method" and node.target == "flatten":
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        return bool(start == 1)
    return False


def _spatial_mean(node: fx.Node) -> bool:
    if node.op == "call_method" and node.target in ("mean", "amax", "sum"):
        dims: Any = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        dims = (dims,) if isinstance(dims, int) else tuple(dims or ())
        return bool(dims) and all(d >= 2 for d in dims)
    return False


def permutable_chains(model: nn.Module, pairs: list[Pair]) -> list[Chain]:
    """The pairs whose channels can be permuted without changing the function (see module docstring)."""
    return chains_and_trace_error(model, pairs)[0]


def chains_and_trace_error(model: nn.Module, pairs: list[Pair]) -> tuple[list[Chain], str | None]:
    """``permutable_chains`` and, when torch.fx cannot trace ``model``, why (then no chain is known:
    permute nothing rather than guess, and let the caller say so). Producer pairs only: a
    consumer-paired norm reads a residual stream that many layers write."""
    pairs = [pair for pair in pairs if pair.role == "producer"]
    try:
        graph = trace_graph(model)
    except Exception as error:  # fx raises many kinds; all mean "cannot trace here"
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return [], f"{type(error).__name__}: {first}"
    modules = dict(model.named_modules())
    by_target = {str(n.target): n for n in graph.nodes if n.op == "call_module"}
    chains = []
    for pair in pairs:
        start = by_target.get(pair.norm)
        if start is None:
            continue
        consumers, flattened, ok = set(), False, True
        frontier = list(start.users)
        while frontier and ok:
            node = frontier.pop()
            if node.op == "call_module":
                module = modules[str(node.target)]
                if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and module.groups == 1:
                    consumers.add(str(node.target))
                    continue
                if isinstance(module, nn.Linear):
                    consumers.add(str(node.target))
                    continue
                if (
                    isinstance(module, _CHANNEL_WISE_MODULES)
                    or isinstance(module, nn.Flatten)
                    and module.start_dim == 1
                ):
                    flattened |= isinstance(module, nn.Flatten)
                    frontier.extend(node.users)
                    continue
                ok = False
            elif node.op == "call_function" and node.target in _CHANNEL_WISE_FUNCTIONS or _spatial_mean(node):
                frontier.extend(node.users)
            elif _flatten_from_channel_dim(node):
                flattened = True
                frontier.extend(node.users)
            elif node.op == "call_function" and node.target is operator.getitem:
                ok = False
            else:
                ok = False
        if ok and len(consumers) == 1:
            chains.append(Chain(pair, consumers.pop(), flattened))
    return chains, None


@torch.no_grad()
def flip_channels(producer: Layer, norm: Layer, sign: torch.Tensor) -> None:
    """Multiply each output channel of ``producer`` by ``sign`` (+1 or -1) and undo it in its
    per-channel ``norm`` (weight and running mean): the same function, each channel's response
    to any input negated where ``sign`` is -1."""
    producer.weight.mul_(along(sign, producer.weight.dim()).to(producer.weight))
    if producer.bias is not None:
        producer.bias.mul_(sign.to(producer.bias))
    norm.weight.mul_(sign.to(norm.weight))
    if getattr(norm, "running_mean", None) is not None:
        norm.running_mean.mul_(sign.to(norm.running_mean))


def norm_tensors(norm: Layer) -> list[torch.Tensor]:
    return [
        t
        for t in (
            norm.weight,
            norm.bias,
            getattr(norm, "running_mean", None),
            getattr(norm, "running_var", None),
        )
        if t is not None
    ]


def permute_consumer_inputs(consumer: Layer, chain: Chain, order: torch.Tensor) -> None:
    """Reorder the consumer's input channels (blocks of them after a flatten) as ``order`` says."""
    weight = consumer.weight
    if isinstance(consumer, nn.Linear) and weight.shape[1] != chain.pair.channels:
        blocks = weight.view(weight.shape[0], chain.pair.channels, -1)
        weight.copy_(blocks[:, order].reshape_as(weight))
    else:
        weight.copy_(weight[:, order])


def permute_chain(modules: dict[str, Layer], chain: Chain, order: torch.Tensor) -> None:
    """Put the chain's channels in ``order``: the producer's rows, the norm's tensors and the
    consumer's input columns move together, so the function stays the same."""
    producer, norm = modules[chain.pair.producer], modules[chain.pair.norm]
    producer.weight.copy_(producer.weight[order])
    if producer.bias is not None:
        producer.bias.copy_(producer.bias[order])
    for tensor in norm_tensors(norm):
        tensor.copy_(tensor[order])
    permute_consumer_inputs(modules[chain.consumer], chain, order)


# a module's width attributes and the weight dimension each one reads
_WIDTH_ATTRIBUTES = (
    ("out_channels", 0),
    ("out_features", 0),
    ("num_features", 0),
    ("in_channels", 1),
    ("in_features", 1),
)


@torch.no_grad()
def resize_module(module: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Give ``module`` the parameters and buffers in ``tensors`` (by local name), whatever their
    widths, and update its width attributes to match; the module keeps its class and hooks."""
    for name, value in tensors.items():
        if name in module._parameters:
            parameter = module._parameters[name]
            trainable = parameter.requires_grad if parameter is not None else True
            module._parameters[name] = nn.Parameter(value.clone(), requires_grad=trainable)
        elif name in module._buffers:
            module._buffers[name] = value.clone()
    weight = tensors.get("weight", tensors.get("running_mean"))
    if weight is None:
        return
    for attribute, dim in _WIDTH_ATTRIBUTES:
        if hasattr(module, attribute) and weight.dim() > dim:
            groups = getattr(module, "groups", 1) if attribute == "in_channels" else 1
            setattr(module, attribute, int(weight.shape[dim]) * groups)


def consumer_columns(consumer: Layer, chain: Chain, channels: int) -> torch.Tensor:
    """The consumer's weight as ``(out, channels, rest)``: one slice per input channel (a flattened
    channel reaches a Linear as a block of columns)."""
    return consumer.weight.detach().reshape(consumer.weight.shape[0], channels, -1)


def set_consumer_columns(consumer: Layer, columns: torch.Tensor, flattened: bool) -> None:
    """Write ``(out, channels, rest)`` columns back as the consumer's weight, resizing it."""
    if isinstance(consumer, nn.Linear):
        weight = columns.reshape(columns.shape[0], -1)
    else:
        weight = columns.reshape(columns.shape[0], columns.shape[1], *consumer.weight.shape[2:])
    resize_module(consumer, {"weight": weight})
