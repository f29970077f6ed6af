"""Weight quantization: the thief serves an int8 or fp16 copy of the release.

Threat model: the attacker has the released weights and architecture and a few unlabelled inputs
(for calibration), no key. ``int8-dynamic`` quantizes the Linear layers' weights (torch's dynamic
quantization), ``int8-static`` quantizes every conv and linear layer per channel with activations
calibrated on the attacker's inputs (torch.fx graph mode, which folds each BatchNorm into its
conv: the norm disappears and the filter is scaled by gamma / sigma), ``fp16`` rounds every
weight to half precision.

For verification the quantized model is dequantized back into the original architecture: each
quantized weight becomes a float weight again, and a norm folded into its producer becomes an
identity norm carrying the folded shift. A folded filter is a per-channel rescaled (and, for a
negative gamma, sign-flipped) copy, which ``verify --reference`` undoes (align.py).

The int8 paths use ``torch.ao.quantization``: deprecated in favour of torchao's pt2e flow, but
still shipped in torch 2.13 with the CPU int8 kernels that served models have used for years, and
no extra dependency; its deprecation warning is silenced here, nowhere else.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..data.registry import first_inputs
from ..data.triggers import TriggerSet
from ..errors import ConfigError
from ..evaluation import accuracy
from ..key import OwnerKey
from ..norm import Layer
from ..pairing import find_pairs
from ..verify import VerdictRule
from .evidence import owner_row
from .registry import AttackContext, AttackResult, Option, register_attack

QUANTIZE_MODES = ("int8-dynamic", "int8-static", "fp16")

THREAT_MODEL = (
    "attacker: released weights and architecture, a few unlabelled inputs for calibration; no key. "
    "Action: {mode} quantization. Owner: verifies the model dequantized back into the original "
    "architecture, aligned to the owner's release."
)


@torch.no_grad()
def quantize(model: nn.Module, mode: str, calibration: torch.Tensor) -> nn.Module:
    """The quantized model a thief would serve (CPU: torch's int8 kernels are CPU kernels)."""
    model = copy.deepcopy(model).cpu().eval()
    if mode == "fp16":
        return model.half()
    if mode not in QUANTIZE_MODES:
        raise ConfigError(f"unknown quantization mode {mode!r}; choose one of {', '.join(QUANTIZE_MODES)}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if mode == "int8-dynamic":
            return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
        return _int8_static(model, calibration)


def _int8_static(model: nn.Module, calibration: torch.Tensor) -> nn.Module:
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    try:
        prepared = prepare_fx(model, get_default_qconfig_mapping("x86"), example_inputs=(calibration[:2],))
    except Exception as error:  # fx raises many kinds; all mean "cannot trace this model"
        raise ConfigError(
            f"int8-static quantization needs a model torch.fx can trace: {type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}"
        ) from error
    for start in range(0, len(calibration), 64):
        prepared(calibration[start : start + 64])
    return convert_fx(prepared)


@torch.no_grad()
def dequantize_into(original: nn.Module, quantized: nn.Module, example: torch.Tensor) -> nn.Module:
    """``original``'s architecture with ``quantized``'s weights as floats; folded norms become identities
    that carry the folded shift (see the module docstring)."""
    restored = copy.deepcopy(original).cpu().eval()
    if any(p.dtype == torch.float16 for p in quantized.parameters()):
        restored.load_state_dict({k: v.float() for k, v in quantized.state_dict().items()})
        return restored
    modules, present = dict(restored.named_modules()), dict(quantized.named_modules())
    pairs = find_pairs(restored, example).producer_pairs
    folded = {p.producer: p.norm for p in pairs if p.norm not in present}
    for name, module in present.items():
        if not callable(getattr(module, "weight", None)) or name not in modules:
            continue
        target, bias = modules[name], module.bias()
        target.weight.copy_(module.weight().dequantize().reshape(target.weight.shape))
        if name in folded:
            _identity_norm(
                modules[folded[name]], bias if bias is not None else torch.zeros(target.weight.shape[0])
            )
            if target.bias is not None:
                target.bias.zero_()
        elif target.bias is not None and bias is not None:
            target.bias.copy_(bias)
    return restored


def _identity_norm(norm: Layer, shift: torch.Tensor) -> None:
    """The norm as ``x + shift`` in eval mode: what is left of it once folded into its producer."""
    norm.running_mean.zero_()
    norm.running_var.fill_(1.0 - norm.eps)
    if norm.weight is not None:
        norm.weight.fill_(1.0)
        norm.bias.copy_(shift)
    else:
        norm.running_mean.copy_(-shift)


def quantize_attack(
    released: nn.Module,
    key: OwnerKey,
    owner_test: Dataset,
    calibration: torch.Tensor,
    modes: tuple[str, ...] = QUANTIZE_MODES,
    trigger: TriggerSet | None = None,
    rule: VerdictRule = VerdictRule(),
) -> dict[str, Any]:
    """Quantize in each mode; rows with the served model's accuracy and the owner's verdict on it."""
    rows, restored = [], None
    for mode in modes:
        served = quantize(released, mode, calibration)
        # fp16 serving casts what it is sent to half, token ids excepted (an embedding reads them as ids)
        inputs_of = (lambda x: x.half() if x.is_floating_point() else x) if mode == "fp16" else (lambda x: x)
        served_accuracy = accuracy(_Cast(served, inputs_of), owner_test)
        restored = dequantize_into(released, served, calibration[:8])
        rows.append(
            {
                "mode": mode,
                "served_accuracy": served_accuracy,
                **owner_row(restored, key, owner_test, released, trigger, rule),
            }
        )
    return {
        "attack": "quantize",
        "threat_model": THREAT_MODEL.format(mode=", ".join(modes)),
        "rows": rows,
        "model": restored,
    }


class _Cast(nn.Module):
    """Feeds a half-precision model half-precision inputs; answers in float for the accuracy count."""

    def __init__(self, model: nn.Module, cast):
        super().__init__()
        self.model, self.cast = model, cast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.cast(x)).float()


@register_attack(
    "quantize",
    "quantize the released model (int8 dynamic, int8 static, fp16) and dequantize it back",
    options=(
        Option(
            "quantize",
            "comma-separated modes of int8-dynamic, int8-static, fp16; model/ holds the last",
            str,
            list(QUANTIZE_MODES),
            listed=True,
        ),
    ),
)
def run_quantize(context: AttackContext) -> AttackResult:
    modes = tuple(context.settings["quantize"])
    attacker = context.attacker
    report = quantize_attack(
        context.released,
        context.key,
        context.data.test,
        first_inputs(attacker, 256),
        modes=modes,
        trigger=context.trigger,
        rule=context.rule,
    )
    model_is = f"the {modes[-1]} model dequantized into the original architecture"
    return AttackResult.of(report, model=report.pop("model"), model_is=model_is)
