"""IPGuard (Cao, Jia and Gong, "IPGuard: Protecting Intellectual Property of Deep Neural Networks via
Fingerprinting the Classification Boundary", AsiaCCS 2021): nothing is embedded; the owner finds
points near its model's classification boundary, and a suspect that labels most of them as the
owner's model does is taken for a copy. The fingerprinting peer the error-rate table sets beside
passports (benchmarks/error_rates.py), written from the paper.

A point starts from a task input ``x`` the owner's model labels ``i``; a label ``j != i`` is drawn,
and ``x`` moves (Adam, the paper's lr 0.01) to minimise

    ReLU(Z_i(x) - Z_j(x) + k) + ReLU(max_{t != i, j} Z_t(x) - Z_i(x))

(``Z``: the logits), which is 0 once ``j`` leads ``i`` by at least ``k`` and ``i`` leads every other
class: the point lies just across the ``i``/``j`` boundary, ``k`` setting how far. The fingerprint
is the points and the owner's labels on them; a suspect's matching rate is the share of points
it labels the same. A point stops moving once its objective is 0, as in the paper's per-point loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import ConfigError

__all__ = ["Fingerprint", "boundary_points", "matching_rate"]


@dataclass(frozen=True)
class Fingerprint:
    """The owner's boundary points and its model's labels on them."""

    inputs: Tensor
    labels: Tensor


def _loss(logits: Tensor, i: Tensor, j: Tensor, k: float) -> Tensor:
    """IPGuard's objective per point (0 where the point is where it should be)."""
    rows = torch.arange(len(logits))
    z_i, z_j = logits[rows, i], logits[rows, j]
    others = logits.clone()
    others[rows, i] = others[rows, j] = float("-inf")
    return torch.relu(z_i - z_j + k) + torch.relu(others.amax(dim=1) - z_i)


def boundary_points(
    model: nn.Module,
    starts: Tensor,
    k: float = 0.01,
    steps: int = 1000,
    lr: float = 0.01,
    seed: int = 0,
) -> Fingerprint:
    """The fingerprint of ``model`` grown from ``starts`` (task inputs), kept within their range."""
    if len(starts) == 0:
        raise ConfigError("IPGuard needs at least one task input to grow a fingerprint point from")
    model.eval()
    low, high = float(starts.min()), float(starts.max())
    with torch.no_grad():
        logits = model(starts)
    i = logits.argmax(dim=1)
    shift = torch.randint(1, logits.shape[1], (len(starts),), generator=torch.Generator().manual_seed(seed))
    j = (i + shift) % logits.shape[1]  # uniform over the labels other than i
    points = starts.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([points], lr=lr)
    for _ in range(steps):
        loss = _loss(model(points), i, j, k)
        done = loss <= 0  # a point stops where it reached its place, as in the paper's per-point loop
        if bool(done.all()):
            break
        kept = points.detach()[done].clone()
        optimizer.zero_grad()
        loss.sum().backward()  # each point's loss depends on that point only
        optimizer.step()
        with torch.no_grad():
            points[done] = kept  # Adam's momentum would carry a finished point on, deeper across
            points.clamp_(low, high)
    inputs = points.detach()
    with torch.no_grad():
        return Fingerprint(inputs, model(inputs).argmax(dim=1))


@torch.no_grad()
def matching_rate(model: nn.Module, fingerprint: Fingerprint) -> float:
    """The share of fingerprint points ``model`` labels as the owner's model did."""
    model.eval()
    return float((model(fingerprint.inputs).argmax(dim=1) == fingerprint.labels).float().mean())
