"""Transfer learning to another task: a new head, then all layers trained (RTAL) on the new task.

Threat model: the attacker has the released weights and labelled data of a different task (for
example mnist5k -> digits, or a split of the classes); no key. The owner verifies the
transferred model by its signature alone (the original task's accuracy no longer applies).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ..evaluation import accuracy
from ..key import OwnerKey
from ..verify import VerdictRule, verify
from .checkpoint import resume_state, save_state
from .evidence import require_data
from .finetune import last_layer
from .registry import AttackContext, AttackResult, Option, register_attack

THREAT_MODEL = (
    "attacker: released weights and labelled data of another task ({task}); no key. Action: new "
    "{classes}-way head, "
    "all layers trained {epochs} epochs (RTAL). Owner: signature-only verification."
)


def class_split(data: TensorDataset, classes: list[int]) -> TensorDataset:
    """The samples of ``classes``, relabelled 0..len(classes)-1 (a transfer task carved out of one
    dataset)."""
    x, y = data.tensors
    keep = torch.isin(y, torch.tensor(classes))
    mapping = {c: i for i, c in enumerate(classes)}
    return TensorDataset(x[keep], torch.tensor([mapping[int(v)] for v in y[keep]]))


def transfer(
    released: nn.Module,
    key: OwnerKey,
    target_train: Dataset,
    target_test: Dataset,
    num_classes: int,
    task: str = "another task",
    epochs: int = 5,
    lr: float = 0.01,
    seed: int = 0,
    rule: VerdictRule = VerdictRule(),
    checkpoint: str | Path | None = None,
) -> dict[str, Any]:
    """New head, RTAL on the new task; ``checkpoint`` makes an interrupted run resume from its last epoch."""
    require_data(target_train, "the attacker has no data for the new task")
    gen = torch.Generator().manual_seed(seed)
    model = copy.deepcopy(released)
    name, head = last_layer(model)
    new_head = nn.Linear(head.in_features, num_classes)
    bound = 1.0 / head.in_features**0.5
    with torch.no_grad():
        new_head.weight.uniform_(-bound, bound, generator=gen)
        new_head.bias.uniform_(-bound, bound, generator=gen)
    model.set_submodule(name, new_head)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    config = {"attack": "transfer", "task": task, "num_classes": num_classes, "lr": lr, "seed": seed}
    rows, start = resume_state(checkpoint, model, optimizer, [], config)
    for epoch in range(start, epochs + 1):
        model.train()
        order = torch.Generator().manual_seed(seed * 1_000_003 + epoch)  # replayable after a resume
        for x, y in DataLoader(target_train, batch_size=64, shuffle=True, generator=order):
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        report = verify(model.eval(), key, rule=rule)
        rows.append(
            {
                "epoch": epoch,
                "attacker_accuracy": accuracy(model, target_test),
                "signature_detection": report.signature_detection,
                "signature_p_value": report.signature_p_value,
                "signature_log10_p_value": report.signature_log10_p_value,
                "verified": report.verified,
            }
        )
        save_state(checkpoint, model, optimizer, rows, epoch, config)
    return {
        "attack": "transfer",
        "threat_model": THREAT_MODEL.format(task=task, classes=num_classes, epochs=epochs),
        "rows": rows,
        "verified_after": rows[-1]["verified"],
        "model": model,
    }


__all__ = ["class_split", "transfer"]


def default_transfer_target(dataset: str, task: str) -> str:
    """Another shipped dataset of the same kind: digits for images, shapes or digit clouds for point
    clouds."""
    if task == "pointcloud":
        return "mnist5k-points" if dataset == "shapes3d" else "shapes3d"
    return "digits"


@register_attack(
    "transfer",
    "re-train the released model's head for another task (transfer learning)",
    options=(
        Option("target_dataset", "the new task (default digits; shapes3d for point clouds)"),
        Option(
            "target_classes", "a class split of the owner's dataset instead, e.g. 5,6,7,8,9", int, listed=True
        ),
    ),
)
def run_transfer(context: AttackContext) -> AttackResult:
    from ..data import load_dataset

    data, keep = context.data, context.settings["target_classes"]
    if keep:
        train, test, count = class_split(data.train, keep), class_split(data.test, keep), len(keep)
        task = f"{context.dataset} classes {','.join(map(str, keep))}"
    else:
        name = context.settings["target_dataset"] or default_transfer_target(context.dataset, data.task)
        points = context.points if data.task == "pointcloud" else None
        target = load_dataset(name, seed=context.seed, points=points)
        train, test, count = target.train, target.test, target.num_classes
        task = f"{context.dataset} -> {target.name}"
    report = transfer(
        context.released,
        context.key,
        train,
        test,
        num_classes=count,
        task=task,
        epochs=context.epochs,
        seed=context.seed,
        rule=context.rule,
        checkpoint=context.out / "checkpoint.pt",
    )
    report["attacker_samples"] = len(train)  # every epoch reads the whole new task
    return AttackResult.of(report, model=report.pop("model"), num_classes=count, removal_applies=False)
