"""The ``attack`` sub-command: one sub-command per registered attack, its options read from the
attack's declaration (attacks/registry.py), so an option is written once."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .cli_help import HelpWithDefaults, default_text

__all__ = ["EXIT_CODES", "add_attack_command", "run_attack_command"]

EXIT_CODES = "exit codes: 0 attack run and its evidence written; 2 bad input (one line naming it)"


def _add_attack(attacks: Any, attack: Any) -> None:
    parser = attacks.add_parser(
        attack.name,
        help=attack.summary,
        description=attack.summary,
        epilog=EXIT_CODES,
        formatter_class=HelpWithDefaults,
    )
    parser.add_argument("--model", required=True, help="released-model folder")
    parser.add_argument(
        "--key",
        required=True,
        help="the owner's key folder (the attacker never uses it unless the threat model says so)",
    )
    parser.add_argument(
        "--out", required=True, help="output folder: result.json, result.md, plots, model/ or forged-key/"
    )
    parser.add_argument(
        "--html",
        metavar="FILE",
        help="also write a self-contained HTML evidence report (plots inline) to FILE",
    )
    for option in attack.all_options():
        if option.kind is bool:
            parser.add_argument(option.flag, action="store_true", default=None, help=option.help)
            continue
        parser.add_argument(
            option.flag,
            type=str if option.listed else option.kind,
            choices=option.choices,
            default=None,
            help=option.help + default_text(option.default),
        )


def add_attack_command(commands: Any) -> None:
    """``passportnorm attack NAME ...`` with NAME one of the registered attacks."""
    from .attacks.registry import ATTACKS

    parser = commands.add_parser(
        "attack",
        help="run one attack on a released model and check it with the owner's key",
        description="Run one attack on a released model and check the result with the owner's key; "
        "`passportnorm attack NAME --help` lists that attack's options.",
        epilog=EXIT_CODES,
    )
    attacks = parser.add_subparsers(dest="name", required=True, metavar="NAME")
    for name in sorted(ATTACKS.names()):
        _add_attack(attacks, ATTACKS[name])


def run_attack_command(args: argparse.Namespace) -> int:
    from .attacks.registry import ATTACKS
    from .attacks.runner import record, run_attack

    names = [option.name for option in ATTACKS[args.name].all_options()]
    options = {name: getattr(args, name) for name in names}
    result = run_attack(args.name, args.model, args.key, args.out, **options)
    print((Path(args.out) / "result.md").read_text())
    if args.html:
        from .evidence_report import attack_page, write_page

        write_page(args.html, attack_page(record(result, options), args.out, args.model, args.key, args.argv))
    return 0
