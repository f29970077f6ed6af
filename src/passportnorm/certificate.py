"""The public commitment an owner publishes at release: hashes of the key and of the released weights.

Publishing it lets the owner later show that this key and this released model existed then,
without revealing the key. ``created_utc`` is the issuer's own clock, a string anyone can edit, so
it orders nothing; the time a dispute may use is the one an RFC 3161 time-stamp authority signs
over the commitment (``timestamp_token``, timestamp.py), checked under roots the verifier trusts.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from torch import nn

from .errors import CertificateError
from .fileio import write_json_atomic
from .key import OwnerKey
from .release import released_fingerprint
from .timestamp import attested_time

__all__ = ["Certificate", "SCHEME", "SCHEME_VERSION", "parse_utc"]

SCHEME = "passport-aware-normalization"
SCHEME_VERSION = "passportnorm-1"
_REQUIRED = ("scheme", "scheme_version", "key_sha256", "released_sha256", "created_utc")


def parse_utc(text: str, where: str) -> datetime:
    """An ISO 8601 time with its UTC offset (``2026-12-03T05:31:41+00:00``); anything else, a time
    without an offset included (its zone would be a guess), is one CertificateError line."""
    try:
        when = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        raise CertificateError(
            f"{where}: created_utc {text!r} is not an ISO 8601 time such as 2026-12-03T05:31:41+00:00"
        ) from None
    if when.tzinfo is None:
        raise CertificateError(f"{where}: created_utc {text!r} has no UTC offset; write it as ...+00:00")
    return when.astimezone(timezone.utc)


@dataclass(frozen=True)
class Certificate:
    scheme: str
    scheme_version: str
    key_sha256: str
    released_sha256: str
    created_utc: str  # the issuer's clock: reported, never used to order claims
    timestamp_token: str | None = None  # base64 DER RFC 3161 response over commitment()

    @classmethod
    def issue(cls, key: OwnerKey, released: nn.Module) -> Certificate:
        return cls(
            SCHEME,
            SCHEME_VERSION,
            key.digest(),
            released_fingerprint(released),
            datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )

    def commitment(self) -> bytes:
        """The bytes a time-stamp authority signs: what the certificate commits to, canonically
        (the self-typed time left out, so a token attests these digests and nothing the holder
        may change)."""
        fields = {
            name: getattr(self, name)
            for name in ("scheme", "scheme_version", "key_sha256", "released_sha256")
        }
        return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()

    def with_token(self, token: bytes) -> Certificate:
        return replace(self, timestamp_token=base64.b64encode(token).decode())

    def attested_utc(self, roots: list[Any]) -> tuple[datetime | None, str]:
        """The time a trusted TSA attests for this commitment, and why; (None, reason) without a
        token or when it does not verify."""
        if self.timestamp_token is None:
            return None, "no time-stamp token: the certificate's time is its issuer's own word"
        return attested_time(base64.b64decode(self.timestamp_token), self.commitment(), roots)

    def save(self, path: str | Path) -> Path:
        data = {k: v for k, v in asdict(self).items() if v is not None}
        write_json_atomic(path, data)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> Certificate:
        path = Path(path)
        if not path.is_file():
            raise CertificateError(f"certificate {path} does not exist")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise CertificateError(f"{path} is not a passportnorm certificate ({error!r})") from error
        if not isinstance(data, dict) or any(not isinstance(data.get(name), str) for name in _REQUIRED):
            missing = next(
                (n for n in _REQUIRED if not isinstance(data, dict) or not isinstance(data.get(n), str)), ""
            )
            raise CertificateError(f"{path} is not a passportnorm certificate (no text field {missing!r})")
        parse_utc(data["created_utc"], str(path))
        token = data.get("timestamp_token")
        if token is not None:
            try:
                base64.b64decode(token, validate=True)
            except (binascii.Error, TypeError):
                raise CertificateError(f"{path}: timestamp_token is not base64") from None
        return cls(**{name: data[name] for name in _REQUIRED}, timestamp_token=token)

    def check_key(self, key: OwnerKey) -> None:
        """Raise CertificateError unless ``key`` is the key this certificate commits to."""
        if key.digest() != self.key_sha256:
            raise CertificateError(
                f"the certificate commits to key {self.key_sha256[:16]}..., but this key hashes to "
                f"{key.digest()[:16]}...: it is not the certified key"
            )

    def matches_released(self, model: nn.Module) -> bool:
        """True when ``model`` has exactly the certified released weights (an unmodified copy)."""
        return released_fingerprint(model) == self.released_sha256
