"""Hash-bound signatures: the bits follow from the passports and the owner's identity, one way.

The published scheme lets the owner pick any signature, and the passport response ``g`` is
linear in the passport, so anyone holding the released weights can solve for passports that
spell a signature of their choice (``attacks/forge.py`` does it in closed form). Here the bits
are instead an extendable-output hash (SHAKE-256) of a domain tag, the identity text and the
canonical bytes of every passport of every protected layer in order (after Steganographic
Passport, CVPR 2024). A forger who changes a passport to steer ``g`` changes every bit it must
match, so a claim is a search: each try succeeds with the binomial tail probability below.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Sequence

import torch
from scipy.stats import binom
from torch import Tensor

from .signature import bytes_to_bits

__all__ = [
    "DOMAIN",
    "SIGNATURE_MODES",
    "SECURITY_BITS",
    "bits_follow_from_passports",
    "canonical_passport_bytes",
    "hash_bits_by_layer",
    "hash_bound_bits",
    "required_matches",
    "log10_forgery_chance",
]

DOMAIN = b"passportnorm/hash-bound-signature/v1"
SIGNATURE_MODES = ("hash", "text")
SECURITY_BITS = 128  # a claim must be one a forger hits with chance <= 2^-128 per try


def canonical_passport_bytes(layers: Sequence[tuple[str, Tensor, Tensor]]) -> bytes:
    """Layer count, then per layer: its norm path, passport shape, and both passports as
    little-endian float32, in the given (pair) order. Same passports, same bytes, on any machine."""
    parts = [struct.pack("<I", len(layers))]
    for path, gamma, beta in layers:
        name = path.encode("utf-8")
        parts.append(struct.pack("<I", len(name)) + name)
        parts.append(struct.pack("<I", gamma.dim()) + struct.pack(f"<{gamma.dim()}q", *gamma.shape))
        for passport in (gamma, beta):
            parts.append(
                passport.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4").tobytes()
            )
    return b"".join(parts)


def hash_bound_bits(identity: str, layers: Sequence[tuple[str, Tensor, Tensor]], total_bits: int) -> Tensor:
    """``total_bits`` signature bits (int8 +-1) = SHAKE-256(domain, identity, passports), stretched."""
    text = identity.encode("utf-8")
    shake = hashlib.shake_256()
    shake.update(struct.pack("<I", len(DOMAIN)) + DOMAIN)
    shake.update(struct.pack("<I", len(text)) + text)
    shake.update(canonical_passport_bytes(layers))
    return bytes_to_bits(shake.digest(math.ceil(total_bits / 8)))[:total_bits].to(torch.int8)


def hash_bits_by_layer(
    identity: str, layers: Sequence[tuple[str, Tensor, Tensor]], channels: Sequence[int]
) -> dict[str, Tensor]:
    """The hash-bound bits of ``layers`` (name, gamma, beta; key order) cut into each layer's ``channels``."""
    bits = hash_bound_bits(identity, layers, sum(channels))
    return {name: part for (name, _, _), part in zip(layers, torch.split(bits, list(channels)))}


def bits_follow_from_passports(
    identity: str, layers: Sequence[tuple[str, Tensor, Tensor]], bits: Tensor
) -> bool:
    """Are ``bits`` (+-1, in layer order) exactly the hash of ``identity`` and the layers' passports?"""
    return bool(
        torch.equal(hash_bound_bits(identity, layers, int(bits.numel())), bits.detach().cpu().to(torch.int8))
    )


def required_matches(bits: int, max_p_value: float, search_log2: float = 0.0) -> int:
    """The fewest matching bits out of ``bits`` whose chance p-value is at most ``max_p_value``
    (``bits + 1`` when no count is); ``search_log2``: the log2 of how many arrangements someone
    could have chosen among before the bits were read, charged as a union bound (p x 2^search)."""
    # P(X >= k) = sf(k - 1); the smallest k with sf(k - 1) * 2^search <= threshold
    log_threshold = math.log(max_p_value) - search_log2 * math.log(2)
    low, high = 0, bits + 1
    while low < high:
        mid = (low + high) // 2
        if binom.logsf(mid - 1, bits, 0.5) <= log_threshold + 1e-9:
            high = mid
        else:
            low = mid + 1
    return low


def log10_forgery_chance(bits: int, max_p_value: float, search_log2: float = 0.0) -> float:
    """log10 of the chance that one forgery try (fresh passports, hence fresh random bits) reaches
    the required matches: the binomial tail at ``required_matches``; -inf when no count suffices."""
    k = required_matches(bits, max_p_value, search_log2)
    if k > bits:
        return float("-inf")
    return float(binom.logsf(k - 1, bits, 0.5) / math.log(10))
