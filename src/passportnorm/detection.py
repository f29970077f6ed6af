"""Read the signature back from a protected model: weights and passports only, no data.

``sign(g)`` of every protected layer is compared with that layer's signature bits; the message
part is decoded back to text so a reader sees the owner's words, damaged bits and all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .protect import _require_protected
from .signature import Signature

__all__ = ["LayerDetection", "DetectionReport", "signature_detection", "extract_bits"]


@dataclass(frozen=True)
class LayerDetection:
    matched: int
    total: int

    @property
    def rate(self) -> float:
        return self.matched / self.total if self.total else 0.0


@dataclass
class DetectionReport:
    """Per-layer and overall agreement between ``sign(g)`` and the signature."""

    layers: dict[str, LayerDetection] = field(default_factory=dict)
    message: str | None = None
    message_bit_errors: int = 0

    @property
    def matched(self) -> int:
        return sum(d.matched for d in self.layers.values())

    @property
    def total(self) -> int:
        return sum(d.total for d in self.layers.values())

    @property
    def rate(self) -> float:
        return self.matched / self.total if self.total else 0.0

    @property
    def bit_errors(self) -> int:
        return self.total - self.matched

    def to_dict(self) -> dict[str, Any]:
        return {
            "rate": self.rate,
            "matched": self.matched,
            "total": self.total,
            "bit_errors": self.bit_errors,
            "message": self.message,
            "message_bit_errors": self.message_bit_errors,
            "layers": {
                p: {"matched": d.matched, "total": d.total, "rate": d.rate} for p, d in self.layers.items()
            },
        }


def extract_bits(model: nn.Module) -> tuple[Tensor, Tensor]:
    """(bits read from the weights, bits expected), concatenated over layers in module order."""
    layers = _require_protected(model, "yield signature bits").values()
    read = torch.cat([layer.extracted_bits().cpu() for layer in layers])
    expected = torch.cat([layer.signature.cpu() for layer in layers])
    return read, expected


def signature_detection(model: nn.Module) -> DetectionReport:
    """How many signature bits ``sign(g)`` reproduces, per layer and overall, plus the decoded message."""
    layers = _require_protected(model, "report signature detection")
    report = DetectionReport()
    parts = []  # (offset in the message, bits read, bits expected)
    for path, layer in layers.items():
        read = layer.extracted_bits().cpu()
        expected = layer.signature.cpu()
        report.layers[path] = LayerDetection(int((read == expected).sum()), layer.channels)
        used = int(layer.message_bits)
        if used:
            parts.append((int(layer.message_offset), read[:used], expected[:used]))
    if parts:
        parts.sort(key=lambda part: part[0])
        read_bits = torch.cat([part[1] for part in parts])
        report.message = Signature.decode_text(read_bits)
        report.message_bit_errors = int((read_bits != torch.cat([part[2] for part in parts])).sum())
    return report
