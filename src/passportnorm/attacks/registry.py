"""The attacks ``passportnorm attack NAME`` runs: each registers, next to its implementation, a runner
that takes an :class:`AttackContext` and returns an :class:`AttackResult`, with the options it reads.

The CLI builds one sub-command per registered attack from these declarations, and ``run_attack``
validates the options against them before any model is loaded, so an option is spelled once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Subset

from ..data.registry import DatasetSplits, first_inputs
from ..data.triggers import TriggerSet
from ..errors import ConfigError
from ..key import OwnerKey
from ..registry import Registry
from ..verify import VerdictRule
from .cost import AttackCost

__all__ = [
    "ATTACKER_LR",
    "ATTACKS",
    "COMMON_OPTIONS",
    "Attack",
    "AttackContext",
    "AttackResult",
    "Option",
    "Plot",
    "register_attack",
]


@dataclass(frozen=True)
class Option:
    """One setting of an attack: ``--name-with-dashes`` on the command line, ``name=`` in Python.

    ``listed`` options are comma-separated values of ``kind`` (a list in Python)."""

    name: str
    help: str
    kind: type = str
    default: Any = None
    choices: tuple[str, ...] | None = None
    listed: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def parse(self, value: Any) -> Any:
        """The value as the attack uses it; a bad value is one line naming the flag."""
        if value is None:
            return self.default
        if self.listed:
            parts = value if isinstance(value, (list, tuple)) else str(value).split(",")
            try:
                return [self.kind(str(part).strip()) for part in parts]
            except ValueError:
                raise ConfigError(
                    f"{self.flag} {value!r} must be comma-separated {self.kind.__name__} values"
                ) from None
        if self.kind is bool:
            return bool(value)
        try:
            parsed = self.kind(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{self.flag} {value!r} must be a {self.kind.__name__}") from None
        if self.choices and parsed not in self.choices:
            raise ConfigError(f"{self.flag} {value!r} is not one of {', '.join(self.choices)}")
        return parsed


# the settings every attack takes; an attack may change their defaults (Attack.defaults)
COMMON_OPTIONS = (
    Option("dataset", "the owner's task data (default: the one recorded in the key)"),
    Option("data_dir", "the dataset's folder, for datasets read from disk"),
    Option("share", "the attacker's share of the training split", float, 0.5),
    Option("epochs", "attack epochs", int, 5),
    Option("seed", "the attacker's seed", int, 0),
    Option("arch", "the model code the folder names when it is your own (file.py:factory)"),
    Option(
        "ancestor",
        "the trained model a retrofit key records (released folder or weights file); without it a "
        "retrofit owner's claims are undecidable",
    ),
    Option(
        "allow_text_signatures",
        "judge with the paper's rule, which accepts text signatures (needed for text-mode keys)",
        bool,
        False,
    ),
)


# the learning rate of the attacks that train (reprotect and distill state their own default)
ATTACKER_LR = Option("lr", "the attacker's learning rate", float, 0.01)


@dataclass(frozen=True)
class Plot:
    """A curve of the attack, written as ``file`` (PNG) into the attack's folder."""

    file: str
    x: list[Any]
    series: dict[str, list[Any]]
    xlabel: str
    title: str


@dataclass
class AttackContext:
    """What every attack starts from: the released model, the owner's key, the task data and the
    attacker's share of it, and the settings (validated, defaults filled in)."""

    name: str
    released: nn.Module
    meta: dict[str, Any]
    key: OwnerKey
    key_dir: Path
    model_dir: Path
    data: DatasetSplits
    attacker: Subset
    out: Path
    settings: dict[str, Any]

    @property
    def dataset(self) -> str:
        """The owner's dataset by name."""
        return self.data.name

    @property
    def seed(self) -> int:
        return int(self.settings["seed"])

    @property
    def epochs(self) -> int:
        return int(self.settings["epochs"])

    @property
    def share(self) -> float:
        return float(self.settings["share"])

    @property
    def rule(self) -> VerdictRule:
        return VerdictRule(allow_text_signatures=bool(self.settings["allow_text_signatures"]))

    @property
    def trigger(self) -> TriggerSet | None:
        return self.key.trigger

    @property
    def example(self) -> torch.Tensor:
        """A few training inputs, for tracing and for checking that a changed model computes the same."""
        return first_inputs(self.data.train, 4)  # a folder's images are decoded on access

    @property
    def points(self) -> int | None:
        return self.key.config.get("points") or None


@dataclass
class AttackResult:
    """What an attack found: its table rows, its other numbers, and what it produced (a model, a
    forged key, a thief's claim) for ``verify`` or ``dispute`` to be pointed at."""

    attack: str
    threat_model: str
    rows: list[dict[str, Any]]
    numbers: dict[str, Any] = field(default_factory=dict)
    model: nn.Module | None = None
    model_is: str | None = None  # what model/ holds, where it is not simply "the attacked model"
    num_classes: int | None = None  # the model's new head, when the attack changed the task
    forged_key: OwnerKey | None = None
    thief_claim: tuple[OwnerKey, Any] | None = None  # the thief's key and certificate
    plots: list[Plot] = field(default_factory=list)
    table_rows: list[dict[str, Any]] | None = None  # what result.md shows, where it leaves columns out
    removal_applies: bool = True  # False where the attacked model serves another task (removal.py)
    original_accuracy: float | None = None  # the release's test accuracy, the removal rule's baseline
    cost: AttackCost | None = None  # measured by the runner (cost.py)

    @classmethod
    def of(
        cls, report: dict[str, Any], rows: list[dict[str, Any]] | None = None, **found: Any
    ) -> AttackResult:
        """From an attack function's report: its ``attack``, ``threat_model`` and ``rows`` (or
        ``rows`` given), every other entry kept as a number of the result."""
        numbers = dict(report)
        attack, threat_model = numbers.pop("attack"), numbers.pop("threat_model")
        listed = numbers.pop("rows", None)
        return cls(attack, threat_model, rows if rows is not None else listed, numbers, **found)

    def to_dict(self) -> dict[str, Any]:
        """The result as ``result.json`` holds it (without the run's options and folders)."""
        record = {"attack": self.attack, "threat_model": self.threat_model, **self.numbers, "rows": self.rows}
        if self.model_is:
            record["model_is"] = self.model_is
        if self.original_accuracy is not None:
            record["original_accuracy"] = self.original_accuracy
        if self.cost is not None:
            record["cost"] = self.cost.to_dict()
        return record


@dataclass(frozen=True)
class Attack:
    """A registered attack: its runner, a one-line summary, its own options, and its defaults for
    the common ones (``epochs``, ``share``)."""

    name: str
    run: Callable[[AttackContext], AttackResult]
    summary: str
    options: tuple[Option, ...] = ()
    defaults: dict[str, Any] = field(default_factory=dict)

    def all_options(self) -> tuple[Option, ...]:
        common = tuple(
            Option(o.name, o.help, o.kind, self.defaults.get(o.name, o.default), o.choices, o.listed)
            for o in COMMON_OPTIONS
        )
        return common + self.options

    def settings(self, given: dict[str, Any]) -> dict[str, Any]:
        """Every option of this attack parsed, defaults filled in; an option it does not take is one line."""
        known = {option.name: option for option in self.all_options()}
        unknown = sorted(set(given) - set(known))
        if unknown:
            flags = ", ".join("--" + name.replace("_", "-") for name in unknown)
            raise ConfigError(
                f"attack {self.name!r} takes no {flags}; its options: "
                + ", ".join(option.flag for option in self.options or COMMON_OPTIONS)
            )
        return {name: option.parse(given.get(name)) for name, option in known.items()}


ATTACKS: Registry[Attack] = Registry(
    "attack",
    modules=tuple(
        f"passportnorm.attacks.{module}"
        for module in (
            "finetune",
            "refit",
            "transfer",
            "prune",
            "obfuscate",
            "ambiguity",
            "erb",
            "forge",
            "spell",
            "reprotect",
            "quantize",
            "distill",
            "merge",
            "fineprune",
            "dummy",
            "eclipse",
            "combined",
        )
    ),
)


def register_attack(
    name: str, summary: str, options: tuple[Option, ...] = (), **defaults: Any
) -> Callable[[Callable[[AttackContext], AttackResult]], Callable[[AttackContext], AttackResult]]:
    """``@register_attack("prune", "...", options=(...))`` above the function that runs it from a context."""

    def add(run: Callable[[AttackContext], AttackResult]) -> Callable[[AttackContext], AttackResult]:
        ATTACKS.register(name)(Attack(name, run, summary, options, defaults))
        return run

    return add
