"""The owner's signature: a message turned into one +-1 bit per protected channel.

Bits are read most significant first from UTF-8 (or raw) bytes; bit 1 is +1, bit 0 is -1.
Channels beyond the message carry seeded random bits, so every channel is constrained and the
filled vector is reproducible from the message and the seed.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .errors import SignatureCapacityError, SignatureError

__all__ = ["Signature", "bits_to_bytes", "bytes_to_bits", "claimed_bits", "read_bits"]


def read_bits(responses: Tensor) -> Tensor:
    """The bits passport responses ``g`` spell, everywhere a signature is read (verification and the
    attacks alike): ``sign(g)`` as int8 +-1, and 0 for an exactly zero response, which matches
    neither bit, so no party gains a bit from a channel that says nothing."""
    return torch.sign(responses).to(torch.int8)


def claimed_bits(responses: Tensor) -> Tensor:
    """A signature a claimant sets from responses (every bit +-1): ``read_bits``, a zero written
    as +1; that bit still reads 0 and matches nothing."""
    bits = read_bits(responses)
    return torch.where(bits == 0, torch.ones_like(bits), bits)


def bytes_to_bits(data: bytes) -> Tensor:
    """Bytes -> int8 +-1 vector, 8 bits a byte, most significant bit first."""
    unpacked = np.unpackbits(np.frombuffer(bytes(data), dtype=np.uint8))
    return torch.from_numpy(unpacked.astype(np.int8) * 2 - 1)


def bits_to_bytes(bits: Tensor) -> bytes:
    """+-1 vector (length a multiple of 8) -> bytes; any value > 0 reads as bit 1."""
    bits = torch.as_tensor(bits).flatten()
    if bits.numel() % 8:
        raise SignatureError(f"{bits.numel()} bits cannot be read as bytes: need a multiple of 8")
    zero_one = (bits > 0).to(torch.uint8).cpu().numpy()
    return np.packbits(zero_one).tobytes()


class Signature:
    """An owner's message as +-1 bits, with the text it came from when there is one.

    Build one with :meth:`from_text`, :meth:`from_bytes` or :meth:`from_bits`; ``protect``
    spreads :meth:`fill` over the protected channels in pair order.
    """

    def __init__(self, bits: Tensor, text: str | None = None):
        bits = torch.as_tensor(bits)
        if bits.dim() != 1:
            raise SignatureError(f"signature bits must be a 1-D vector, got shape {tuple(bits.shape)}")
        if bits.numel() and not bool(((bits == 1) | (bits == -1)).all()):
            bad = bits[(bits != 1) & (bits != -1)][0].item()
            raise SignatureError(f"signature bits must all be +1 or -1, found {bad!r}")
        self.bits = bits.to(torch.int8).cpu().clone()
        self.text = text

    @classmethod
    def from_text(cls, text: str) -> Signature:
        """The message is the UTF-8 encoding of ``text``."""
        return cls(bytes_to_bits(text.encode("utf-8")), text=text)

    @classmethod
    def from_bytes(cls, data: bytes) -> Signature:
        """The message is ``data`` as it is."""
        return cls(bytes_to_bits(data))

    @classmethod
    def from_bits(cls, bits: Tensor) -> Signature:
        """The message is a given +-1 vector (no text attached)."""
        return cls(bits)

    @classmethod
    def coerce(cls, value: Signature | str | bytes | Tensor | None) -> Signature:
        """Accept whatever users naturally pass as a signature; ``None`` is an empty message."""
        if value is None:
            return cls(torch.empty(0, dtype=torch.int8))
        if isinstance(value, Signature):
            return value
        if isinstance(value, str):
            return cls.from_text(value)
        if isinstance(value, (bytes, bytearray)):
            return cls.from_bytes(bytes(value))
        if isinstance(value, Tensor):
            return cls.from_bits(value)
        raise SignatureError(
            f"signature must be text, bytes, a +-1 tensor or a Signature, got {type(value).__name__}"
        )

    @property
    def num_bits(self) -> int:
        return int(self.bits.numel())

    def to_bytes(self) -> bytes:
        """The message as bytes (needs a whole number of bytes)."""
        return bits_to_bytes(self.bits)

    def fill(self, capacity: int, seed: int) -> Tensor:
        """``capacity`` +-1 bits: the message first, then seeded random bits.

        Raises :class:`SignatureCapacityError` when the message does not fit.
        """
        if self.num_bits > capacity:
            what = repr(self.text) if self.text is not None else "the message"
            raise SignatureCapacityError(
                f"signature {what} needs {self.num_bits} bits ({self.num_bits / 8:g} bytes) but the "
                f"protected norm layers have {capacity} channels, a capacity of {capacity // 8} bytes; "
                "shorten the message or protect more (or wider) norm layers"
            )
        gen = torch.Generator().manual_seed(int(seed))
        rest = torch.randint(0, 2, (capacity - self.num_bits,), generator=gen, dtype=torch.int8) * 2 - 1
        return torch.cat([self.bits, rest])

    @staticmethod
    def decode_text(bits: Tensor) -> str:
        """Read +-1 bits back as UTF-8 text; undecodable bytes become U+FFFD, so damage shows."""
        bits = torch.as_tensor(bits).flatten()
        usable = bits[: bits.numel() - bits.numel() % 8]
        return bits_to_bytes(usable).decode("utf-8", errors="replace")

    def __len__(self) -> int:
        return self.num_bits

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Signature) and torch.equal(self.bits, other.bits)

    def __hash__(self) -> int:
        return hash(self.bits.numpy().tobytes())

    def __repr__(self) -> str:
        if self.text is not None:
            return f"Signature.from_text({self.text!r})"
        return f"Signature({self.num_bits} bits)"
