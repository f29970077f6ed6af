"""Mixing the dimensions of each attention head by invertible matrices, and finding them back.

Between an attention's q/k/v projection and its output there are linear maps only, so more than a
permutation keeps the function (linear functionality equivalence, Li et al., IEEE TIFS 2023): per
head, ``q -> A q`` with ``k -> A^-T k`` keeps every score ``q . k``, and ``v -> B v`` with the
output projection's columns of that head times ``B^-1`` keeps the output, for any invertible
``A`` and ``B``. The fused projection's rows are mixed, so a consumer's bit, which reads a column
of that weight through the passport ``P`` in its output space (``g = mean_t (P W)``), now reads
``P A W``: the thief loses nothing, the owner's bits are gone in key order.

Undoing it: the suspect's q rows of a head are the reference's times ``A``, so least squares finds
``A`` (and ``B`` from the v rows); the fit is judged on what that least squares did not see, the
k rows against ``A^-T`` times the reference's and the output columns against the reference's
times ``B^-1`` (about 0 for an independent model, 1 for a mixed copy). Like a rotation, a mixing
is a continuous choice: a claimant could pick one under which a public model spells any bits, so
the bits of a consumer whose heads were mixed back are not counted (align.py).

Layouts known: ``nn.MultiheadAttention`` with one fused ``in_proj_weight``, a module with ``qkv``
and ``proj`` Linears and ``heads``/``num_heads`` (the zoo, timm), Hugging Face GPT-2's ``c_attn``
and ``c_proj``; each with rows ordered (q|k|v, head, head dimension). A mixing is kept only where
the output on the example stays the same (rotary positions, a q/k norm or another layout do not).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .capture import call_model, frozen_eval, same_output
from .norm import lever_weight

__all__ = [
    "Heads",
    "find_heads",
    "mix_heads",
    "mixing_keeps_function",
    "mixing_to",
    "random_mixing",
    "inverse",
    "MixingFit",
]

# (fused q/k/v projection, output projection) as children of an attention module
_CHILD_LAYOUTS = (("qkv", "proj"), ("c_attn", "c_proj"))
Mixing = list[tuple[Tensor, Tensor]]  # per head (A for q/k, B for v/out), float64


@dataclass(frozen=True)
class Heads:
    """One attention: the module whose lever weight is the fused (3 x heads x head_dim, C)
    projection (the key's consumer path), its output projection, and the number of heads."""

    lever: str
    out: str
    heads: int


def find_heads(model: nn.Module) -> list[Heads]:
    """Every attention of a known layout whose fused projection splits into whole heads."""
    modules = dict(model.named_modules())
    found = []
    for path, module in modules.items():
        prefix = f"{path}." if path else ""
        if isinstance(module, nn.MultiheadAttention):
            if isinstance(module.in_proj_weight, Tensor) and module.in_proj_bias is not None:
                found.append(Heads(path, f"{prefix}out_proj", module.num_heads))
            continue
        heads = getattr(module, "heads", getattr(module, "num_heads", None))
        for fused, out in _CHILD_LAYOUTS:
            if isinstance(heads, int) and f"{prefix}{fused}" in modules and f"{prefix}{out}" in modules:
                found.append(Heads(f"{prefix}{fused}", f"{prefix}{out}", heads))
    return [
        h for h in found if _splits(lever_weight(modules[h.lever]), lever_weight(modules[h.out]), h.heads)
    ]


def _splits(fused: Tensor, out: Tensor, heads: int) -> bool:
    width = out.shape[1]
    return heads > 0 and width % heads == 0 and fused.shape[0] == 3 * width


def _bias(module: nn.Module) -> Tensor | None:
    bias = module.in_proj_bias if isinstance(module, nn.MultiheadAttention) else getattr(module, "bias", None)
    return bias if isinstance(bias, Tensor) else None


def _slices(heads: Heads, width: int, head: int) -> tuple[slice, slice, slice, slice]:
    """Rows of head ``head``'s q, k and v in the fused weight, and its columns of the output."""
    size = width // heads.heads
    at = [slice(part * width + head * size, part * width + (head + 1) * size) for part in range(3)]
    return at[0], at[1], at[2], slice(head * size, (head + 1) * size)


def random_mixing(size: int, generator: torch.Generator) -> Tensor:
    """A random invertible ``(size, size)`` matrix, float64, its singular values log-uniform in
    [0.5, 2] (a rotation, a stretch, a rotation): far from any scaled permutation, well conditioned."""

    def orthogonal() -> Tensor:
        q, r = torch.linalg.qr(torch.randn(size, size, generator=generator, dtype=torch.float64))
        return q * torch.sign(torch.diagonal(r))

    stretch = 0.5 * 4.0 ** torch.rand(size, generator=generator, dtype=torch.float64)
    return orthogonal() @ torch.diag(stretch) @ orthogonal()


@torch.no_grad()
def mix_heads(model: nn.Module, heads: Heads, mixing: Mixing) -> None:
    """Per head ``(A, B)``: q rows (and bias) times ``A``, k rows times ``A^-T``, v rows times
    ``B``, the output's columns of that head times ``B^-1``. Keeps the function for this layout."""
    modules = dict(model.named_modules())
    fused, out = modules[heads.lever], modules[heads.out]
    weight, bias, out_weight = lever_weight(fused), _bias(fused), lever_weight(out)
    width = out_weight.shape[1]
    on_device = [(a.to(weight.device), b.to(weight.device)) for a, b in mixing]
    for rows in [weight] + ([bias.unsqueeze(1)] if bias is not None else []):  # a bias: one column
        rows.copy_(_mixed_rows(rows.double(), heads, width, on_device).to(rows.dtype))
    for head, (_, b) in enumerate(on_device):
        columns = out_weight[:, _slices(heads, width, head)[3]]
        columns.copy_((columns.double() @ torch.linalg.inv(b)).to(columns.dtype))


def inverse(mixing: Mixing) -> Mixing:
    """The mixing that undoes ``mixing``."""
    return [(torch.linalg.inv(a), torch.linalg.inv(b)) for a, b in mixing]


@torch.no_grad()
def mixing_keeps_function(model: nn.Module, example_input: Any, heads: Heads, mixing: Mixing) -> bool:
    """Mix ``heads`` by ``mixing``; keep it and answer True where the output on ``example_input``
    stays the same (to 1e-4 of its scale), else mix it back and answer False."""
    with frozen_eval(model):
        before = call_model(model, example_input)
        mix_heads(model, heads, mixing)
        after = call_model(model, example_input)
    if same_output(before, after):
        return True
    mix_heads(model, heads, inverse(mixing))
    return False


def _row_fit(predicted: Tensor, actual: Tensor) -> float:
    return float(F.cosine_similarity(predicted, actual, dim=1).mean())


def _mixed_rows(fused: Tensor, heads: Heads, width: int, mixing: Mixing) -> Tensor:
    """A copy of the fused weight (rows q|k|v) with every head's rows mixed as ``mix_heads`` does."""
    mixed = fused.clone()
    for head, (a, b) in enumerate(mixing):
        q, k, v, _ = _slices(heads, width, head)
        mixed[q], mixed[k], mixed[v] = a @ fused[q], torch.linalg.inv(a).T @ fused[k], b @ fused[v]
    return mixed


def _column_scales(predicted: Tensor, actual: Tensor) -> Tensor:
    """Per column, the factor that best takes ``predicted`` to ``actual``: a norm's gain folded into
    its readers (consumer_channels.py) scales, and a flip negates, a whole column of the fused weight."""
    return (predicted * actual).sum(dim=0) / predicted.pow(2).sum(dim=0).clamp_min(1e-24)


def _gram_scales(weight: Tensor, ref: Tensor, heads: Heads, width: int) -> Tensor:
    """The column scales ``d`` from what no mixing changes: ``W_q^T W_k = d (R_q^T R_k) d``, summed
    over heads (``A^T A^-T = I``). Signs from the leading eigenvector of the sign agreements,
    sizes from a least-squares fit of ``log|d_i| + log|d_j|``, both weighted by ``|R_q^T R_k|``."""
    q, k = slice(0, width), slice(width, 2 * width)
    ours, theirs = weight[q].T @ weight[k], ref[q].T @ ref[k]
    weights = theirs.abs()
    agreement = torch.sign(ours) * torch.sign(theirs) * weights
    signs = torch.sign(torch.linalg.eigh(agreement + agreement.T).eigenvectors[:, -1])
    signs = torch.where(signs == 0, 1.0, signs).to(weight.dtype)
    logs = ours.abs().clamp_min(1e-30).log() - theirs.abs().clamp_min(1e-30).log()
    both = weights + weights.T
    system = torch.diag(both.sum(dim=1)) + both
    sizes = torch.linalg.solve(system, (weights * logs).sum(dim=1) + (weights * logs).sum(dim=0)).exp()
    return signs * sizes


@dataclass
class MixingFit:
    """What ``mixing_to`` found: the per-head mixing, its fit, and the fit of no mixing at all."""

    mixing: Mixing
    fit: float
    unmixed_fit: float


@torch.no_grad()
def mixing_to(model: nn.Module, reference: nn.Module, heads: Heads, rounds: int = 8) -> MixingFit | None:
    """The mixing that takes ``reference``'s heads to ``model``'s: least squares on the q and v rows,
    alternating with a scale per column (what a fold or flip of the norm's channels did, left for
    align.py to undo). The fit is the mean cosine of what least squares did not see, the k rows
    (``A^-T`` times the reference's) and the output columns (the reference's times ``B^-1``); the
    unmixed fit is the same with no mixing. None where the shapes differ."""
    ours, theirs = dict(model.named_modules()), dict(reference.named_modules())
    if heads.lever not in ours or heads.out not in ours:
        return None
    weight, ref = (lever_weight(m[heads.lever]).double().cpu() for m in (ours, theirs))
    out, ref_out = (lever_weight(m[heads.out]).double().cpu() for m in (ours, theirs))
    if weight.shape != ref.shape or out.shape != ref_out.shape:
        return None
    width = out.shape[1]
    identity = [(torch.eye(width // heads.heads, dtype=torch.float64),) * 2] * heads.heads
    scales = _column_scales(ref, weight)
    unmixed_fit = _fit(weight, out, ref * scales, ref_out, heads, identity)
    scales = _gram_scales(weight, ref, heads, width)  # d and -d fit q.k alike: the output decides
    found = max(
        (_refined(weight, ref, out, ref_out, heads, sign * scales, rounds) for sign in (1, -1)),
        key=lambda pair: pair[1],
    )
    return MixingFit(found[0], found[1], unmixed_fit)


def _refined(
    weight: Tensor, ref: Tensor, out: Tensor, ref_out: Tensor, heads: Heads, scales: Tensor, rounds: int
) -> tuple[Mixing, float]:
    """Alternate least squares for the mixing and the column scales, from ``scales``; with the fit."""
    width = out.shape[1]
    mixing: Mixing = []
    for _ in range(rounds):
        scaled = ref * scales
        mixing = []
        for head in range(heads.heads):
            q, _, v, _ = _slices(heads, width, head)
            mixing.append((_solve(scaled[q], weight[q]), _solve(scaled[v], weight[v])))
        scales = _column_scales(_mixed_rows(ref, heads, width, mixing), weight)
    return mixing, _fit(weight, out, _mixed_rows(ref * scales, heads, width, mixing), ref_out, heads, mixing)


def _solve(original: Tensor, mixed: Tensor) -> Tensor:
    """The matrix ``m`` with ``mixed ~ m @ original`` (least squares)."""
    return torch.linalg.lstsq(original.T, mixed.T).solution.T


def _fit(
    weight: Tensor, out: Tensor, predicted: Tensor, ref_out: Tensor, heads: Heads, mixing: Mixing
) -> float:
    """Mean cosine of the k rows (``predicted``: the reference's, mixed) and of the output columns
    (the reference's times ``B^-1``) against the suspect's."""
    fits = []
    for head, (_, b) in enumerate(mixing):
        _, k, _, o = _slices(heads, out.shape[1], head)
        fits += [_row_fit(predicted[k], weight[k]), _row_fit(ref_out[:, o] @ torch.linalg.inv(b), out[:, o])]
    return sum(fits) / len(fits)
