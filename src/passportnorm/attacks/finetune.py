"""Fine-tuning removal attacks of Adi et al. (2018): FTLL, FTAL, RTLL, RTAL.

Threat model: the attacker has the released weights, the architecture and some labelled data of
the task (a held-out share), no key. FT = fine-tune, RT = re-initialise the last layer first;
LL = train the last layer only, AL = train all layers. The owner verifies after every epoch.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..choices import words
from ..data.triggers import TriggerSet
from ..errors import ConfigError
from ..evaluation import accuracy
from ..key import OwnerKey
from ..verify import VerdictRule, verify
from .checkpoint import resume_state, save_state
from .evidence import require_data
from .registry import AttackContext, AttackResult, Option, Plot, register_attack

FinetuneMode = Literal["ftll", "ftal", "rtll", "rtal"]
FINETUNE_MODES = words(FinetuneMode)

THREAT_MODEL = (
    "attacker: released weights, architecture and labelled task data (a held-out share); no key. "
    "Action: {mode} for {epochs} epochs (SGD lr {lr}). Owner: verifies with the key after each epoch."
)


def last_layer(model: nn.Module) -> tuple[str, nn.Linear]:
    """The classifier: the last Linear module in module order."""
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise ConfigError(f"{type(model).__name__} has no Linear layer to treat as the last layer")
    return found[-1]


def warmup_cosine(step: int, total: int, peak: float, warmup: float) -> float:
    """The learning rate at ``step`` of ``total``: linear up to ``peak`` over the ``warmup`` share,
    then a cosine down to 0 at the last step."""
    rise = max(1, round(warmup * total))
    if step < rise:
        return peak * (step + 1) / rise
    return 0.5 * peak * (1 + math.cos(math.pi * (step - rise) / max(1, total - rise)))


OPTIMIZERS = ("sgd", "adam")


def finetune(
    released: nn.Module,
    key: OwnerKey | None,
    attacker_data: Dataset,
    owner_test: Dataset,
    mode: FinetuneMode = "ftal",
    epochs: int = 5,
    lr: float = 0.01,
    batch_size: int = 64,
    seed: int = 0,
    trigger: TriggerSet | None = None,
    rule: VerdictRule = VerdictRule(),
    checkpoint: str | Path | None = None,
    after_step: Callable[[nn.Module], None] | None = None,
    reference: nn.Module | None = None,
    warmup: float | None = None,
    optimizer_name: str = "sgd",
) -> dict[str, Any]:
    """Run one fine-tuning attack; returns per-epoch rows and the attacked model under ``"model"``.

    ``after_step(model)`` runs after every optimizer step (fine-pruning keeps its pruned channels
    at zero with it); ``reference`` is passed to the owner's verification (alignment). With no
    ``key`` (a fine-tune of a model nobody protected) the rows hold the attacker's accuracy only.
    ``warmup`` (a share of the steps): the learning rate rises linearly to ``lr`` over it, then
    decays to 0 on a cosine (REFIT's schedule, refit.py); None: constant ``lr``, as Adi et al.
    ``optimizer_name``: ``sgd`` (momentum 0.9, Adi et al.) or ``adam`` (what a transformer's recipe
    trains with: an attacker who knows the architecture uses it).

    With ``checkpoint`` (a file path) the state is saved after every epoch and an interrupted
    attack continues from its last finished epoch when called again with the same arguments.
    """
    if mode not in FINETUNE_MODES:
        raise ConfigError(f"unknown fine-tuning mode {mode!r}; choose one of {', '.join(FINETUNE_MODES)}")
    require_data(attacker_data)
    model = copy.deepcopy(released)
    _, head = last_layer(model)
    generator = torch.Generator().manual_seed(seed)
    if mode.startswith("rt"):
        bound = 1.0 / head.in_features**0.5  # nn.Linear's default init, drawn from our generator
        with torch.no_grad():
            head.weight.uniform_(-bound, bound, generator=generator)
            if head.bias is not None:
                head.bias.uniform_(-bound, bound, generator=generator)
    params = list(head.parameters()) if mode.endswith("ll") else list(model.parameters())
    for parameter in model.parameters():
        parameter.requires_grad_(any(parameter is p for p in params))
    if optimizer_name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {optimizer_name!r}; choose one of {', '.join(OPTIMIZERS)}")
    optimizer = (
        torch.optim.Adam(params, lr=lr)
        if optimizer_name == "adam"
        else torch.optim.SGD(params, lr=lr, momentum=0.9)
    )

    def row(epoch: int) -> dict[str, Any]:
        if key is None:
            return {"epoch": epoch, "attacker_accuracy": accuracy(model, owner_test)}
        report = verify(model, key, data=owner_test, trigger=trigger, rule=rule, reference=reference)
        return {
            "epoch": epoch,
            "attacker_accuracy": accuracy(model, owner_test),
            "passport_aware_accuracy": report.passport_aware_accuracy,
            "signature_detection": report.signature_detection,
            "signature_p_value": report.signature_p_value,
            "signature_log10_p_value": report.signature_log10_p_value,
            "trigger_accuracy": report.trigger_accuracy,
            "verified": report.verified,
        }

    # what a resume must share (more epochs may be asked for: the run continues)
    config = {"attack": "finetune", "mode": mode, "lr": lr, "batch_size": batch_size, "seed": seed}
    if optimizer_name != "sgd":
        config["optimizer"] = optimizer_name
    if warmup is not None:  # the schedule spans the epochs asked for: a resume must ask for as many
        config.update(warmup=warmup, epochs=epochs)
    rows, start = resume_state(checkpoint, model, optimizer, [row(0)], config)
    per_epoch = len(DataLoader(attacker_data, batch_size=batch_size))  # batches in an epoch
    for epoch in range(start, epochs + 1):
        model.train() if mode.endswith("al") else model.eval()  # LL: frozen layers keep their statistics
        order = torch.Generator().manual_seed(seed * 1_000_003 + epoch)  # replayable after a resume
        loader = DataLoader(attacker_data, batch_size=batch_size, shuffle=True, generator=order)
        for batch, (x, y) in enumerate(loader):
            if warmup is not None:
                step = (epoch - 1) * per_epoch + batch
                for group in optimizer.param_groups:
                    group["lr"] = warmup_cosine(step, epochs * per_epoch, lr, warmup)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if after_step is not None:
                after_step(model)
        rows.append(row(epoch))
        save_state(checkpoint, model, optimizer, rows, epoch, config)
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    model.eval()
    return {
        "attack": f"finetune-{mode}",
        "threat_model": THREAT_MODEL.format(mode=mode.upper(), epochs=epochs, lr=lr),
        "rows": rows,
        "verified_after": rows[-1].get("verified"),
        "model": model,
    }


@register_attack(
    "finetune",
    "fine-tune the released model on the attacker's data (Adi et al.: FTLL, FTAL, RTLL, RTAL)",
    options=(Option("mode", "which layers are reset and trained", default="ftal", choices=FINETUNE_MODES),),
)
def run_finetune(context: AttackContext) -> AttackResult:
    mode = context.settings["mode"]
    report = finetune(
        context.released,
        context.key,
        context.attacker,
        context.data.test,
        mode=mode,
        epochs=context.epochs,
        seed=context.seed,
        trigger=context.trigger,
        rule=context.rule,
        checkpoint=context.out / "checkpoint.pt",
    )
    model, rows = report.pop("model"), report["rows"]
    curve = Plot(
        "finetune.png",
        [r["epoch"] for r in rows],
        {
            "attacker accuracy": [r["attacker_accuracy"] for r in rows],
            "signature detection": [r["signature_detection"] for r in rows],
            "passport-aware accuracy": [r["passport_aware_accuracy"] for r in rows],
        },
        "epoch",
        f"fine-tuning ({mode.upper()})",
    )
    return AttackResult.of(report, model=model, plots=[curve])
