"""The owner key: everything needed to put the passport-aware branch back on a suspect model.

Stored as ``key.safetensors`` (passports, MLP weights, branch statistics, signature bits, by
module path) plus ``key.json`` (format version, pairs, shapes, norm kinds, signature text, seeds,
configuration, and the SHA-256 of the released weights and of the tensor file). Loading
validates all of it and never unpickles anything.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .attach import BINDING, SECRET_SEED, attach_branch, branch_of, original_class, stamp
from .aware_statistics import AwareStatistics, needs_aware_statistics
from .binding import DOMAIN, bits_follow_from_passports
from .branch import BRANCH_KINDS, PassportAwareBranch, register_branch_kind
from .data.triggers import LABELS_CHOSEN, LABELS_DRAWN, UNSCORED, TriggerSet
from .errors import OwnerKeyError
from .fileio import (
    atomic_folder,
    load_tensors,
    read_folder_manifest,
    restrict_to_owner,
    save_tensors,
    sha256_file,
    tensors_fingerprint,
    write_json_atomic,
)
from .key_manifest import (
    KEY_FORMAT,
    KEY_VERSION,
    AncestorEntry,
    KeyLayer,
    KeyManifest,
    SecretSeed,
    SignatureEntry,
    StatisticsLayer,
    TriggerEntry,
)
from .norm import SUPPORTED_PRODUCERS, consumer_kinds, norm_channels, unsupported_norm_reason
from .protect import _require_protected, statistics_layers, strip
from .release import released_fingerprint
from .signature import Signature

__all__ = ["KEY_FORMAT", "KEY_VERSION", "OwnerKey", "extract_key", "attach_key"]


@dataclass
class OwnerKey:
    """The passport-aware branch state (``tensors``, keyed ``<norm path>.<name>``) and its manifest."""

    tensors: dict[str, Tensor]
    manifest: KeyManifest
    # the model ``manifest.ancestor`` names, when the verifier has it (in memory only: never saved)
    ancestor_model: nn.Module | None = field(default=None, repr=False, compare=False)

    def with_ancestor(self, model: nn.Module) -> OwnerKey:
        """This key with the model its retrofit started from at hand, so every verification with it
        (verify, dispute, attacks) decides the claim against that model. The model must be the one
        the key records; a key protected from scratch takes none."""
        recorded = self.ancestor
        if recorded is None:
            raise OwnerKeyError(
                "an ancestor was given, but the key records none (it was protected from scratch, not "
                "retrofitted); drop --ancestor"
            )
        found = released_fingerprint(model)
        if found != recorded.weights_sha256:
            raise OwnerKeyError(
                f"the ancestor given has weights SHA-256 {found[:16]}..., the key records "
                f"{recorded.weights_sha256[:16]}...: give the model the retrofit started from"
            )
        return replace(self, ancestor_model=model)

    @property
    def layers(self) -> tuple[KeyLayer, ...]:
        return self.manifest.layers

    @property
    def total_bits(self) -> int:
        return self.manifest.total_bits

    @property
    def statistics_layers(self) -> tuple[StatisticsLayer, ...]:
        """Unprotected norms with their own passport-aware statistics (absent from older keys)."""
        return self.manifest.statistics_layers

    @property
    def config(self) -> dict[str, Any]:
        """The settings of the run that made the key (empty for keys made outside the pipeline)."""
        return self.manifest.config

    @property
    def ancestor(self) -> AncestorEntry | None:
        """The trained model a retrofit started from (None for a key protected from scratch)."""
        return self.manifest.ancestor

    @property
    def trigger(self) -> TriggerSet | None:
        """The owner's trigger set, when one was used in training (it is part of the key)."""
        info = self.manifest.trigger
        if info is None:
            return None
        # keys older than the field: a folder's labels were the owner's, generated ones drawn
        labels_from = info.labels_from or (
            LABELS_CHOSEN if info.source.startswith("folder:") else LABELS_DRAWN
        )
        return TriggerSet(
            self.tensors["trigger.inputs"],
            self.tensors["trigger.labels"],
            info.num_classes,
            info.source,
            labels_from,
            self.tensors.get("trigger.controls"),
            self.tensors.get("trigger.control_labels"),
        )

    @property
    def signature_text(self) -> str | None:
        return self.manifest.signature.text

    def layer_tensors(self, norm_path: str) -> dict[str, Tensor]:
        prefix = norm_path + "."
        return {k[len(prefix) :]: v for k, v in self.tensors.items() if k.startswith(prefix)}

    @property
    def signature_mode(self) -> str:
        """``hash`` (bits bound to the passports and identity) or ``text`` (the paper's, forgeable)."""
        return self.manifest.signature.mode

    @property
    def identity(self) -> str | None:
        return self.manifest.signature.identity

    def bits_follow_from_passports(self) -> bool:
        """For a hash-bound key: do its bits equal the hash of its identity and passports?"""
        layers = [
            (
                layer.norm,
                self.layer_tensors(layer.norm)["passport_gamma"],
                self.layer_tensors(layer.norm)["passport_beta"],
            )
            for layer in self.layers
        ]
        bits = torch.cat(
            [self.layer_tensors(layer.norm)["signature"].to(torch.int8) for layer in self.layers]
        )
        return bits_follow_from_passports(self.identity or "", layers, bits)

    def digest(self) -> str:
        """SHA-256 over the tensors and the manifest: what a certificate commits to."""
        hasher = hashlib.sha256()
        hasher.update(tensors_fingerprint(self.tensors).encode())
        hasher.update(json.dumps(self.manifest.to_dict(), sort_keys=True).encode())
        return hasher.hexdigest()

    def save(self, folder: str | Path) -> Path:
        """Write ``key.safetensors`` + ``key.json`` atomically (nothing is left half-written), owner-only."""
        folder = Path(folder)
        with atomic_folder(folder, private=True) as staging:
            save_tensors(self.tensors, staging / "key.safetensors", metadata={"format": KEY_FORMAT})
            manifest = dict(
                self.manifest.to_dict(),
                sha256_tensors=sha256_file(staging / "key.safetensors"),
                sha256_key=self.digest(),
            )
            write_json_atomic(staging / "key.json", manifest)
            restrict_to_owner(staging)  # its files too, so the key stays owner-only wherever it is copied
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> OwnerKey:
        """Read and validate a key folder; every problem is one OwnerKeyError naming the file."""
        folder = Path(folder)
        manifest_path, tensors_path = folder / "key.json", folder / "key.safetensors"
        manifest = read_folder_manifest(
            folder,
            "key.json",
            "key.safetensors",
            KEY_FORMAT,
            KEY_VERSION,
            OwnerKeyError,
            "a passportnorm owner key",
        )
        if sha256_file(tensors_path) != manifest.get("sha256_tensors"):
            raise OwnerKeyError(
                f"{tensors_path} does not match the SHA-256 in {manifest_path.name}: one of the two files "
                "changed after the key was written (the check cannot tell which, nor damage from an edit); "
                "use an untouched copy of the key"
            )
        try:
            tensors = load_tensors(tensors_path)
        except ValueError as error:
            raise OwnerKeyError(f"{tensors_path}: {error}") from error
        stored_digest = manifest.pop("sha256_key", None)
        manifest.pop("sha256_tensors", None)
        key = cls(tensors, KeyManifest.read(manifest, str(manifest_path)))
        key._validate(manifest_path)
        if stored_digest != key.digest():
            raise OwnerKeyError(
                f"{manifest_path}: the key hash does not match its contents: the manifest or the tensors "
                "changed after the key was written (the check cannot tell which, nor damage from an edit); "
                "use an untouched copy of the key"
            )
        return key

    def _validate(self, where: Path) -> None:
        """The tensors against the (already typed) manifest: every layer's parts present, shapes agreeing."""
        for layer in self.layers:
            parts = self.layer_tensors(layer.norm)
            has_mlp = layer.branch == PassportAwareBranch.branch_kind
            needed = ("passport_gamma", "passport_beta", "signature") + (
                ("mlp.0.weight", "mlp.2.weight") if has_mlp else ()
            )
            for name in needed:
                if name not in parts:
                    raise OwnerKeyError(
                        f"{where}: layer {layer.norm!r} has no tensor {name!r} in key.safetensors"
                    )
            if tuple(parts["signature"].shape) != (layer.channels,):
                raise OwnerKeyError(
                    f"{where}: layer {layer.norm!r} signature has shape {tuple(parts['signature'].shape)}, "
                    f"expected ({layer.channels},)"
                )
            gamma, beta = parts["passport_gamma"], parts["passport_beta"]
            if gamma.shape != beta.shape or gamma.shape[0] != 1:
                raise OwnerKeyError(
                    f"{where}: layer {layer.norm!r} passports have shapes "
                    f"{tuple(gamma.shape)}/{tuple(beta.shape)}"
                )
            if has_mlp and (
                parts["mlp.0.weight"].shape[1] != layer.channels
                or parts["mlp.2.weight"].shape[0] != layer.channels
            ):
                raise OwnerKeyError(
                    f"{where}: layer {layer.norm!r} MLP does not map {layer.channels} channels"
                )
        for entry in self.statistics_layers:
            parts = self.layer_tensors(entry.norm)
            for name in ("branch_norm.running_mean", "branch_norm.running_var"):
                if tuple(parts.get(name, torch.empty(0)).shape) != (entry.channels,):
                    raise OwnerKeyError(
                        f"{where}: statistics layer {entry.norm!r} has no {name} of {entry.channels} channels"
                    )
        trigger = self.manifest.trigger
        if trigger is not None:
            inputs, labels = self.tensors.get("trigger.inputs"), self.tensors.get("trigger.labels")
            controls = self.tensors.get("trigger.controls")
            control_labels = self.tensors.get("trigger.control_labels")
            held = 0 if controls is None or control_labels is None else len(controls)
            if (
                inputs is None
                or labels is None
                or len(inputs) != trigger.count
                or len(labels) != len(inputs)
                or held != trigger.controls
                or (held and len(control_labels) != held)  # type: ignore[arg-type]
            ):
                raise OwnerKeyError(
                    f"{where}: the trigger set in key.safetensors does not match its manifest entry"
                )
            for name, values in (("labels", labels), ("control_labels", control_labels)):
                _check_trigger_labels(values, trigger.num_classes, f"{where}: trigger.{name}")


def _check_trigger_labels(labels: Tensor | None, num_classes: int, where: str) -> None:
    """Labels a key's owner wrote: classes of the task or UNSCORED places, and at least one scored."""
    if labels is None:
        return
    scored = labels[labels != UNSCORED]
    if (
        labels.is_floating_point()
        or not len(scored)
        or int(scored.min()) < 0
        or int(scored.max()) >= num_classes
    ):
        raise OwnerKeyError(
            f"{where}: labels must be classes 0..{num_classes - 1} (or {UNSCORED} where a place is not "
            "scored), at least one scored; the key was edited or damaged"
        )


def _signature_entry(model: nn.Module, message: Tensor, total_bits: int) -> SignatureEntry:
    """How the model's bits were chosen (set by ``protect``): hash-bound to an identity, or text."""
    binding = getattr(model, BINDING, None) or {"mode": "text", "identity": None}
    hashed = binding["mode"] == "hash"
    message_bits = int(message.numel())
    return SignatureEntry(
        mode=binding["mode"],
        total_bits=total_bits,
        message_bits=message_bits,
        text=Signature.decode_text(message) if message_bits and message_bits % 8 == 0 else None,
        identity=binding.get("identity"),
        hash="shake_256" if hashed else None,
        domain=DOMAIN.decode() if hashed else None,
    )


def _secret_seed_of(model: nn.Module) -> SecretSeed | None:
    """Where the passports' seed came from: "os-csprng" (secret) or "user" (an experiment's fixed seed)."""
    seed = getattr(model, SECRET_SEED, None)
    return SecretSeed(seed["source"], str(seed["value"])) if seed else None


def _key_layer(path: str, layer: PassportAwareBranch) -> KeyLayer:
    return KeyLayer(
        norm=path,
        producer=layer.producer_path,
        norm_type=original_class(layer.norm).__name__,
        producer_type=type(layer.producer).__name__,
        channels=layer.channels,
        passport_shape=tuple(layer.passport_gamma.shape),
        alpha=layer.alpha,
        margin=layer.margin,
        branch=layer.branch_kind,
        role=layer.role,
    )


def extract_key(
    model: nn.Module,
    config: dict[str, Any] | None = None,
    seeds: dict[str, int] | None = None,
    trigger: TriggerSet | None = None,
    ancestor: AncestorEntry | None = None,
) -> OwnerKey:
    """The owner key of a protected model (its branch state), with the fingerprint of its release;
    ``ancestor``: the trained model a retrofit started from."""
    layers = _require_protected(model, "yield an owner key")
    statistics = statistics_layers(model)
    tensors = {
        f"{path}.{name}": value
        for path, layer in {**layers, **statistics}.items()
        for name, value in layer.key_tensors().items()
    }
    message_parts = sorted((layer.message() for layer in layers.values()), key=lambda part: part[0])
    message = torch.cat([bits for _, bits in message_parts if bits.numel()] or [torch.empty(0)])
    trigger_entry = None
    if trigger is not None:
        tensors["trigger.inputs"] = trigger.inputs.detach().cpu().clone()
        tensors["trigger.labels"] = trigger.labels.detach().cpu().clone()
        controls = 0
        if trigger.controls is not None and trigger.control_labels is not None:
            tensors["trigger.controls"] = trigger.controls.detach().cpu().clone()
            tensors["trigger.control_labels"] = trigger.control_labels.detach().cpu().clone()
            controls = len(trigger.control_labels)
        trigger_entry = TriggerEntry(
            len(trigger), trigger.num_classes, trigger.source, trigger.labels_from, controls
        )
    described = tuple(_key_layer(path, layer) for path, layer in layers.items())
    manifest = KeyManifest(
        layers=described,
        signature=_signature_entry(model, message, sum(layer.channels for layer in described)),
        sha256_released_weights=released_fingerprint(strip(model)),
        statistics_layers=tuple(
            StatisticsLayer(path, original_class(layer.norm).__name__, layer.channels)
            for path, layer in statistics.items()
        ),
        trigger=trigger_entry,
        seeds=seeds or {},
        secret_seed=_secret_seed_of(model),
        config=config or {},
        ancestor=ancestor,
    )
    return OwnerKey(tensors, manifest)


def _statistics_branch(
    modules: dict[str, nn.Module], layer: StatisticsLayer, parts: dict[str, Tensor]
) -> AwareStatistics:
    """The suspect's norm at ``layer.norm`` with the key's passport-aware statistics beside it."""
    path = layer.norm
    norm = modules.get(path)
    if norm is None:
        raise OwnerKeyError(f"the key is for another architecture: the model has no module {path!r}")
    if (
        type(norm).__name__ != layer.norm_type
        or not needs_aware_statistics(norm)
        or norm.num_features != layer.channels
    ):
        raise OwnerKeyError(
            f"the key is for another architecture: {path!r} is a {type(norm).__name__} with "
            f"{getattr(norm, 'num_features', '?')} channels, the key expects a {layer.norm_type} "
            f"with {layer.channels}"
        )
    branch = AwareStatistics(norm)
    try:
        branch.load_trained(parts)
    except ValueError as error:
        raise OwnerKeyError(f"the key's statistics for {path!r}: {error}") from None
    return branch


def _checked_pair(modules: dict[str, nn.Module], layer: KeyLayer) -> tuple[nn.Module, nn.Module]:
    """The suspect's norm and producer for a key layer; OwnerKeyError where the architecture differs."""
    norm, producer = modules.get(layer.norm), modules.get(layer.producer)
    if norm is None or producer is None:
        missing = layer.norm if norm is None else layer.producer
        raise OwnerKeyError(f"the key is for another architecture: the model has no module {missing!r}")
    if branch_of(norm) is not None:
        raise OwnerKeyError(
            f"{layer.norm!r} already carries a passport-aware branch; attach keys to released models"
        )
    if type(norm).__name__ != layer.norm_type or unsupported_norm_reason(norm):
        raise OwnerKeyError(
            f"the key is for another architecture: {layer.norm!r} is a {type(norm).__name__}, "
            f"the key expects {layer.norm_type}"
        )
    levers = consumer_kinds() if layer.role == "consumer" else SUPPORTED_PRODUCERS
    if type(producer).__name__ != layer.producer_type or not isinstance(producer, levers):
        raise OwnerKeyError(
            f"the key is for another architecture: {layer.producer!r} is a {type(producer).__name__}, "
            f"the key expects {layer.producer_type}"
        )
    if norm_channels(norm) != layer.channels:
        raise OwnerKeyError(
            f"the key is for another architecture: {layer.norm!r} has {norm_channels(norm)} channels, "
            f"the key expects {layer.channels}; if the suspect was widened (dummy or split channels), "
            "pass the owner's release as --reference to align it"
        )
    return norm, producer


@register_branch_kind(PassportAwareBranch.branch_kind)
def _passport_aware_from_key(
    norm: nn.Module, producer: nn.Module, parts: dict[str, Tensor], layer: KeyLayer
) -> PassportAwareBranch:
    return PassportAwareBranch(
        norm,
        producer,
        parts["passport_gamma"],
        parts["passport_beta"],
        parts["signature"],
        producer_path=layer.producer,
        role=layer.role,
        message_bits=int(parts.get("message_bits", torch.tensor(0))),
        message_offset=int(parts.get("message_offset", torch.tensor(0))),
        alpha=layer.alpha,
        margin=layer.margin,
    )


def _rebuilt_branch(
    norm: nn.Module, producer: nn.Module, layer: KeyLayer, parts: dict[str, Tensor]
) -> PassportAwareBranch:
    if layer.branch not in BRANCH_KINDS:
        raise OwnerKeyError(
            f"the key's layer {layer.norm!r} uses branch kind {layer.branch!r}, which this version cannot "
            "rebuild"
        )
    return BRANCH_KINDS[layer.branch](norm, producer, parts, layer)


def attach_key(model: nn.Module, key: OwnerKey) -> nn.Module:
    """A copy of ``model`` (a released or suspect model) with the key's branch put back on it.

    Raises OwnerKeyError naming the first layer where the model's architecture differs from
    the one the key was made for.
    """
    suspect = copy.deepcopy(model)
    modules = dict(suspect.named_modules())
    for layer in key.layers:
        norm, producer = _checked_pair(modules, layer)
        parts = key.layer_tensors(layer.norm)
        branch = _rebuilt_branch(norm, producer, layer, parts)
        try:
            branch.passport_responses()
        except RuntimeError as error:
            raise OwnerKeyError(
                f"the key is for another architecture: its passport for {layer.producer!r} does not fit that "
                f"layer ({error})"
            ) from None
        try:
            branch.load_trained(parts)
        except ValueError as error:
            raise OwnerKeyError(f"the key's branch for {layer.norm!r}: {error}") from None
        attach_branch(norm, branch)
    for entry in key.statistics_layers:
        attach_branch(modules[entry.norm], _statistics_branch(modules, entry, key.layer_tensors(entry.norm)))
    stamp(suspect, BINDING, {"mode": key.signature_mode, "identity": key.identity})
    return suspect
