"""One registry pattern for every pluggable piece: models, datasets, passport kinds, branch kinds,
attacks and comparison schemes.

Each implementation registers itself with a decorator next to its code (Opacus' pattern), keyed by
name; a registry names the modules that hold its built-in entries and imports them on first use, so
no package has to import a module for its side effect. An unknown name is one typed error that
lists the choices.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from .errors import ConfigError, PassportNormError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> implementations (builders, loaders, classes, runners) with traits such as a task."""

    def __init__(
        self,
        what: str,
        modules: tuple[str, ...] = (),
        error: type[PassportNormError] = ConfigError,
        hint: str = "",
    ):
        self.what = what
        self._modules = modules  # imported on first use: importing them registers the built-in entries
        self._error = error
        self._hint = hint
        self._entries: dict[str, T] = {}
        self._traits: dict[str, dict[str, Any]] = {}

    def register(self, name: str, **traits: Any) -> Callable[[T], T]:
        """A decorator: ``@REGISTRY.register("name", task="image")`` above the implementation."""

        def add(entry: T) -> T:
            self._entries[name] = entry
            self._traits[name] = traits
            return entry

        return add

    def _load(self) -> None:
        for module in self._modules:
            importlib.import_module(module)

    def names(self) -> list[str]:
        """Every registered name, in registration order (sort where the order of imports may vary)."""
        self._load()
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def check(self, name: str) -> str:
        """``name`` itself when registered; else one line naming the choices (and the hint)."""
        if name not in self:
            hint = f", {self._hint}" if self._hint else ""
            raise self._error(f"unknown {self.what} {name!r}; choose one of {', '.join(self.names())}{hint}")
        return name

    def __getitem__(self, name: str) -> T:
        return self._entries[self.check(name)]

    def traits(self, name: str) -> dict[str, Any]:
        """What was registered with ``name`` besides the implementation (a task, a summary ...)."""
        return self._traits[self.check(name)]
