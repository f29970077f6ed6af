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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .binding import DOMAIN, bits_follow_from_passports
from .errors import OwnerKeyError
from .fileio import (
    atomic_folder,
    load_tensors,
    read_folder_manifest,
    save_tensors,
    sha256_file,
    restrict_to_owner,
    tensors_fingerprint,
    write_json_atomic,
)
from .attach import attach_branch, branch_of, original_class
from .aware_statistics import AwareStatistics, needs_aware_statistics
from .branch import BRANCH_KINDS, PassportAwareBranch
from .norm import SUPPORTED_PRODUCERS, norm_channels, unsupported_norm_reason
from .protect import _require_protected, statistics_layers, strip
from .release import released_fingerprint
from .data.triggers import TriggerSet
from .signature import Signature

__all__ = ["KEY_FORMAT", "KEY_VERSION", "OwnerKey", "extract_key", "attach_key"]

KEY_FORMAT = "passportnorm.owner-key"
KEY_VERSION = 1
_BRANCH_PREFIXES = (
    "passport_gamma",
    "passport_beta",
    "signature",
    "message_bits",
    "message_offset",
    "mlp.",
    "branch_norm.",
)


@dataclass
class OwnerKey:
    """The secret branch state (``tensors``, keyed ``<norm path>.<name>``) and its manifest."""

    tensors: dict[str, Tensor]
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def layers(self) -> list[dict[str, Any]]:
        return self.manifest["layers"]

    @property
    def total_bits(self) -> int:
        return sum(layer["channels"] for layer in self.layers)

    @property
    def statistics_layers(self) -> list[dict[str, Any]]:
        """Unprotected norms with their own passport-aware statistics (absent from older keys)."""
        return self.manifest.get("statistics_layers", [])

    @property
    def trigger(self) -> "TriggerSet | None":
        """The owner's trigger set, when one was used in training (it is part of the key)."""
        info = self.manifest.get("trigger")
        if not info:
            return None
        return TriggerSet(
            self.tensors["trigger.inputs"],
            self.tensors["trigger.labels"],
            int(info["num_classes"]),
            info["source"],
        )

    @property
    def signature_text(self) -> str | None:
        return self.manifest.get("signature", {}).get("text")

    def layer_tensors(self, norm_path: str) -> dict[str, Tensor]:
        prefix = norm_path + "."
        return {k[len(prefix) :]: v for k, v in self.tensors.items() if k.startswith(prefix)}

    @property
    def signature_mode(self) -> str:
        """``hash`` (bits bound to the passports and identity) or ``text`` (the paper's, forgeable)."""
        return self.manifest.get("signature", {}).get("mode", "text")

    @property
    def identity(self) -> str | None:
        return self.manifest.get("signature", {}).get("identity")

    def bits_follow_from_passports(self) -> bool:
        """For a hash-bound key: do its bits equal the hash of its identity and passports?"""
        layers = [
            (
                l["norm"],
                self.layer_tensors(l["norm"])["passport_gamma"],
                self.layer_tensors(l["norm"])["passport_beta"],
            )
            for l in self.layers
        ]
        bits = torch.cat([self.layer_tensors(l["norm"])["signature"].to(torch.int8) for l in self.layers])
        return bits_follow_from_passports(self.identity or "", layers, bits)

    def digest(self) -> str:
        """SHA-256 over the tensors and the manifest: what a certificate commits to."""
        hasher = hashlib.sha256()
        hasher.update(tensors_fingerprint(self.tensors).encode())
        hasher.update(json.dumps(self.manifest, sort_keys=True).encode())
        return hasher.hexdigest()

    def save(self, folder: str | Path) -> Path:
        """Write ``key.safetensors`` + ``key.json`` atomically (nothing is left half-written), owner-only."""
        folder = Path(folder)
        with atomic_folder(folder) as staging:
            save_tensors(self.tensors, staging / "key.safetensors", metadata={"format": KEY_FORMAT})
            manifest = dict(
                self.manifest,
                sha256_tensors=sha256_file(staging / "key.safetensors"),
                sha256_key=self.digest(),
            )
            write_json_atomic(staging / "key.json", manifest)
            restrict_to_owner(
                staging
            )  # before the rename: the key is never readable by others, not even briefly
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "OwnerKey":
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
                f"{tensors_path} does not match the SHA-256 in {manifest_path.name}: the key is corrupted or "
                "altered"
            )
        try:
            tensors = load_tensors(tensors_path)
        except ValueError as error:
            raise OwnerKeyError(f"{tensors_path}: {error}") from error
        stored_digest = manifest.pop("sha256_key", None)
        manifest.pop("sha256_tensors", None)
        key = cls(tensors, manifest)
        key._validate(manifest_path)
        if stored_digest != key.digest():
            raise OwnerKeyError(
                f"{manifest_path}: the key hash does not match its contents: the key is corrupted or altered"
            )
        return key

    def _validate(self, where: Path) -> None:
        try:
            layers = self.manifest["layers"]
            for layer in layers:
                path, channels = layer["norm"], int(layer["channels"])
                parts = self.layer_tensors(path)
                has_mlp = (
                    layer.get("branch", PassportAwareBranch.branch_kind) == PassportAwareBranch.branch_kind
                )
                needed = ("passport_gamma", "passport_beta", "signature") + (
                    ("mlp.0.weight", "mlp.2.weight") if has_mlp else ()
                )
                for name in needed:
                    if name not in parts:
                        raise OwnerKeyError(
                            f"{where}: layer {path!r} has no tensor {name!r} in key.safetensors"
                        )
                if tuple(parts["signature"].shape) != (channels,):
                    raise OwnerKeyError(
                        f"{where}: layer {path!r} signature has shape {tuple(parts['signature'].shape)}, "
                        f"expected ({channels},)"
                    )
                if (
                    parts["passport_gamma"].shape != parts["passport_beta"].shape
                    or parts["passport_gamma"].shape[0] != 1
                ):
                    raise OwnerKeyError(
                        f"{where}: layer {path!r} passports have shapes "
                        f"{tuple(parts['passport_gamma'].shape)}/{tuple(parts['passport_beta'].shape)}"
                    )
                if has_mlp and (
                    parts["mlp.0.weight"].shape[1] != channels or parts["mlp.2.weight"].shape[0] != channels
                ):
                    raise OwnerKeyError(f"{where}: layer {path!r} MLP does not map {channels} channels")
            for layer in self.statistics_layers:
                parts = self.layer_tensors(layer["norm"])
                for name in ("branch_norm.running_mean", "branch_norm.running_var"):
                    if tuple(parts.get(name, torch.empty(0)).shape) != (int(layer["channels"]),):
                        raise OwnerKeyError(
                            f"{where}: statistics layer {layer['norm']!r} has no {name} of "
                            f"{layer['channels']} channels"
                        )
            trigger = self.manifest.get("trigger")
            if trigger:
                inputs, labels = self.tensors.get("trigger.inputs"), self.tensors.get("trigger.labels")
                if (
                    inputs is None
                    or labels is None
                    or len(inputs) != int(trigger["count"])
                    or len(labels) != len(inputs)
                ):
                    raise OwnerKeyError(
                        f"{where}: the trigger set in key.safetensors does not match its manifest entry"
                    )
        except (KeyError, TypeError, ValueError) as error:
            raise OwnerKeyError(f"{where}: malformed manifest ({error!r}); the key is corrupted") from error


def _binding_of(model: nn.Module) -> dict[str, Any]:
    """How the model's bits were chosen (set by ``protect``): hash-bound to an identity, or text."""
    binding = getattr(model, "passportnorm_signature", None) or {"mode": "text", "identity": None}
    entry = {"mode": binding["mode"], "identity": binding.get("identity")}
    if binding["mode"] == "hash":
        entry.update(hash="shake_256", domain=DOMAIN.decode())
    return entry


def _secret_seed_of(model: nn.Module) -> dict[str, str] | None:
    stamp = getattr(model, "passportnorm_secret_seed", None)
    return {"source": stamp["source"], "value": str(stamp["value"])} if stamp else None


def extract_key(
    model: nn.Module,
    config: dict[str, Any] | None = None,
    seeds: dict[str, int] | None = None,
    trigger: TriggerSet | None = None,
) -> OwnerKey:
    """The owner key of a protected model (its branch state), with the fingerprint of its release."""
    layers = _require_protected(model, "yield an owner key")
    tensors: dict[str, Tensor] = {}
    described = []
    message_parts: list[tuple[int, Tensor]] = []
    for path, layer in layers.items():
        for name, value in layer.state_dict().items():
            if name.startswith(_BRANCH_PREFIXES):
                tensors[f"{path}.{name}"] = value.detach().cpu().clone()
        described.append(
            {
                "norm": path,
                "producer": layer.producer_path,
                "norm_type": original_class(layer.norm).__name__,
                "producer_type": type(layer.producer).__name__,
                "channels": layer.channels,
                "passport_shape": list(layer.passport_gamma.shape),
                "alpha": layer.alpha,
                "margin": layer.margin,
                "branch": layer.branch_kind,
            }
        )
        if int(layer.message_bits):
            message_parts.append(
                (int(layer.message_offset), layer.signature[: int(layer.message_bits)].cpu())
            )
    statistics = []
    for path, layer in statistics_layers(model).items():
        for name, value in layer.branch_norm.state_dict().items():
            tensors[f"{path}.branch_norm.{name}"] = value.detach().cpu().clone()
        statistics.append(
            {"norm": path, "norm_type": original_class(layer.norm).__name__, "channels": layer.channels}
        )
    message = torch.cat(
        [bits for _, bits in sorted(message_parts, key=lambda part: part[0])] or [torch.empty(0)]
    )
    message_bits = int(message.numel())
    text = Signature.decode_text(message) if message_bits and message_bits % 8 == 0 else None
    trigger_info = None
    if trigger is not None:
        tensors["trigger.inputs"] = trigger.inputs.detach().cpu().clone()
        tensors["trigger.labels"] = trigger.labels.detach().cpu().clone()
        trigger_info = {"count": len(trigger), "num_classes": trigger.num_classes, "source": trigger.source}
    return OwnerKey(
        tensors,
        {
            "trigger": trigger_info,
            "format": KEY_FORMAT,
            "version": KEY_VERSION,
            "layers": described,
            "statistics_layers": statistics,
            "signature": {
                "text": text,
                "message_bits": message_bits,
                "total_bits": sum(d["channels"] for d in described),
                **_binding_of(model),
            },
            "seeds": seeds or {},
            # where the passports' seed came from: "os-csprng" (secret) or "user" (an experiment's fixed seed)
            "secret_seed": _secret_seed_of(model),
            "config": config or {},
            "sha256_released_weights": released_fingerprint(strip(model)),
        },
    )


def _statistics_branch(
    modules: dict[str, nn.Module], layer: dict[str, Any], parts: dict[str, Tensor]
) -> AwareStatistics:
    """The suspect's norm at ``layer["norm"]`` with the key's passport-aware statistics beside it."""
    path = layer["norm"]
    norm = modules.get(path)
    if norm is None:
        raise OwnerKeyError(f"the key is for another architecture: the model has no module {path!r}")
    if (
        type(norm).__name__ != layer["norm_type"]
        or not needs_aware_statistics(norm)
        or norm.num_features != layer["channels"]
    ):
        raise OwnerKeyError(
            f"the key is for another architecture: {path!r} is a {type(norm).__name__} with "
            f"{getattr(norm, 'num_features', '?')} channels, the key expects a {layer['norm_type']} with {layer['channels']}"
        )
    branch = AwareStatistics(norm)
    statistics = {k[len("branch_norm.") :]: v for k, v in parts.items() if k.startswith("branch_norm.")}
    try:
        branch.branch_norm.load_state_dict(statistics)
    except RuntimeError as error:
        raise OwnerKeyError(
            f"the key's statistics for {path!r} do not fit a {type(norm).__name__}: {error}"
        ) from None
    return branch


def attach_key(model: nn.Module, key: OwnerKey) -> nn.Module:
    """A copy of ``model`` (a released or suspect model) with the key's branch put back on it.

    Raises OwnerKeyError naming the first layer where the model's architecture differs from
    the one the key was made for.
    """
    suspect = copy.deepcopy(model)
    modules = dict(suspect.named_modules())
    for layer in key.layers:
        norm_path, producer_path = layer["norm"], layer["producer"]
        norm, producer = modules.get(norm_path), modules.get(producer_path)
        if norm is None or producer is None:
            missing = norm_path if norm is None else producer_path
            raise OwnerKeyError(f"the key is for another architecture: the model has no module {missing!r}")
        if branch_of(norm) is not None:
            raise OwnerKeyError(
                f"{norm_path!r} already carries a passport-aware branch; attach keys to released models"
            )
        if type(norm).__name__ != layer["norm_type"] or unsupported_norm_reason(norm):
            raise OwnerKeyError(
                f"the key is for another architecture: {norm_path!r} is a {type(norm).__name__}, the key expects {layer['norm_type']}"
            )
        if type(producer).__name__ != layer["producer_type"] or not isinstance(producer, SUPPORTED_PRODUCERS):
            raise OwnerKeyError(
                f"the key is for another architecture: {producer_path!r} is a {type(producer).__name__}, "
                f"the key expects {layer['producer_type']}"
            )
        if norm_channels(norm) != layer["channels"]:
            raise OwnerKeyError(
                f"the key is for another architecture: {norm_path!r} has {norm_channels(norm)} channels, "
                f"the key expects {layer['channels']}; if the suspect was widened (dummy or split channels), "
                "pass the owner's release as --reference to align it"
            )
        parts = key.layer_tensors(norm_path)
        kind = layer.get("branch", PassportAwareBranch.branch_kind)
        if kind == PassportAwareBranch.branch_kind:
            branch = PassportAwareBranch(
                norm,
                producer,
                parts["passport_gamma"],
                parts["passport_beta"],
                parts["signature"],
                producer_path=producer_path,
                message_bits=int(parts.get("message_bits", torch.tensor(0))),
                message_offset=int(parts.get("message_offset", torch.tensor(0))),
                alpha=layer.get("alpha", 0.1),
                margin=layer.get("margin", 0.1),
            )
        elif kind in BRANCH_KINDS:
            branch = BRANCH_KINDS[kind](norm, producer, parts, layer)
        else:
            raise OwnerKeyError(
                f"the key's layer {norm_path!r} uses branch kind {kind!r}, which this version cannot rebuild"
            )
        try:
            branch.passport_responses()
        except RuntimeError as error:
            raise OwnerKeyError(
                f"the key is for another architecture: its passport for {producer_path!r} does not fit that layer ({error})"
            ) from None
        keyed = {k: v for k, v in parts.items() if k.startswith(("mlp.", "branch_norm."))}
        own = {k: v for k, v in branch.state_dict().items() if k.startswith(("mlp.", "branch_norm."))}
        if set(keyed) != set(own) or any(tuple(keyed[k].shape) != tuple(own[k].shape) for k in own):
            raise OwnerKeyError(
                f"the key's branch for {norm_path!r} does not match a {type(norm).__name__} branch"
            )
        branch.load_state_dict({**branch.state_dict(), **keyed})
        attach_branch(norm, branch)
    for layer in key.statistics_layers:
        attach_branch(
            modules[layer["norm"]], _statistics_branch(modules, layer, key.layer_tensors(layer["norm"]))
        )
    suspect.passportnorm_signature = {"mode": key.signature_mode, "identity": key.identity}
    return suspect
