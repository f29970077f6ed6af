"""Shared: the plain-training form of a protect command line (train does not take protection options)."""

from passportnorm.cli import _PROTECTION_ONLY

_FLAGS = {"--" + name.replace("_", "-") for name in _PROTECTION_ONLY}


def train_args(args: list[str]) -> list[str]:
    """``args`` without the protection-only flags and their values."""
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in _FLAGS:
            skip = True
        else:
            kept.append(arg)
    return kept
