"""PassportSchedule: the paper's alternating schedule for people who keep their own training loop.

    schedule = pn.PassportSchedule(protected, ratio=0.5)
    for x, y in loader:
        loss = F.cross_entropy(protected(x), y)            # passport-free step, as before
        optimizer.zero_grad(); loss.backward(); optimizer.step()
        for _ in schedule.aware_steps():                    # 0 or more passport-aware steps
            with schedule.aware():
                loss = schedule.with_sign_loss(F.cross_entropy(protected(x), y))
            optimizer.zero_grad(); loss.backward(); optimizer.step()

``ratio`` is the share of all steps that train the passport-aware branch (0.5: one after each
free step). The count is carried as a credit between batches, exactly as ``Trainer`` does, so
ratios like 0.25 (one aware step every third batch) work; ``state_dict`` carries it into your
checkpoints.

Under DistributedDataParallel wrap the protected model with ``find_unused_parameters=True``:
a free step leaves the branch MLPs without gradients and an aware step leaves the norm's own
affine parameters without them, and that flag is DDP's own mechanism for parameters a step does
not use (nothing is silenced). The producer weights that both forwards read get their two
gradient contributions summed by autograd before DDP reduces them, once per backward.
``aware()`` and ``with_sign_loss`` accept the DDP wrapper or the model itself.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from torch import Tensor, nn

from .errors import ConfigError, PassportWarning
from .protect import RESPONSE_LIMIT, capacity, passport_mode, response_outliers, sign_loss

__all__ = ["PassportSchedule"]


class PassportSchedule:
    """When to run a passport-aware step, and the loss it adds (see the module docstring)."""

    def __init__(self, model: nn.Module, ratio: float = 0.5, sign_weight: float = 1.0):
        if not 0.0 <= ratio < 1.0:
            raise ConfigError(
                f"ratio {ratio} must be in [0, 1): it is the share of steps that train the passport-aware "
                "branch"
            )
        self.model = getattr(model, "module", model)  # DistributedDataParallel keeps the model in .module
        self.ratio = float(ratio)
        self.sign_weight = float(sign_weight)
        self.credit = 0.0
        self._first_checked = False

    def aware_steps(self) -> range:
        """How many passport-aware steps follow the passport-free step just taken (call once per batch)."""
        self.credit += self.ratio / (1.0 - self.ratio)
        count = int(self.credit + 1e-9)
        self.credit -= count
        return range(count)

    def aware_in_place(self) -> bool:
        """Interleaved schedule: whether this batch's one step is passport-aware (``ratio`` of batches)."""
        self.credit += self.ratio
        aware = self.credit >= 1.0 - 1e-9
        self.credit -= float(aware)
        return aware

    @contextmanager
    def aware(self) -> Iterator[nn.Module]:
        """Run the model's passport-aware branch inside the block."""
        with passport_mode(self.model):
            yield self.model

    def with_sign_loss(self, task_loss: Tensor) -> Tensor:
        """``task_loss`` plus the weighted sign loss of the passport-aware forward just run."""
        return task_loss + self.sign_weight * self.sign_loss()

    def sign_loss(self) -> Tensor:
        """The (unweighted) sign loss of the passport-aware forward just run; checked once for range."""
        penalty = sign_loss(self.model)
        if not self._first_checked:
            self._first_checked = True
            self._check_first(penalty)
        return penalty

    def _check_first(self, penalty: Tensor) -> None:
        """Warn at the first aware step when the sign loss says the responses are out of range."""
        value = float(penalty.detach())
        outliers = response_outliers(self.model)
        if math.isfinite(value) and not outliers:
            return
        where = ", ".join(list(outliers)[:5]) or "no single layer"
        warnings.warn(
            f"the sign loss at the first passport-aware step is {value:.4g} "
            f"({value / capacity(self.model):.3g} per bit); responses beyond {RESPONSE_LIMIT:g} at {where}: "
            "training is likely to diverge (see the passports' docstring)",
            PassportWarning,
            stacklevel=3,
        )

    def state_dict(self) -> dict[str, float]:
        return {"credit": self.credit, "ratio": self.ratio, "sign_weight": self.sign_weight}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.credit, self.ratio, self.sign_weight = (
            float(state["credit"]),
            float(state["ratio"]),
            float(state["sign_weight"]),
        )
