"""The public commitment an owner publishes at release: hashes of the key and of the released weights.

Publishing it (with a trusted time, e.g. in a registry or a signed post) lets the owner later
show that this key and this released model existed then, without revealing the key.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from torch import nn

from .errors import CertificateError
from .fileio import write_json_atomic
from .key import OwnerKey
from .release import released_fingerprint

__all__ = ["Certificate", "SCHEME", "SCHEME_VERSION"]

SCHEME = "passport-aware-normalization"
SCHEME_VERSION = "passportnorm-1"


@dataclass(frozen=True)
class Certificate:
    scheme: str
    scheme_version: str
    key_sha256: str
    released_sha256: str
    created_utc: str

    @classmethod
    def issue(cls, key: OwnerKey, released: nn.Module) -> Certificate:
        return cls(
            SCHEME,
            SCHEME_VERSION,
            key.digest(),
            released_fingerprint(released),
            datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )

    def save(self, path: str | Path) -> Path:
        write_json_atomic(path, asdict(self))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> Certificate:
        path = Path(path)
        if not path.is_file():
            raise CertificateError(f"certificate {path} does not exist")
        try:
            data = json.loads(path.read_text())
            return cls(**{name: str(data[name]) for name in cls.__dataclass_fields__})
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
            raise CertificateError(f"{path} is not a passportnorm certificate ({error!r})") from error

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
