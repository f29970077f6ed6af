"""What every sub-command's ``--help`` shows: each option described, its default, and the exit codes."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

__all__ = ["COMMON_HELP", "HelpWithDefaults", "default_text", "finish_help"]

# options several commands share, described once
COMMON_HELP = {
    "--data-dir": "the dataset's folder, for datasets read from disk (cifar10, cifar100, modelnet40, "
    "imagefolder)",
    "--device": "auto (CUDA when present), cpu, cuda or cuda:N",
    "--json": "print the result as JSON instead of a table",
    "--seed": "public seed: data order and initialisation",
    "--erb-mode": "ERB forgery: cerb (the released norms' statistics) or ierb (fresh ones)",
    "--dataset": "the data to train and evaluate on (mnist5k, digits, cifar10, ...)",
    "--width": "channel width multiplier of the model",
    "--norm": "normalization layers of zoo models: bn, gn or in",
    "--epochs": "training epochs",
    "--batch-size": "examples per step",
    "--lr": "learning rate",
    "--out": "output folder",
    "--passports": "how passports are drawn: random, image or shuffle",
}
# commands whose only outcomes are success or bad input
PLAIN_EXIT = "exit codes: 0 done; 2 bad input (one line naming it); 130 interrupted"


def default_text(value: Any) -> str:
    """ " (default: X)" for an option's help; nothing where there is no default to state (none, a flag)."""
    if value is dataclasses.MISSING or value is None or isinstance(value, bool):
        return ""
    if isinstance(value, list):
        return f" (default: {','.join(map(str, value))})"  # a comma-separated option
    return f" (default: {value!r})" if isinstance(value, str) else f" (default: {value})"


class HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" where an option has a default its help does not already state."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default in (None, False) or action.default is argparse.SUPPRESS or "default" in text:
            return text
        return super()._get_help_string(action)


def finish_help(commands: argparse._SubParsersAction, exit_codes: dict[str, str]) -> None:
    """Give every sub-command the defaults formatter, the shared descriptions and its exit codes."""
    for name, parser in commands.choices.items():
        parser.formatter_class = HelpWithDefaults
        parser.epilog = parser.epilog or exit_codes.get(name, PLAIN_EXIT)
        for action in parser._actions:
            if not action.help and action.option_strings:
                action.help = COMMON_HELP.get(action.option_strings[0])
