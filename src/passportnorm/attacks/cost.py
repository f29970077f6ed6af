"""What an attack cost the attacker, measured while it runs: its own seconds (wall time less the
evaluator's measurements, stopwatch.py) and how many distinct training samples it read. Set
beside what training the model from scratch costs on the same machine, this is the field's
second question about a removal (Lukas et al., S&P 2022): was it cheaper than not stealing?
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from torch.utils.data import Subset

from ..stopwatch import evaluation_seconds

__all__ = ["AttackCost", "ReadCounter", "timed"]

T = TypeVar("T")


class ReadCounter(Subset):
    """The attacker's share, counting the distinct samples read from it (``read``)."""

    def __init__(self, share: Subset):
        super().__init__(share.dataset, share.indices)
        self.read: set[int] = set()

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, list):
            return self.__getitems__(index)
        self.read.add(int(index))
        return super().__getitem__(index)

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        self.read.update(int(i) for i in indices)
        return super().__getitems__(list(indices))


@dataclass(frozen=True)
class AttackCost:
    """One run of an attack: the attacker's seconds, the evaluator's, and the samples read."""

    attacker_seconds: float
    evaluation_seconds: float
    attacker_samples: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def timed(run: Callable[[], T]) -> tuple[T, float, float]:
    """``run()``, its wall seconds, and the seconds of it spent in measurements."""
    before, start = evaluation_seconds(), time.perf_counter()
    result = run()
    return result, time.perf_counter() - start, evaluation_seconds() - before
