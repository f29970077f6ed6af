"""Function-preserving obfuscation: permute, sign-flip and rescale channels of the released model.

Threat model: the attacker has the released weights and the architecture, no data and no key.
Each transform leaves the released function unchanged (up to float rounding, and the norm's
``eps`` for rescaling) but moves or flips what each channel's passport response reads, so a
verification that reads bit i from channel i sees something else.

- permute: for a producer whose norm output reaches exactly one Conv (groups 1) or Linear through
  channel-wise ops only (activations, pooling, dropout, flatten), reorder the producer's output
  channels, the norm's parameters and statistics, and the consumer's input channels alike;
- flip: negate a channel's producer weights and bias, and its norm weight and running mean
  (BatchNorm, InstanceNorm: per-channel statistics make this exact);
- rescale: multiply a channel's producer weights and bias by a > 0, its running mean by a and its
  running variance by a^2.
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data.triggers import TriggerSet
from ..errors import ConfigError
from ..evaluation import accuracy
from ..key import OwnerKey
from ..pairing import Pair, find_pairs
from ..verify import VerdictRule, verify

THREAT_MODEL = (
    "attacker: released weights and architecture; no data, no key. Action: function-preserving "
    "channel {what}. Owner: verifies the obfuscated model with the key (channels read in key order)."
)

_CHANNEL_WISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.ELU, nn.Sigmoid, nn.Tanh, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)
_CHANNEL_WISE_FUNCTIONS = {
    F.relu, F.relu6, F.leaky_relu, F.gelu, F.silu, F.elu, torch.relu, torch.sigmoid, torch.tanh, F.dropout,
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
    F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d,
}
_PER_CHANNEL_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


@dataclass(frozen=True)
class Chain:
    """Producer -> norm -> (channel-wise ops) -> the one consumer that reads these channels."""

    pair: Pair
    consumer: str
    flattened: bool


def _flatten_from_channel_dim(node: fx.Node) -> bool:
    if node.op == "call_function" and node.target is torch.flatten:
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        return start == 1
    if node.op == "call_method" and node.target == "flatten":
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        return start == 1
    return False


def _spatial_mean(node: fx.Node) -> bool:
    if node.op == "call_method" and node.target in ("mean", "amax", "sum"):
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        dims = (dims,) if isinstance(dims, int) else tuple(dims or ())
        return bool(dims) and all(d >= 2 for d in dims)
    return False


def permutable_chains(model: nn.Module, pairs: list[Pair]) -> list[Chain]:
    """The pairs whose channels can be permuted without changing the function (see module docstring)."""
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception:  # untraceable: permute nothing rather than guess
        return []
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
                if isinstance(module, _CHANNEL_WISE_MODULES) or isinstance(module, nn.Flatten) and module.start_dim == 1:
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
    return chains


def _norm_tensors(norm: nn.Module) -> list[torch.Tensor]:
    return [t for t in (norm.weight, norm.bias, getattr(norm, "running_mean", None), getattr(norm, "running_var", None)) if t is not None]


@torch.no_grad()
def obfuscate(
    released: nn.Module,
    example_input: torch.Tensor,
    permute: bool = True,
    flip: float = 0.5,
    rescale: tuple[float, float] | None = (0.5, 2.0),
    seed: int = 0,
) -> tuple[nn.Module, dict[str, Any]]:
    """A function-preserving obfuscated copy of ``released`` and what was changed where."""
    if not 0.0 <= flip <= 1.0:
        raise ConfigError(f"flip share {flip} must be in [0, 1]")
    if rescale is not None and not 0 < rescale[0] <= rescale[1]:
        raise ConfigError(f"rescale range {rescale} must be positive and ordered")
    model = copy.deepcopy(released).eval()
    modules = dict(model.named_modules())
    pairs = find_pairs(model, example_input).pairs
    gen = torch.Generator().manual_seed(seed)
    changed: dict[str, Any] = {"permuted": [], "flipped": {}, "rescaled": [], "skipped": {}}
    for pair in pairs:
        producer, norm = modules[pair.producer], modules[pair.norm]
        if not isinstance(norm, _PER_CHANNEL_NORMS):
            changed["skipped"][pair.norm] = f"{type(norm).__name__} mixes channels in its statistics: flip/rescale would change the function"
            continue
        channels = pair.channels
        if flip > 0:
            chosen = torch.rand(channels, generator=gen) < flip
            sign = torch.where(chosen, -1.0, 1.0)
            producer.weight.mul_(sign.view(-1, *[1] * (producer.weight.dim() - 1)).to(producer.weight))
            if producer.bias is not None:
                producer.bias.mul_(sign.to(producer.bias))
            norm.weight.mul_(sign.to(norm.weight))
            if getattr(norm, "running_mean", None) is not None:
                norm.running_mean.mul_(sign.to(norm.running_mean))
            changed["flipped"][pair.norm] = int(chosen.sum())
        if rescale is not None:
            low, high = rescale
            scale = low * (high / low) ** torch.rand(channels, generator=gen)  # log-uniform
            producer.weight.mul_(scale.view(-1, *[1] * (producer.weight.dim() - 1)).to(producer.weight))
            if producer.bias is not None:
                producer.bias.mul_(scale.to(producer.bias))
            if getattr(norm, "running_mean", None) is not None:
                norm.running_mean.mul_(scale.to(norm.running_mean))
                norm.running_var.mul_(scale.pow(2).to(norm.running_var))
            changed["rescaled"].append(pair.norm)
    if permute:
        for chain in permutable_chains(model, pairs):
            producer, norm = modules[chain.pair.producer], modules[chain.pair.norm]
            consumer = modules[chain.consumer]
            perm = torch.randperm(chain.pair.channels, generator=gen)
            producer.weight.copy_(producer.weight[perm])
            if producer.bias is not None:
                producer.bias.copy_(producer.bias[perm])
            for tensor in _norm_tensors(norm):
                tensor.copy_(tensor[perm])
            weight = consumer.weight
            if isinstance(consumer, nn.Linear) and weight.shape[1] != chain.pair.channels:
                blocks = weight.view(weight.shape[0], chain.pair.channels, -1)
                weight.copy_(blocks[:, perm].reshape_as(weight))
            else:
                weight.copy_(weight[:, perm])
            changed["permuted"].append(chain.pair.norm)
    return model, changed


@torch.no_grad()
def max_output_difference(a: nn.Module, b: nn.Module, data: Dataset) -> float:
    a.eval(), b.eval()
    return max(float((a(x) - b(x)).abs().max()) for x, _ in DataLoader(data, batch_size=256))


def obfuscation_attack(
    released: nn.Module,
    key: OwnerKey,
    owner_test: Dataset,
    example_input: torch.Tensor,
    seed: int = 0,
    trigger: TriggerSet | None = None,
    rule: VerdictRule = VerdictRule(),
) -> dict[str, Any]:
    """Each transform alone and all together: function change, attacker accuracy, owner verification."""
    variants = {
        "permute": dict(permute=True, flip=0.0, rescale=None),
        "flip half": dict(permute=False, flip=0.5, rescale=None),
        "rescale 0.5-2": dict(permute=False, flip=0.0, rescale=(0.5, 2.0)),
        "all three": dict(permute=True, flip=0.5, rescale=(0.5, 2.0)),
    }
    rows = []
    models = {}
    for name, options in variants.items():
        model, changed = obfuscate(released, example_input, seed=seed, **options)
        report = verify(model, key, data=owner_test, trigger=trigger, rule=rule)
        rows.append(
            {
                "transform": name,
                "max_output_difference": max_output_difference(released, model, owner_test),
                "attacker_accuracy": accuracy(model, owner_test),
                "signature_detection": report.signature_detection,
                "signature_p_value": report.signature_p_value,
                "passport_aware_accuracy": report.passport_aware_accuracy,
                "trigger_accuracy": report.trigger_accuracy,
                "verified": report.verified,
                "layers_permuted": len(changed["permuted"]),
                "layers_skipped": changed["skipped"],
            }
        )
        models[name] = model
    return {
        "attack": "obfuscate",
        "threat_model": THREAT_MODEL.format(what="permutation, sign flips and positive rescaling"),
        "rows": rows,
        "model": models["all three"],
    }
