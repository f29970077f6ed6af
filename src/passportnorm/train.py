"""Trainer: the paper's schedules for protected models, plain training for baselines, exact resume.

``schedule="alternate"``: after each passport-free step on a batch, passport-aware steps on the
same batch so that a share ``ratio`` of all steps trains the passport-aware branch (0.5: one each, the
paper's default). With ``aware_optimizer="shared"`` both kinds of step move one SGD state (its
momentum mixes the two losses, and weights both paths use are decayed in both steps); with
``"separate"`` the passport-aware steps keep their own momentum and decay only the branch's own
weights, so the shared weights see the same weight decay per batch as a plain model.
``schedule="interleave"``: one step per batch, passport-aware on a share ``ratio`` of the
batches and passport-free on the rest: half the cost of ``alternate``, for fine-tuning a model
whose branches already start where they should (retrofit.py).
``schedule="joint"``: both losses in one step, as the original code does. A plain (unprotected)
model trains with passport-free steps only, through the same code, so that baselines get the
same data order, augmentation, optimiser and budget.

Each epoch draws its data order, augmentation and trigger picks from ``(seed, epoch)``, and a
checkpoint (model, optimiser, scheduler, RNG state, history) is written atomically after every
epoch, so an interrupted run resumes to the same weights as an uninterrupted one.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

from .choices import AwareOptimizer, LrSchedule, Optimizer, Precision, Schedule, check_choices, words
from .data.registry import DatasetSplits
from .data.triggers import TriggerSet
from .detection import signature_detection
from .distributed import World, check_batch
from .errors import ConfigError, TrainingError
from .evaluation import accuracy, perplexity
from .fileio import read_checkpoint, write_checkpoint
from .protect import is_protected, passport_mode, protected_layers
from .schedule import PassportSchedule

__all__ = ["TrainConfig", "Trainer"]

# alternate: the paper's free step then aware step; joint: one backward over both (the original
# code, and DeepIPR V2); aware: passport-aware steps only (DeepIPR V1, whose model has no free branch)
SCHEDULES = words(Schedule)
AWARE_OPTIMIZERS = words(AwareOptimizer)
# the published recipes: SGD with cosine decay (ours), with MultiStepLR (DeepIPR's and the PAN paper's image
# runs), Adam with StepLR (the PAN paper's PointNet)
OPTIMIZERS = words(Optimizer)
LR_SCHEDULES = words(LrSchedule)
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # autocast dtype of the forwards


def loader_workers() -> int:
    """Worker processes that decode a lazily read dataset: all cores but one, at most 8."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


@dataclass
class TrainConfig:
    epochs: int = 8
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    optimizer: Optimizer = "sgd"  # or "adam" (momentum unused)
    lr_schedule: LrSchedule = (
        "cosine"  # cosine to zero; multistep: x lr_gamma at lr_milestones; step: every lr_step
    )
    lr_milestones: tuple[int, ...] = ()  # epochs (multistep)
    lr_step: int = 0  # epochs (step)
    lr_gamma: float = 0.1
    schedule: Schedule = "alternate"
    ratio: float = 0.5
    sign_weight: float = 1.0
    triggers_per_batch: int = 2
    seed: int = 0
    aware_optimizer: AwareOptimizer = "shared"  # or "separate" (alternate schedule): see the module docstring
    precision: Precision = (
        "fp32"  # bf16/fp16: forwards under autocast (fp16 with a GradScaler); passport responses stay fp32
    )

    def __post_init__(self) -> None:
        self.lr_milestones = tuple(int(m) for m in self.lr_milestones)  # a YAML list compares as the tuple

    def validate(self, device: torch.device | None = None) -> None:
        check_choices(self)
        if not 0.0 <= self.ratio < 1.0:
            raise ConfigError(
                f"ratio {self.ratio} must be in [0, 1): it is the share of steps that train the "
                "passport-aware branch"
            )
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        self._validate_recipe()
        if self.precision == "fp16" and device is not None and device.type != "cuda":
            raise ConfigError(
                f"--precision fp16 needs a CUDA device (this run is on {device}); on a CPU use "
                "--precision bf16, which needs no loss scaling"
            )

    def _validate_recipe(self) -> None:
        if self.optimizer == "adam" and self.aware_optimizer == "separate":
            raise ConfigError(
                "aware_optimizer 'separate' is an SGD state; use optimizer sgd or aware_optimizer shared"
            )
        milestones = list(self.lr_milestones)  # none: a constant rate, as the authors' code without steps
        if milestones != sorted(set(milestones)) or any(m < 1 for m in milestones):
            raise ConfigError(
                f"lr_schedule multistep needs increasing lr_milestones (epochs >= 1), got {milestones}"
            )
        if self.lr_schedule == "step" and self.lr_step < 1:
            raise ConfigError(f"lr_schedule step needs lr_step >= 1 (epochs), got {self.lr_step}")
        if not 0 < self.lr_gamma <= 1:
            raise ConfigError(f"lr_gamma must be in (0, 1], got {self.lr_gamma}")


@dataclass
class _StepState:
    sign_losses: list[float] = field(default_factory=list)


class Trainer:
    """Trains ``model`` (protected or plain) on ``data``; see the module docstring for the schedules."""

    def __init__(
        self,
        model: nn.Module,
        data: DatasetSplits,
        config: TrainConfig = TrainConfig(),
        trigger: TriggerSet | None = None,
        out_dir: str | Path | None = None,
        device: torch.device | str = "cpu",
        world: World | None = None,
    ):
        self.device = torch.device(device)
        config.validate(self.device)
        check_batch(config.batch_size, world)
        self.config = config
        self.world = world
        self.model = model.to(self.device)
        # forwards go through DDP (gradients averaged across ranks); everything else reads the model itself.
        # find_unused_parameters: a free step leaves the branch MLPs without gradients, an aware step the
        # norms' own affine (README, "several processes")
        self.net = (
            self.model
            if world is None
            else torch.nn.parallel.DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True,
            )
        )
        self.data = data
        self.trigger = trigger.to(self.device) if trigger is not None else None
        self.protected = is_protected(model)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.steps_per_epoch = math.ceil(len(data.train) / config.batch_size)
        self.optimizer = self._optimizer(model)
        self.scheduler = self._lr_schedule(self.optimizer)
        self.aware_optimizer: torch.optim.Optimizer | None = None
        self.aware_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        separate = config.aware_optimizer == "separate"
        if self.protected and config.schedule in ("alternate", "interleave") and separate:
            self.aware_optimizer = self._branch_decayed_sgd(model)
            self.aware_scheduler = self._lr_schedule(self.aware_optimizer)
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        self._state = _StepState()
        self._loss_scale = 1.0  # this rank's share of the global batch, times the number of ranks
        self._schedule: PassportSchedule | None = (
            PassportSchedule(model, ratio=config.ratio) if self.protected else None
        )
        # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.precision == "fp16")

    def _autocast(self):
        """The forwards' precision (a no-op for fp32)."""
        dtype = PRECISIONS[self.config.precision]
        return torch.autocast(device_type=self.device.type, dtype=dtype, enabled=dtype is not None)

    def _optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        config = self.config
        if config.optimizer == "adam":
            return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        return torch.optim.SGD(
            model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )

    def _lr_schedule(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        """Stepped once per optimisation step, so epochs given in the recipe become step counts."""
        config, steps = self.config, self.steps_per_epoch
        if config.lr_schedule == "multistep":
            milestones = [epoch * steps for epoch in config.lr_milestones]
            return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=config.lr_gamma)
        if config.lr_schedule == "step":
            return torch.optim.lr_scheduler.StepLR(optimizer, config.lr_step * steps, gamma=config.lr_gamma)
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * steps)

    def _branch_decayed_sgd(self, model: nn.Module) -> torch.optim.SGD:
        """SGD for passport-aware steps: weight decay on the branch MLPs only (the free steps decay the
        rest)."""
        branch = {id(p) for layer in protected_layers(model).values() for p in layer.mlp.parameters()}
        params = list(model.parameters())
        groups = [
            {"params": [p for p in params if id(p) in branch], "weight_decay": self.config.weight_decay},
            {"params": [p for p in params if id(p) not in branch], "weight_decay": 0.0},
        ]
        return torch.optim.SGD(groups, lr=self.config.lr, momentum=self.config.momentum)

    # one optimisation unit -------------------------------------------------------------
    def _optimise(self, loss: Tensor, where: str, optimizer: torch.optim.Optimizer | None = None) -> None:
        if not torch.isfinite(loss):
            raise TrainingError(
                f"{where} loss became {loss.item()} at epoch {self.epoch + 1}; lower --lr (now "
                f"{self.config.lr}) "
                "or --sign-weight, or resume from the last checkpoint"
            )
        optimizer = optimizer or self.optimizer
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()

    def _free_loss(self, x: Tensor, y: Tensor) -> Tensor:
        with self._autocast():
            return F.cross_entropy(self.net(x), y) * self._loss_scale

    def _aware_loss(self, x: Tensor, y: Tensor) -> Tensor:
        with passport_mode(self.model):
            with self._autocast():
                task = F.cross_entropy(self.net(x), y) * self._loss_scale
            # on fp32 responses (PassportAwareBranch.passport_responses)
            penalty = self._aware_schedule().sign_loss()
        self._state.sign_losses.append(penalty.item())
        return task + self.config.sign_weight * penalty

    def _aware_schedule(self) -> PassportSchedule:
        if self._schedule is None:
            raise TrainingError("passport-aware steps need a protected model")
        return self._schedule

    def step(self, batch: tuple[Tensor, Tensor]) -> dict[str, float]:
        """One scheduled unit on ``batch`` (the LR scheduler is stepped once); returns its losses."""
        self.model.train()
        x, y = (t.to(self.device) for t in batch)
        losses: dict[str, float] = {}
        if not self.protected:
            loss = self._free_loss(x, y)
            self._optimise(loss, "training")
            losses["free"] = loss.item()
        elif self.config.schedule == "aware":
            aware = self._aware_loss(x, y)
            self._optimise(aware, "passport-aware")
            losses["aware"] = aware.item()
        elif self.config.schedule == "joint":
            free = self._free_loss(x, y)
            total = free + self._aware_loss(x, y)
            self._optimise(total, "joint")
            losses.update(free=free.item(), total=total.item())
        elif self.config.schedule == "interleave" and self._aware_schedule().aware_in_place():
            aware = self._aware_loss(x, y)
            self._optimise(aware, "passport-aware", self.aware_optimizer)
            losses["aware"] = aware.item()
        elif self.config.schedule == "interleave":
            free = self._free_loss(x, y)
            self._optimise(free, "passport-free")
            losses["free"] = free.item()
        else:
            free = self._free_loss(x, y)
            self._optimise(free, "passport-free")
            losses["free"] = free.item()
            for _ in self._aware_schedule().aware_steps():
                aware = self._aware_loss(x, y)
                self._optimise(aware, "passport-aware", self.aware_optimizer)
                losses["aware"] = aware.item()
        self.scheduler.step()
        if self.aware_scheduler is not None:
            self.aware_scheduler.step()
        return losses

    # epochs ----------------------------------------------------------------------------
    def _epoch_generator(self, epoch: int, stream: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch * 101 + stream)

    def _batches(self, epoch: int):
        order = torch.randperm(len(self.data.train), generator=self._epoch_generator(epoch, 0))
        augment_rng = self._epoch_generator(epoch, 1)
        trigger_rng = self._epoch_generator(epoch, 2)
        for x, y, global_count in self._ordered_batches(epoch, order, augment_rng):
            if self.trigger is not None and self.config.triggers_per_batch > 0:
                pick = torch.randint(
                    0, len(self.trigger), (self.config.triggers_per_batch,), generator=trigger_rng
                )
                global_count += len(pick)
                pick = pick if self.world is None else self.world.share(pick)
                x = torch.cat([x, self.trigger.inputs[pick].cpu()])
                y = torch.cat([y, self.trigger.labels[pick].cpu()])
            # DDP averages the ranks' mean losses; weighting each by its share of the global batch makes
            # that average the global batch's mean, also when the last batch does not split evenly
            self._loss_scale = 1.0 if self.world is None else len(y) * self.world.size / global_count
            yield x, y

    def _ordered_batches(self, epoch: int, order: Tensor, augment_rng: torch.Generator):
        """The epoch's batches in ``order`` with the size of the global batch each share belongs to: sliced
        from tensors in memory and augmented, or read by DataLoader workers from a dataset that decodes
        on access (an image folder), which draws its crops from the epoch. Every rank walks the same
        global batches and takes its share of each; in memory, the whole global batch is augmented
        first, so each sample gets the draw it gets in one process."""
        size = self.config.batch_size
        batches = [order[start : start + size] for start in range(0, len(order), size)]
        counts = [len(batch) for batch in batches]
        share = (lambda t: t) if self.world is None else self.world.share
        if isinstance(self.data.train, TensorDataset):
            images, labels = self.data.train.tensors
            for index, count in zip(batches, counts):
                x = images[index]
                x = x if self.data.augment is None else self.data.augment(x, augment_rng)
                yield share(x), share(labels[index]), count
            return
        batches = [share(batch) for batch in batches]
        if hasattr(self.data.train, "set_epoch"):
            self.data.train.set_epoch(epoch)
        loader = DataLoader(
            self.data.train, batch_sampler=[b.tolist() for b in batches], num_workers=loader_workers()
        )
        for (x, y), count in zip(loader, counts):
            yield (x if self.data.augment is None else self.data.augment(x, augment_rng)), y, count

    def evaluate(self) -> dict[str, Any]:
        """Passport-free (and -aware) test accuracy, signature detection, trigger accuracy."""
        loader = DataLoader(
            self.data.test,
            batch_size=256,
            num_workers=0 if isinstance(self.data.test, TensorDataset) else loader_workers(),
        )
        metrics: dict[str, Any] = {"passport_free_accuracy": accuracy(self.model, loader, self.device)}
        if self.data.task == "text":
            metrics["passport_free_perplexity"] = perplexity(self.model, loader, self.device)
        if self.protected:
            with passport_mode(self.model):
                metrics["passport_aware_accuracy"] = accuracy(self.model, loader, self.device)
            metrics["signature_detection"] = signature_detection(self.model).rate
        if self.trigger is not None:
            with torch.no_grad():
                self.model.eval()
                hits = self.trigger.hits(self.model(self.trigger.inputs).argmax(1))
            metrics["trigger_accuracy"] = hits / self.trigger.scored
        return metrics

    def fit(
        self,
        resume: bool = False,
        on_step: Callable[[int, int], None] | None = None,
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Train to ``config.epochs``; with ``resume`` continue from the checkpoint in ``out_dir``.

        ``on_step(epoch, step)`` is called after every unit (progress hooks, tests that interrupt);
        ``on_epoch(row)`` with each epoch's metrics as soon as its checkpoint is written (and, on
        resume, with the rows of the epochs already done), so logs show where a run is.
        """
        if resume:
            self.load_checkpoint()
            for row in self.history:
                if on_epoch is not None:
                    on_epoch(row)
        while self.epoch < self.config.epochs:
            epoch = self.epoch
            self._state.sign_losses.clear()
            start = time.perf_counter()
            bar = tqdm(
                self._batches(epoch),
                total=self.steps_per_epoch,
                desc=f"epoch {epoch + 1}/{self.config.epochs}",
                leave=False,
                dynamic_ncols=True,
                disable=None,
            )
            for step, batch in enumerate(bar):
                losses = self.step(batch)
                bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()})
                if on_step is not None:
                    on_step(epoch, step)
            seconds = time.perf_counter() - start
            row = {
                "epoch": epoch + 1,
                "seconds": seconds,
                "lr": self.scheduler.get_last_lr()[0],
                **self.evaluate(),
            }
            if self._state.sign_losses:
                row["sign_loss"] = sum(self._state.sign_losses) / len(self._state.sign_losses)
            self.history.append(row)
            self.epoch = epoch + 1
            self.save_checkpoint()
            if on_epoch is not None:
                on_epoch(row)
        return self.history

    # checkpoints -----------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path | None:
        return self.out_dir / "checkpoint.pt" if self.out_dir is not None else None

    def save_checkpoint(self) -> None:
        if self.checkpoint_path is None or self.out_dir is None:
            return
        if self.world is not None and not self.world.main:
            self.world.barrier()  # rank 0 writes; the others wait until the file is whole
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        payload = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "aware_optimizer": self.aware_optimizer.state_dict() if self.aware_optimizer is not None else {},
            "aware_scheduler": self.aware_scheduler.state_dict() if self.aware_scheduler is not None else {},
            "epoch": self.epoch,
            "history": self.history,
            "aware_credit": self._schedule.credit if self._schedule is not None else 0.0,
            "scaler": self.scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "config": asdict(self.config),
        }
        # a protected model's checkpoint holds its passports: secret like the key
        write_checkpoint(self.checkpoint_path, payload, owner_only=True)
        if self.world is not None:
            self.world.barrier()

    def load_checkpoint(self) -> None:
        path = self.checkpoint_path
        if path is None or not path.is_file():
            raise TrainingError(f"no checkpoint to resume from at {path}; run without --resume first")
        payload = read_checkpoint(path, asdict(self.config), asdict(TrainConfig()), map_location=self.device)
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        if self.aware_optimizer is not None and self.aware_scheduler is not None:
            self.aware_optimizer.load_state_dict(payload["aware_optimizer"])
            self.aware_scheduler.load_state_dict(payload["aware_scheduler"])
        self.epoch = int(payload["epoch"])
        self.history = list(payload["history"])
        if self._schedule is not None:
            self._schedule.credit = float(payload["aware_credit"])
        if payload.get("scaler"):
            self.scaler.load_state_dict(payload["scaler"])
        torch.set_rng_state(payload["torch_rng"].cpu())
        if torch.cuda.is_available() and payload["cuda_rng"]:
            torch.cuda.set_rng_state_all([s.cpu() for s in payload["cuda_rng"]])
