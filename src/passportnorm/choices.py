"""Options that take one of a few words, as ``Literal`` types, and the one check of them at the API edge.

Each option dataclass (RunOptions, TrainConfig, CompareOptions) annotates such fields with these types
and calls :func:`check_choices` before any work, so a misspelt word is one line naming the option
and the words it takes, wherever it came from (flag, YAML config, Python).
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from .errors import ConfigError

__all__ = [
    "AUTO",
    "AwareOptimizer",
    "LayerPolicy",
    "LrSchedule",
    "NormKind",
    "Optimizer",
    "PassportKind",
    "LeverRole",
    "Precision",
    "Schedule",
    "SignatureMode",
    "Task",
    "check_choices",
    "words",
]

AUTO = "auto"  # "decide from the task": resolve_task fills such options in

Schedule = Literal["alternate", "joint", "aware", "interleave"]
AwareOptimizer = Literal["shared", "separate"]
Optimizer = Literal["sgd", "adam"]
LrSchedule = Literal["cosine", "multistep", "step"]
Precision = Literal["fp32", "bf16", "fp16"]
LayerPolicy = Literal["protect", "skip"]
SignatureMode = Literal["hash", "text"]
# which side of its norm a branch's weights sit on (norm.py): the layer that writes its input, the
# one that reads its output, or the last writer of the residual stream it reads (call_links.py)
LeverRole = Literal["producer", "consumer", "writer"]
PassportKind = Literal["random", "image", "shuffle"]
Task = Literal["image", "pointcloud", "text"]
NormKind = Literal["bn", "gn", "in"]


def words(kind: Any) -> tuple[str, ...]:
    """The words a Literal type (or a union holding Literals) admits; () for any other type."""
    if get_origin(kind) is Literal:
        return tuple(get_args(kind))
    if get_origin(kind) in (Union, types.UnionType):
        return tuple(word for member in get_args(kind) for word in words(member))
    return ()


def check_choices(options: Any) -> None:
    """Every string field of the dataclass ``options`` typed with Literal words holds one of them."""
    hints = get_type_hints(type(options))
    for spec in dataclasses.fields(options):
        allowed = words(hints[spec.name])
        value = getattr(options, spec.name)
        if allowed and isinstance(value, str) and value not in allowed:
            raise ConfigError(f"unknown {spec.name} {value!r}; choose {', '.join(allowed)}")
