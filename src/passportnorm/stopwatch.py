"""Seconds spent measuring models (accuracy, verification), kept apart so that what an attack cost
the attacker counts only its own work (training, transforming): scoring the attacked model on the
owner's test data and verifying it with the key is the evaluator's work, which no attacker needs.

Only the outermost measurement counts (``verify`` measures accuracy itself); the count is per thread.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["evaluation_seconds", "measurement"]

F = TypeVar("F", bound=Callable[..., Any])
_state = threading.local()


def measurement(function: F) -> F:
    """Count the time ``function`` runs as evaluation (unless already inside a counted one)."""

    @functools.wraps(function)
    def counted(*args: Any, **kwargs: Any) -> Any:
        if getattr(_state, "inside", False):
            return function(*args, **kwargs)
        _state.inside, start = True, time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            _state.inside = False
            _state.seconds = evaluation_seconds() + time.perf_counter() - start

    return counted  # type: ignore[return-value]


def evaluation_seconds() -> float:
    """Seconds this thread has spent in measurements so far (differences time a stretch)."""
    return float(getattr(_state, "seconds", 0.0))
