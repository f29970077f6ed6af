"""Ambiguity attacks from the paper's code: forged passports that claim the owner's model.

Ambiguity I. Threat model: the attacker has the released weights and the owner's branch minus
the passports (MLPs and branch statistics, the worst case the paper considers), and a share of
the task data. Random U(-1,1) passports are optimised with cross-entropy through the passport-
aware branch; the model and MLPs stay frozen. The claim signs are whatever the forged passports
produce, so the claim stands or falls on the accuracy condition.

Ambiguity II. Threat model: the attacker also starts from the owner's passports (plus noise),
re-initialises the MLPs and trains them with the passports, towards a target signature with a
share ``flip`` of the owner's bits flipped, with a term pushing the passports away from the
owner's (cosine similarity above zero is penalised). The model stays frozen.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..branch import PassportAwareBranch
from ..errors import ConfigError
from ..evaluation import accuracy
from ..key import OwnerKey, attach_key, extract_key
from ..protect import passport_mode, protected_layers
from ..signature import claimed_bits
from ..verify import VerdictRule, verify
from .evidence import require_data
from .registry import AttackContext, AttackResult, Option, Plot, register_attack

THREAT_I = (
    "attacker: released weights, the owner's MLPs and branch statistics (not the passports), and a share of "
    "the "
    "task data. Action: optimise random passports with cross-entropy, model and MLPs frozen."
)
THREAT_II = (
    "attacker: released weights, the owner's passports as a starting point, and a share of the task data. "
    "Action: "
    "train passports and re-initialised MLPs with cross-entropy + sign loss to a target signature with "
    "{flip:.0%} of "
    "the owner's bits flipped + a push away from the owner's passports; model frozen."
)


def _prepare(released: nn.Module, key: OwnerKey) -> tuple[nn.Module, list[PassportAwareBranch]]:
    suspect = attach_key(released, key).eval()
    for parameter in suspect.parameters():
        parameter.requires_grad_(False)
    return suspect, list(protected_layers(suspect).values())


def _optimise(
    suspect: nn.Module, tensors: list[Tensor], data: Dataset, epochs: int, lr: float, seed: int, extra
) -> None:
    require_data(data)
    for tensor in tensors:
        tensor.requires_grad_(True)
    optimizer = torch.optim.Adam(tensors, lr=lr)
    loader = DataLoader(data, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(seed))
    suspect.eval()  # frozen statistics everywhere, the branch's included
    with passport_mode(suspect):
        for _ in range(epochs):
            for x, y in loader:
                loss = F.cross_entropy(suspect(x), y) + extra()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    for tensor in tensors:
        tensor.requires_grad_(False)


def _claim(released: nn.Module, suspect: nn.Module, owner_test: Dataset, rule: VerdictRule) -> dict[str, Any]:
    forged_key = extract_key(suspect, config={"forged": True})
    report = verify(released, forged_key, data=owner_test, rule=rule)
    with passport_mode(suspect):
        forged_accuracy = accuracy(suspect, owner_test)
    return {"forged_key": forged_key, "report": report, "forged_accuracy": forged_accuracy}


def ambiguity_one(
    released: nn.Module,
    key: OwnerKey,
    attacker_data: Dataset,
    owner_test: Dataset,
    epochs: int = 3,
    lr: float = 0.01,
    seed: int = 0,
    rule: VerdictRule = VerdictRule(),
) -> dict[str, Any]:
    suspect, layers = _prepare(released, key)
    gen = torch.Generator().manual_seed(seed)
    passports = []
    with torch.no_grad():
        for layer in layers:
            shape = layer.passport_gamma.shape
            layer.set_passports(*(torch.rand(shape, generator=gen) * 2 - 1 for _ in range(2)))
            passports += [layer.passport_gamma, layer.passport_beta]
    with passport_mode(suspect):
        before = accuracy(suspect, owner_test)
    _optimise(suspect, passports, attacker_data, epochs, lr, seed, lambda: 0.0)
    with torch.no_grad():
        for layer in layers:  # the claim: whatever signs the forged passports give
            layer.set_signature(claimed_bits(layer.passport_responses()[0]))
    claim = _claim(released, suspect, owner_test, rule)
    report = claim["report"]
    return {
        "attack": "ambiguity1",
        "threat_model": THREAT_I,
        "forged_accuracy_before": before,
        "forged_accuracy": claim["forged_accuracy"],
        "released_accuracy": accuracy(released, owner_test),
        "forged_signature_detection": report.signature_detection,
        "forged_verified": report.verified,
        "forged_key": claim["forged_key"],
    }


def forge_flipped_signature(
    suspect: nn.Module,
    attacker_data: Dataset,
    flip: float = 0.1,
    epochs: int = 3,
    lr: float = 0.01,
    push: float = 1.0,
    noise: float = 0.1,
    seed: int = 0,
) -> dict[str, Any]:
    """Ambiguity II on a model that carries a branch (frozen; its passports, signatures and MLPs are
    overwritten in place): passports from the owner's plus noise, MLPs (if the scheme has them)
    re-initialised, trained to a target with a share ``flip`` of the owner's bits flipped."""
    if not 0.0 <= flip <= 1.0:
        raise ConfigError(f"flip share {flip} must be in [0, 1]")
    for parameter in suspect.parameters():
        parameter.requires_grad_(False)
    layers = list(protected_layers(suspect).values())
    gen = torch.Generator().manual_seed(seed)
    owner_passports, forged_passports, mlp_weights, owner_bits = [], [], [], []
    with torch.no_grad():
        for layer in layers:
            owner_bits.append(layer.signature.clone())
            flips = torch.rand(layer.channels, generator=gen) < flip
            layer.set_signature(torch.where(flips, -layer.signature, layer.signature))
            owner = [layer.passport_gamma.clone(), layer.passport_beta.clone()]
            layer.set_passports(*(p + noise * torch.randn(p.shape, generator=gen) for p in owner))
            owner_passports += owner
            forged_passports += [layer.passport_gamma, layer.passport_beta]
            layer.reset_mlp(gen)
            mlp_weights += [m.weight for m in layer.mlp.modules() if isinstance(m, nn.Linear)]

    def cosine(a: Tensor, b: Tensor) -> Tensor:
        return F.cosine_similarity(a.flatten(), b.flatten(), dim=0)

    def extra() -> Tensor:
        zero = torch.zeros(())  # a tensor start: the same left-to-right sum, typed as a tensor
        sign = sum((layer.sign_loss() for layer in layers), zero)
        away = sum((F.relu(cosine(p, o)) for p, o in zip(forged_passports, owner_passports)), zero)
        return sign + push * away

    _optimise(suspect, forged_passports + mlp_weights, attacker_data, epochs, lr, seed, extra)
    target = torch.cat([layer.signature.cpu() for layer in layers])
    with torch.no_grad():
        reached = torch.cat([layer.extracted_bits().cpu() for layer in layers])
        cosines = [cosine(p, o) for p, o in zip(forged_passports, owner_passports)]
        similarity = float(sum(cosines, torch.zeros(())) / len(owner_passports))
    owner_signature = torch.cat(owner_bits).cpu()
    return {
        "target_detection": float((reached == target).float().mean()),
        "bit_dissimilarity_to_owner": float((reached != owner_signature).float().mean()),
        "mean_cosine_to_owner_passports": similarity,
    }


def ambiguity_two(
    released: nn.Module,
    key: OwnerKey,
    attacker_data: Dataset,
    owner_test: Dataset,
    flip: float = 0.1,
    epochs: int = 3,
    lr: float = 0.01,
    push: float = 1.0,
    noise: float = 0.1,
    seed: int = 0,
    rule: VerdictRule = VerdictRule(),
) -> dict[str, Any]:
    suspect, _ = _prepare(released, key)
    forged = forge_flipped_signature(suspect, attacker_data, flip, epochs, lr, push, noise, seed)
    claim = _claim(released, suspect, owner_test, rule)
    return {
        "attack": "ambiguity2",
        "threat_model": THREAT_II.format(flip=flip),
        "flip": flip,
        "forged_accuracy": claim["forged_accuracy"],
        "released_accuracy": accuracy(released, owner_test),
        **forged,
        "forged_verified": claim["report"].verified,
        "forged_key": claim["forged_key"],
    }


def _as_row(report: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in report.items() if k not in ("attack", "threat_model")}


@register_attack(
    "ambiguity1", "train passports of one's own for the released model, signature random", share=0.1
)
def run_ambiguity_one(context: AttackContext) -> AttackResult:
    report = ambiguity_one(
        context.released,
        context.key,
        context.attacker,
        context.data.test,
        epochs=context.epochs,
        seed=context.seed,
        rule=context.rule,
    )
    forged_key = report.pop("forged_key")
    return AttackResult.of(report, [_as_row(report)], forged_key=forged_key)


@register_attack(
    "ambiguity2",
    "train passports for a target signature: the owner's with a share of its bits flipped",
    options=(
        Option(
            "flips",
            "comma-separated shares of the owner's bits flipped",
            float,
            [0, 0.1, 0.25, 0.5],
            listed=True,
        ),
    ),
    share=0.1,
)
def run_ambiguity_two(context: AttackContext) -> AttackResult:
    flips, rows, threat = context.settings["flips"], [], ""
    forged_key = None
    for flip in flips:
        report = ambiguity_two(
            context.released,
            context.key,
            context.attacker,
            context.data.test,
            flip=flip,
            epochs=context.epochs,
            seed=context.seed,
            rule=context.rule,
        )
        forged_key, threat = report.pop("forged_key"), report["threat_model"]
        rows.append(_as_row(report))
    curve = Plot(
        "ambiguity2.png",
        flips,
        {
            "forged accuracy": [r["forged_accuracy"] for r in rows],
            "target signature detection": [r["target_detection"] for r in rows],
            "bit dissimilarity to owner": [r["bit_dissimilarity_to_owner"] for r in rows],
        },
        "share of the owner's bits flipped in the target",
        "ambiguity II",
    )
    return AttackResult("ambiguity2", threat, rows, forged_key=forged_key, plots=[curve])
