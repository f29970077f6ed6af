"""Closed-form branch forgery: a complete passport-aware branch of one's own, from the released weights alone.

Threat model: the forger has the released weights and the architecture; no data, no key, no
knowledge of the owner's passports or MLPs. The per-channel passport response
``g = mean(W * P)`` is linear in the passport ``P``, so for any signature ``t`` the minimum-norm
passport with ``g = margin_scale * t`` is one linear solve. A fresh MLP of the scheme's own
shape (C -> C/4 -> C, LeakyReLU, no biases) is then fitted exactly to map the forged responses
onto the released ``gamma0`` and ``beta0``, and the released normalisation statistics are copied
into the forged branch. The forged branch then computes what the released model computes, so
its accuracy equals the released accuracy while its signature is the forger's.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..branch import PassportAwareBranch
from ..choices import SignatureMode
from ..errors import ConfigError, PassportWarning
from ..key import OwnerKey, extract_key
from ..pairing import find_pairs
from ..protect import hash_bits_of, protect, protected_layers
from ..signature import Signature, claimed_bits
from ..verify import VerdictRule, verify
from .registry import AttackContext, AttackResult, Option, register_attack

THREAT_MODEL = (
    "forger: released weights and architecture; no data, no key. Action: solve for passports whose "
    "responses spell the forger's signature, fit a scheme-shaped MLP onto the released affine values, "
    "copy the released statistics. Claim: the forged key, checked with the owner's own verification."
)


def _response_matrix(layer: PassportAwareBranch) -> Tensor:
    """A with g = A @ vec(P): the linear map from a passport to its per-channel response."""
    shape = layer.passport_gamma.shape
    size = int(math.prod(shape))
    eye = torch.eye(size, dtype=layer.passport_gamma.dtype).reshape(size, *shape[1:])
    rows = []
    for start in range(0, size, 1024):  # the identity, pushed through the producer in chunks
        basis = eye[start : start + 1024]
        with torch.no_grad():
            rows.append(layer.responses_of(basis))
    return torch.cat(rows).T  # (C, size)


def _min_norm_solution(matrix: Tensor, wanted: Tensor) -> Tensor:
    """The smallest x with A x = wanted where A has full row rank, else the least-squares x (float64 SVD).

    No singular value is cut off: a response map with a huge top singular value still gets
    every direction it can reach (lstsq's default cutoff would silently drop the weak ones).
    """
    a = matrix.double()
    u, s, vh = torch.linalg.svd(a, full_matrices=False)
    keep = s > s.max() * 1e-12
    x = vh[keep].T @ ((u[:, keep].T @ wanted.double()) / s[keep])
    return x.to(matrix.dtype)


def _solve_passports(
    shell: nn.Module,
    matrices: dict[str, Tensor],
    targets: dict[str, Tensor],
    scale: float,
    generator: torch.Generator,
) -> None:
    """Set every layer's passports to the minimum-norm solutions spelling ``targets`` (gamma) and
    random signs (beta)."""
    for path, layer in protected_layers(shell).items():
        matrix = matrices[path]
        beta_signs = torch.where(torch.rand(layer.channels, generator=generator) < 0.5, -1.0, 1.0)
        gamma, beta = (
            _min_norm_solution(matrix, scale * signs.to(matrix.dtype))
            for signs in (targets[path], beta_signs)
        )
        layer.set_passports(gamma, beta)


def _hash_bits_of(shell: nn.Module, identity: str) -> dict[str, Tensor]:
    return hash_bits_of(protected_layers(shell), identity)


@torch.no_grad()
def forge_key(
    released: nn.Module,
    example_input: Tensor,
    signature: str | Signature = "(c) Mallory",
    response_scale: float = 1.0,
    seed: int = 0,
    signature_mode: SignatureMode = "hash",
    rounds: int = 20,
) -> tuple[OwnerKey, dict[str, Any]]:
    """A forged owner key for ``released`` (see module docstring).

    ``signature_mode="text"``: the passports spell the forger's text, the paper's setting.
    ``"hash"``: the bits must be the hash of the forger's identity and passports, so the forger
    iterates: solve passports for the current target bits, hash them to get the next target,
    ``rounds`` times, and keeps the passports whose responses agree best with their own hash.
    """
    if response_scale <= 0:
        raise ConfigError(f"response_scale must be positive, got {response_scale}")
    released = released.eval()
    pairs = find_pairs(released, example_input).pairs
    if not pairs:
        raise ConfigError("the released model has no protectable norm layer to forge a branch for")
    # the scheme's own structure, built with the public tool; every secret in it is replaced below.
    # A layer whose response map has rank below its channel count (a first conv over one channel,
    # a 1x1 conv widening its input) cannot spell every signature, so the forger leaves it out.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PassportWarning)
        probe = protect(released, example_input, seed=seed, signature_mode="text")
    matrices = {path: _response_matrix(layer) for path, layer in protected_layers(probe).items()}
    # numerically full rank: the weakest direction at least 1e-6 of the strongest, so float32 passports still
    # reach it
    full_rank = [
        path
        for path, a in matrices.items()
        if int(torch.linalg.matrix_rank(a.double(), rtol=1e-6)) == a.shape[0]
    ]
    if not full_rank:
        raise ConfigError(
            "no protectable layer of this model has a full-rank passport response; nothing to forge"
        )
    identity = str(signature)  # a hash-bound claim's text; a text claim embeds ``signature`` itself
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PassportWarning)
        shell = protect(
            released,
            example_input,
            signature=identity if signature_mode == "hash" else signature,
            seed=seed,
            include=full_rank,
            signature_mode=signature_mode,
        )
    generator = torch.Generator().manual_seed(seed)
    layers = protected_layers(shell)
    info: dict[str, Any] = {}
    if signature_mode == "hash":
        targets = {path: layer.signature.clone() for path, layer in layers.items()}
        history: list[float] = []
        best: tuple[float, dict[str, tuple[Tensor, Tensor]]] = (-1.0, {})
        for _ in range(rounds):
            _solve_passports(shell, matrices, targets, response_scale, generator)
            targets = _hash_bits_of(shell, identity)  # what these passports must now spell
            reached = torch.cat([layer.extracted_bits() for layer in layers.values()])
            agreement = float((reached == torch.cat(list(targets.values()))).float().mean())
            history.append(agreement)
            if agreement > best[0]:
                best = (
                    agreement,
                    {p: (b.passport_gamma.clone(), b.passport_beta.clone()) for p, b in layers.items()},
                )
        for path, (gamma, beta) in best[1].items():
            layers[path].set_passports(gamma, beta)
        for path, bits in _hash_bits_of(shell, identity).items():  # an honest hash-bound claim
            layers[path].set_signature(bits)
        info.update(hash_rounds=rounds, agreement_per_round=history, best_agreement=best[0])
    else:
        _solve_passports(
            shell, matrices, {p: b.signature for p, b in layers.items()}, response_scale, generator
        )
    residuals, reclaimed = {}, {}
    for path, layer in layers.items():
        g, b = layer.passport_responses()
        if signature_mode == "text":
            # the claim is the signs the float32 passports actually give (any rounding casualty is re-claimed)
            reached = claimed_bits(g).to(layer.signature.dtype)
            reclaimed[path] = int((reached != layer.signature).sum())
            layer.set_signature(reached)
        norm = layer.norm
        beta0 = norm.bias if norm.bias is not None else torch.zeros_like(norm.weight)
        layer.reset_mlp(generator)  # first layer random, second solved: MLP(g) = gamma, MLP(b) = beta
        residuals[path] = layer.fit_affine(norm.weight.detach(), beta0.detach())
        layer.branch_norm.copy_from(norm)
    key = extract_key(shell, config={"forged": True})
    left_out = sorted(set(matrices) - set(full_rank))
    return key, {
        "signature_mode": signature_mode,
        "mlp_fit_max_residual": residuals,
        "layers_forged": len(residuals),
        "layers_left_out_rank_deficient": left_out,
        "bits_reclaimed_after_rounding": sum(reclaimed.values()),
        **info,
    }


def forge_attack(
    released: nn.Module,
    owner_key: OwnerKey,
    owner_test: Dataset,
    example_input: Tensor,
    signature: str = "(c) Mallory",
    seed: int = 0,
    rule: VerdictRule = VerdictRule(),
    signature_mode: SignatureMode | None = None,
    rounds: int = 20,
) -> dict[str, Any]:
    """Forge a key (by default in the owner's key's signature mode), then run the owner's
    verification with it and with the owner's key, side by side."""
    mode = signature_mode or cast(SignatureMode, owner_key.signature_mode)
    forged, info = forge_key(
        released, example_input, signature=signature, seed=seed, signature_mode=mode, rounds=rounds
    )
    forged_report = verify(released, forged, data=owner_test, rule=rule)
    owner_report = verify(released, owner_key, data=owner_test, rule=rule)
    # how different the forged claim is from the owner's: bits, over the layers both keys cover
    owner_bits = torch.cat([owner_key.layer_tensors(layer.norm)["signature"] for layer in owner_key.layers])
    forged_bits = torch.cat(
        [
            forged.layer_tensors(layer.norm)["signature"]
            for layer in forged.layers
            if any(o.norm == layer.norm for o in owner_key.layers)
        ]
    )
    dissimilarity = (
        float((owner_bits != forged_bits).float().mean()) if len(owner_bits) == len(forged_bits) else None
    )
    return {
        "attack": "forge",
        "threat_model": THREAT_MODEL,
        "forged": forged_report.to_dict(),
        "owner": owner_report.to_dict(),
        "bit_dissimilarity_to_owner": dissimilarity,
        "forged_verified": forged_report.verified,
        "forged_decoded_text": forged_report.decoded_text,
        **info,
        "forged_key": forged,
    }


@register_attack(
    "forge",
    "solve passports that spell the forger's own signature in the released weights",
    options=(Option("forge_signature", "the forger's text", default="(c) Mallory"),),
)
def run_forge(context: AttackContext) -> AttackResult:
    report = forge_attack(
        context.released,
        context.key,
        context.data.test,
        context.example,
        signature=context.settings["forge_signature"],
        seed=context.seed,
        rule=context.rule,
    )
    forged_key = report.pop("forged_key")
    row = {
        "forged_verified": report["forged_verified"],
        "forged_decoded_text": report["forged_decoded_text"],
        "forged_signature_detection": report["forged"]["signature_detection"],
        "forged_passport_aware_accuracy": report["forged"]["passport_aware_accuracy"],
        "released_accuracy": report["forged"]["passport_free_accuracy"],
        "bit_dissimilarity_to_owner": report["bit_dissimilarity_to_owner"],
        "signature_mode": report["signature_mode"],
        "hash_rounds": report.get("hash_rounds"),
        "best_agreement": report.get("best_agreement"),
    }
    return AttackResult.of(report, [row], forged_key=forged_key)
