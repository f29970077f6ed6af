"""The ``passportnorm`` command. Errors become one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .errors import PassportNormError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="passportnorm", description="Passport-aware normalization for model ownership")
    parser.add_argument("--version", action="version", version=f"passportnorm {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="protect a small CNN on MNIST-5k, read the signature, strip")
    demo.add_argument("--out", default="runs/demo", help="folder for metrics.json (default: runs/demo)")
    demo.add_argument("--epochs", type=int, default=5)
    demo.add_argument("--batch-size", type=int, default=64)
    demo.add_argument("--lr", type=float, default=0.05)
    demo.add_argument("--width", type=float, default=1.0, help="channel width multiplier of the CNN")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    demo.add_argument("--signature", default="(c) passportnorm demo", help="owner text to embed")
    demo.add_argument("--passports", default="shuffle", choices=["random", "image", "shuffle"])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            from .demo import run_demo

            metrics = run_demo(
                out=args.out, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                device=args.device, signature=args.signature, width=args.width,
                passports=args.passports,
            )
            # success: the released model is the original architecture and computes what the
            # free branch computes, and the owner's message reads back from the weights intact
            strip_ok = all(metrics["strip"].values())
            message_ok = metrics["signature_detection"]["message"] == args.signature
            return 0 if strip_ok and message_ok else 1
    except PassportNormError as error:
        print(f"passportnorm: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("passportnorm: interrupted", file=sys.stderr)
        return 130
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
