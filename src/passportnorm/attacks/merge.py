"""Model merging: the stolen weights averaged with another model of the same architecture.

Threat model: the attacker has the released weights, the architecture and some labelled data of
the task (a held-out share), no key. Two partners, each averaged at every weight ``alpha`` in
``alphas`` (``(1 - alpha) * stolen + alpha * partner``, buffers too):

- ``finetuned``: the attacker's own copy of the stolen model, fine-tuned (FTAL) ``epochs`` at a
  large learning rate so that it moves away (a model soup of two relatives, Wortsman et al. 2022);
- ``independent``: a model the attacker trains from scratch on its share for ``epochs``, whose
  channels are first put in the stolen model's order by weight matching (Ainsworth et al., Git
  Re-Basin, ICLR 2023: each permutable chain's filters matched by the Hungarian method on their
  cosine, layer after layer; channels joined by a residual addition stay where they are).

Averaged running statistics describe neither model, so each merge's batch-norm statistics are
measured again on the attacker's data (a forward in training mode, no gradient). The owner
verifies every merge with the key, aligned to the release.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..capture import measuring_statistics
from ..channels import permutable_chains, permute_chain
from ..data.triggers import TriggerSet
from ..evaluation import accuracy
from ..key import OwnerKey
from ..pairing import find_pairs
from ..verify import VerdictRule, verify
from .evidence import require_data
from .finetune import OPTIMIZERS, finetune
from .registry import ATTACKER_LR, AttackContext, AttackResult, Option, register_attack

THREAT_MODEL = (
    "attacker: released weights, architecture and labelled task data (a held-out share); no key. "
    "Action: averages the stolen weights with {partners} (trained with {optimizer}) at weights {alphas}, "
    "batch-norm statistics measured again on its data. Owner: verifies each merge with the key, aligned "
    "to the release."
)
PARTNERS = ("finetuned", "independent")


@torch.no_grad()
def weight_match(model: nn.Module, reference: nn.Module, example: torch.Tensor) -> nn.Module:
    """A copy of ``model`` with every permutable chain's channels in the order that best matches
    ``reference``'s filters (the same function as ``model``)."""
    matched = copy.deepcopy(model).eval()
    modules, theirs = dict(matched.named_modules()), dict(reference.named_modules())
    pairs = find_pairs(matched, example).producer_pairs
    for chain in permutable_chains(matched, pairs):  # in forward order: a consumer's columns move first
        ours = modules[chain.pair.producer].weight.flatten(1)
        target = theirs[chain.pair.producer].weight.flatten(1)
        similarity = F.normalize(target, dim=1) @ F.normalize(ours, dim=1).T  # (reference, ours)
        _, order = linear_sum_assignment(similarity.cpu().double().numpy(), maximize=True)
        permute_chain(modules, chain, torch.as_tensor(order, device=ours.device))
    return matched


@torch.no_grad()
def average(first: nn.Module, second: nn.Module, alpha: float) -> nn.Module:
    """``(1 - alpha) * first + alpha * second``, parameter by parameter and buffer by buffer
    (counters, not being weights, are taken from ``first``)."""
    merged = copy.deepcopy(first)
    other = second.state_dict()
    for name, tensor in merged.state_dict().items():
        if tensor.is_floating_point():
            tensor.mul_(1 - alpha).add_(other[name].to(tensor), alpha=alpha)
    return merged


@torch.no_grad()
def remeasure_statistics(model: nn.Module, data: Dataset, batch_size: int = 256) -> nn.Module:
    """Batch-norm running statistics measured again over ``data`` (cumulative averages)."""
    with measuring_statistics(model):
        for x, *_ in DataLoader(data, batch_size=batch_size):
            model(x)
    return model


def partner_model(
    kind: str,
    released: nn.Module,
    fresh: nn.Module,
    attacker_data: Dataset,
    owner_test: Dataset,
    epochs: int,
    lr: float,
    seed: int,
    optimizer_name: str = "sgd",
) -> nn.Module:
    """The model the attacker merges with: its fine-tune of the stolen model, or a model of its own
    trained from scratch (``fresh``, its weights matched to the stolen model's)."""
    start = released if kind == "finetuned" else fresh
    tuned = finetune(
        start,
        None,
        attacker_data,
        owner_test,
        mode="ftal",
        epochs=epochs,
        lr=lr,
        seed=seed,
        optimizer_name=optimizer_name,
    )["model"]
    if kind == "finetuned":
        return tuned
    example = next(iter(DataLoader(attacker_data, batch_size=4)))[0]
    return weight_match(tuned, released, example)


def merge_attack(
    released: nn.Module,
    fresh: nn.Module,
    key: OwnerKey,
    attacker_data: Dataset,
    owner_test: Dataset,
    partners: list[str],
    alphas: list[float],
    epochs: int = 5,
    lr: float = 0.05,
    seed: int = 0,
    trigger: TriggerSet | None = None,
    rule: VerdictRule = VerdictRule(),
    optimizer_name: str = "sgd",
) -> dict[str, Any]:
    """One row per (partner, alpha): the merge's accuracy and the owner's verdict on it."""
    require_data(attacker_data)
    rows, kept = [], released
    for kind in partners:
        partner = partner_model(
            kind, released, fresh, attacker_data, owner_test, epochs, lr, seed, optimizer_name
        )
        for alpha in alphas:
            merged = remeasure_statistics(average(released, partner, alpha), attacker_data)
            report = verify(merged, key, data=owner_test, trigger=trigger, rule=rule, reference=released)
            rows.append(
                {
                    "partner": kind,
                    "alpha": alpha,
                    "partner_accuracy": accuracy(partner, owner_test),
                    "attacker_accuracy": accuracy(merged, owner_test),
                    "signature_detection": report.signature_detection,
                    "signature_p_value": report.signature_p_value,
                    "signature_log10_p_value": report.signature_log10_p_value,
                    "passport_aware_accuracy": report.passport_aware_accuracy,
                    "trigger_accuracy": report.trigger_accuracy,
                    "alignment_used": (report.alignment or {}).get("used"),
                    "verified": report.verified,
                }
            )
            kept = merged
    return {
        "attack": "merge",
        "threat_model": THREAT_MODEL.format(
            partners=" and ".join(partners),
            alphas=", ".join(f"{a:g}" for a in alphas),
            optimizer="SGD" if optimizer_name == "sgd" else "Adam",
        ),
        "rows": rows,
        "model": kept,
    }


@register_attack(
    "merge",
    "average the stolen weights with the attacker's fine-tune of them, or its own model, weights matched",
    options=(
        Option("partners", "comma-separated: finetuned, independent", default=list(PARTNERS), listed=True),
        Option("alphas", "comma-separated weights of the partner", float, [0.25, 0.5, 0.75], listed=True),
        Option(ATTACKER_LR.name, "the partner's learning rate (fine-tuning or training)", float, 0.05),
        Option(
            "optimizer",
            "the partner's optimizer (adam: a transformer's recipe)",
            default="sgd",
            choices=OPTIMIZERS,
        ),
    ),
)
def run_merge(context: AttackContext) -> AttackResult:
    from .. import zoo
    from ..errors import ConfigError

    partners = context.settings["partners"]
    unknown = [p for p in partners if p not in PARTNERS]
    if unknown:
        raise ConfigError(f"--partners {unknown[0]!r} is not one of {', '.join(PARTNERS)}")
    bad = [a for a in context.settings["alphas"] if not 0.0 <= a <= 1.0]
    if bad:
        raise ConfigError(f"--alphas {bad[0]:g} must be in [0, 1]: the partner's share of each weight")
    arch = context.meta["arch"]
    with torch.random.fork_rng():  # the attacker's own model starts from the attack's seed
        torch.manual_seed(context.seed)
        fresh = zoo.build(
            arch, trust_code=context.settings["arch"] == arch, **context.meta.get("model_config", {})
        )
    report = merge_attack(
        context.released,
        fresh,
        context.key,
        context.attacker,
        context.data.test,
        partners,
        sorted(context.settings["alphas"]),
        epochs=context.epochs,
        lr=context.settings["lr"],
        seed=context.seed,
        trigger=context.trigger,
        rule=context.rule,
        optimizer_name=context.settings["optimizer"],
    )
    model_is = f"the last merge ({partners[-1]}, alpha {max(context.settings['alphas']):g})"
    return AttackResult.of(report, model=report.pop("model"), model_is=model_is)
