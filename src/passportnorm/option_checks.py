"""Every option checked like its flag, wherever it came from (flag, YAML config, Python).

A YAML file can hold ``epochs: ten`` or ``width: 0``, which argparse would have refused for a flag;
dataclasses take anything. :func:`typed_values` checks each value against its field's annotation
(ints widened to floats where a float is asked for) and :func:`check_ranges` the sizes, widths and
rates that must be positive, before any work, so a bad value is one ConfigError line naming the
option both ways (flag and config key) and what it takes, and nothing is written.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from .errors import ConfigError

__all__ = ["Range", "check_ranges", "option_label", "typed_values"]


def option_label(name: str) -> str:
    """How a user wrote the option: ``--batch-size`` on the command line, ``batch_size:`` in a config."""
    return f"{name} (--{name.replace('_', '-')}, or {name}: in --config)"


def _describe(kind: Any) -> str:
    origin = get_origin(kind)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(arm) for arm in get_args(kind))
    if origin is Literal:
        return "one of " + ", ".join(map(str, get_args(kind)))
    if kind is type(None):
        return "empty (null)"
    return {int: "a whole number", float: "a number", str: "text", bool: "true or false"}.get(
        kind, getattr(kind, "__name__", str(kind))
    )


def _fits(value: Any, kind: Any) -> tuple[bool, Any]:
    """(fits, the value as the field holds it)."""
    origin = get_origin(kind)
    if origin in (Union, types.UnionType):
        for arm in get_args(kind):
            ok, held = _fits(value, arm)
            if ok:
                return True, held
        return False, value
    if origin is Literal:
        return isinstance(value, str), value  # which word: check_choices names the choices
    if kind is type(None):
        return value is None, value
    if kind is bool:
        return isinstance(value, bool), value
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if kind is str:
        return isinstance(value, str), value
    if origin is not None:  # tuple[...], dict[...]: the container, its items are the owner's to check
        return isinstance(value, origin), value
    return isinstance(value, kind) if isinstance(kind, type) else True, value


def typed_values(cls: Any, values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` for dataclass ``cls``, each checked against its field's annotation."""
    hints = get_type_hints(cls)
    names = {spec.name for spec in dataclasses.fields(cls)}
    held = {}
    for name, value in values.items():
        if name not in names:
            held[name] = value  # unknown names: the caller's one line lists the known ones
            continue
        ok, held[name] = _fits(value, hints[name])
        if not ok:
            raise ConfigError(f"{option_label(name)} is {value!r}; it takes {_describe(hints[name])}")
    return held


@dataclasses.dataclass(frozen=True)
class Range:
    """The values an option takes: at least ``low`` (or above it, ``open_low``), below ``high``."""

    low: float
    open_low: bool = False
    high: float | None = None
    why: str = ""

    def admits(self, value: float) -> bool:
        above = value > self.low if self.open_low else value >= self.low
        return above and (self.high is None or value < self.high)

    def text(self) -> str:
        low = f"{'>' if self.open_low else '>='} {self.low:g}"
        return low + (f" and < {self.high:g}" if self.high is not None else "")


def check_ranges(options: Any, ranges: Mapping[str, Range]) -> None:
    """Each option named in ``ranges`` lies in its range (one line naming it and the fix, if not)."""
    for name, allowed in ranges.items():
        value = getattr(options, name)
        if value is not None and not allowed.admits(value):
            why = f" ({allowed.why})" if allowed.why else ""
            raise ConfigError(f"{option_label(name)} is {value!r}; it must be {allowed.text()}{why}")
