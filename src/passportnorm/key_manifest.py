"""The owner key's manifest (``key.json``) as typed, validated records: the one place that reads it.

Every field is checked on reading, so a malformed or hand-edited key fails with one
``OwnerKeyError`` naming the field (``layers[3].channels must be an integer, got '64'``),
never later with a KeyError deep inside verification. The records are frozen: a changed
manifest is a new one (``dataclasses.replace``), and a manifest read from disk is hashed as it
was written, so keys from earlier releases of the same format keep their digests.
"""

from __future__ import annotations

import copy
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Literal, TypeVar, cast

from .choices import LeverRole, words
from .errors import OwnerKeyError

__all__ = [
    "AncestorEntry",
    "KEY_FORMAT",
    "KEY_VERSION",
    "KeyLayer",
    "KeyManifest",
    "SecretSeed",
    "SignatureEntry",
    "StatisticsLayer",
    "TriggerEntry",
]

KEY_FORMAT = "passportnorm.owner-key"
KEY_VERSION = 1
DEFAULT_BRANCH = "passport-aware"
SignatureMode = Literal["hash", "text"]
_T = TypeVar("_T")
_REQUIRED: Any = object()


def _take(
    data: dict[str, Any], name: str, kind: type[_T] | tuple[type, ...], where: str, default: Any = _REQUIRED
) -> _T:
    """``data[name]`` checked against ``kind`` (ints are not floats' bools); one error naming the field."""
    if name not in data:
        if default is _REQUIRED:
            raise OwnerKeyError(f"{where}.{name} is missing")
        return default
    value = data[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    accepts_number = float in kinds and isinstance(value, int)
    if isinstance(value, bool) and bool not in kinds or not (isinstance(value, kinds) or accepts_number):
        names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
        raise OwnerKeyError(f"{where}.{name} must be {names}, got {value!r}")
    return float(value) if kind is float else value  # type: ignore[return-value]


def _records(data: dict[str, Any], name: str, where: str, default: Any = _REQUIRED) -> list[dict[str, Any]]:
    entries = _take(data, name, list, where, default)
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise OwnerKeyError(f"{where}.{name}[{index}] must be an object, got {entry!r}")
    return entries


_PLAIN_TYPES = {"str": str, "int": int}


def _read_plain(cls: Any, data: dict[str, Any], where: str) -> Any:
    """A record (a dataclass) whose fields are all required strings or integers, each checked by ``_take``."""
    checked: dict[str, Any] = {
        f.name: _take(
            data, f.name, _PLAIN_TYPES[str(f.type)], where, _REQUIRED if f.default is MISSING else f.default
        )
        for f in fields(cls)
    }
    return cls(**checked)


@dataclass(frozen=True)
class KeyLayer:
    """One protected norm: where it is, what it is, and how its branch was built."""

    norm: str
    producer: str
    norm_type: str
    producer_type: str
    channels: int
    passport_shape: tuple[int, ...]
    alpha: float = 0.1
    margin: float = 0.1
    branch: str = DEFAULT_BRANCH
    role: LeverRole = "producer"  # "consumer": ``producer`` names the layer that reads the norm's output

    @classmethod
    def read(cls, data: dict[str, Any], where: str) -> KeyLayer:
        shape = _take(data, "passport_shape", list, where)
        if not shape or not all(isinstance(size, int) and size > 0 for size in shape):
            raise OwnerKeyError(f"{where}.passport_shape must be a list of positive integers, got {shape!r}")
        channels = _take(data, "channels", int, where)
        if channels <= 0:
            raise OwnerKeyError(f"{where}.channels must be positive, got {channels}")
        return cls(
            norm=_take(data, "norm", str, where),
            producer=_take(data, "producer", str, where),
            norm_type=_take(data, "norm_type", str, where),
            producer_type=_take(data, "producer_type", str, where),
            channels=channels,
            passport_shape=tuple(shape),
            alpha=_take(data, "alpha", float, where, 0.1),
            margin=_take(data, "margin", float, where, 0.1),
            branch=_take(data, "branch", str, where, DEFAULT_BRANCH),
            role=_role(data, where),
        )


def _role(data: dict[str, Any], where: str) -> LeverRole:
    role = _take(data, "role", str, where, "producer")
    if role not in words(LeverRole):
        raise OwnerKeyError(f"{where}.role must be one of {', '.join(words(LeverRole))}, got {role!r}")
    return cast(LeverRole, role)


@dataclass(frozen=True)
class StatisticsLayer:
    """An unprotected norm that keeps passport-aware statistics of its own."""

    norm: str
    norm_type: str
    channels: int


@dataclass(frozen=True)
class SignatureEntry:
    """How the bits were chosen: ``hash`` (bound to identity and passports) or ``text`` (forgeable)."""

    mode: SignatureMode
    total_bits: int
    message_bits: int = 0
    text: str | None = None
    identity: str | None = None
    hash: str | None = None
    domain: str | None = None

    @classmethod
    def read(cls, data: dict[str, Any], where: str) -> SignatureEntry:
        mode = _take(data, "mode", str, where, "text")
        if mode not in ("hash", "text"):
            raise OwnerKeyError(f"{where}.mode must be 'hash' or 'text', got {mode!r}")
        optional = (str, type(None))
        return cls(
            mode=mode,  # type: ignore[arg-type]
            total_bits=_take(data, "total_bits", int, where),
            message_bits=_take(data, "message_bits", int, where, 0),
            text=_take(data, "text", optional, where, None),
            identity=_take(data, "identity", optional, where, None),
            hash=_take(data, "hash", optional, where, None),
            domain=_take(data, "domain", optional, where, None),
        )


@dataclass(frozen=True)
class TriggerEntry:
    """The owner's trigger set, stored in key.safetensors as ``trigger.inputs``/``trigger.labels``."""

    count: int
    num_classes: int
    source: str
    labels_from: str = ""  # "drawn" (from a seed) or "chosen" (by the owner); "": a key older than the field
    controls: int = 0  # held-out inputs labelled like the triggers, to measure chance (chosen labels)


@dataclass(frozen=True)
class SecretSeed:
    """Where the passports' seed came from: ``os-csprng`` (secret) or ``user`` (an experiment's seed)."""

    source: str
    value: str


@dataclass(frozen=True)
class AncestorEntry:
    """The trained model a retrofit started from (``protect --weights``): its weights' SHA-256
    (``released_fingerprint``) and its file's. Whatever a function-preserving transform of the
    ancestor shows is no evidence against it, so a claim of such a key is decided only with the
    ancestor at hand (verify.py)."""

    weights_sha256: str
    file_sha256: str


@dataclass(frozen=True)
class KeyManifest:
    """Everything in ``key.json`` except the two hashes that seal it."""

    layers: tuple[KeyLayer, ...]
    signature: SignatureEntry
    sha256_released_weights: str
    statistics_layers: tuple[StatisticsLayer, ...] = ()
    trigger: TriggerEntry | None = None
    seeds: dict[str, Any] = field(default_factory=dict)
    secret_seed: SecretSeed | None = None
    config: dict[str, Any] = field(default_factory=dict)  # the run's settings, as the pipeline wrote them
    ancestor: AncestorEntry | None = None  # set by a retrofit: the claim is decided against it
    format: str = KEY_FORMAT
    version: int = KEY_VERSION
    _as_read: dict[str, Any] | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def read(cls, data: Any, where: str) -> KeyManifest:
        """Validate a parsed ``key.json`` (without its hash fields); OwnerKeyError names the field."""
        if not isinstance(data, dict):
            raise OwnerKeyError(f"{where} must hold a JSON object")
        trigger: dict[str, Any] | None = _take(data, "trigger", (dict, type(None)), where, None)
        secret_seed: dict[str, Any] | None = _take(data, "secret_seed", (dict, type(None)), where, None)
        ancestor: dict[str, Any] | None = _take(data, "ancestor", (dict, type(None)), where, None)
        manifest = cls(
            layers=tuple(
                KeyLayer.read(entry, f"{where}: layers[{i}]")
                for i, entry in enumerate(_records(data, "layers", where))
            ),
            signature=SignatureEntry.read(_take(data, "signature", dict, where), f"{where}: signature"),
            sha256_released_weights=_take(data, "sha256_released_weights", str, where),
            statistics_layers=tuple(
                _read_plain(StatisticsLayer, entry, f"{where}: statistics_layers[{i}]")
                for i, entry in enumerate(_records(data, "statistics_layers", where, []))
            ),
            trigger=_read_plain(TriggerEntry, trigger, f"{where}: trigger") if trigger else None,
            seeds=_take(data, "seeds", dict, where, {}),
            secret_seed=_read_plain(SecretSeed, secret_seed, f"{where}: secret_seed")
            if secret_seed
            else None,
            config=_take(data, "config", dict, where, {}),
            ancestor=_read_plain(AncestorEntry, ancestor, f"{where}: ancestor") if ancestor else None,
            format=_take(data, "format", str, where),
            version=_take(data, "version", int, where),
        )
        object.__setattr__(manifest, "_as_read", copy.deepcopy(data))
        return manifest

    def to_dict(self) -> dict[str, Any]:
        """The JSON object to write (and to hash): as read, for a manifest read from disk."""
        if self._as_read is not None:
            return copy.deepcopy(self._as_read)
        data = asdict(self)
        del data["_as_read"]
        if data["ancestor"] is None:  # keys made from scratch hash as they did before the field existed
            del data["ancestor"]
        for layer in data["layers"]:
            layer["passport_shape"] = list(layer["passport_shape"])
        data["layers"], data["statistics_layers"] = list(data["layers"]), list(data["statistics_layers"])
        return data

    @property
    def total_bits(self) -> int:
        return sum(layer.channels for layer in self.layers)
