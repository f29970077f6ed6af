"""The ``serve`` and ``verify-remote`` sub-commands: their options and what they run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .cli_help import HelpWithDefaults
from .errors import ConfigError

__all__ = ["add_serve_command", "add_verify_remote_command", "run_serve", "run_verify_remote"]

EXIT_CODES = {
    "serve": "exit codes: 0 stopped cleanly (Ctrl-C); 2 bad input (one line naming it)",
    "verify-remote": "exit codes: 0 verified; 1 not verified (the reasons are printed); 2 bad input or an "
    "endpoint that kept failing (one line; rerun with --resume to continue from the answered batches)",
}


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a shape such as 1,28,28") from None
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a shape of positive sizes such as 1,28,28")
    return shape


def add_serve_command(commands: Any) -> None:
    from .serve import DEFAULT_MODEL_NAME

    serve = commands.add_parser(
        "serve",
        help="serve a released model over the Open Inference Protocol (KServe v2); needs the 'serve' extra",
        epilog=EXIT_CODES["serve"],
        formatter_class=HelpWithDefaults,
    )
    serve.add_argument("folder", help="released-model folder (model.json + model.safetensors)")
    serve.add_argument("--port", type=int, default=8080, help="TCP port to listen on")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: every interface)")
    serve.add_argument("--name", default=DEFAULT_MODEL_NAME, help="the model's name in /v2/models/NAME")
    serve.add_argument(
        "--input-shape", type=_shape, help="one input's shape, e.g. 1,28,28 (default: the recorded dataset's)"
    )
    serve.add_argument("--data-dir", help="the recorded dataset's folder, to learn its input shape")
    serve.add_argument("--max-batch", type=int, default=256, help="largest batch one request may send")
    serve.add_argument(
        "--arch", help="your own model code the folder names (file.py:factory), trusted to run"
    )
    serve.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")


def add_verify_remote_command(commands: Any) -> None:
    from .remote.protocols import PROTOCOLS
    from .serve import DEFAULT_MODEL_NAME

    remote = commands.add_parser(
        "verify-remote",
        help="verify a model behind an HTTP API with the key's trigger set (black-box); "
        "needs the 'serve' extra",
        epilog=EXIT_CODES["verify-remote"],
        formatter_class=HelpWithDefaults,
    )
    remote.add_argument("--url", required=True, help="the server's base address, e.g. http://host:8080")
    remote.add_argument("--key", required=True, help="owner-key folder (its trigger set is sent)")
    remote.add_argument("--model", default=DEFAULT_MODEL_NAME, help="the model's name on the server")
    remote.add_argument(
        "--protocol",
        default="v2",
        choices=sorted(PROTOCOLS),
        help="how to talk to it: v2 (Open Inference Protocol), torchserve (/predictions with PNG images), "
        "template (a JSON API described by --template)",
    )
    remote.add_argument("--template", help="JSON file describing a custom API (with --protocol template)")
    remote.add_argument(
        "--dataset", help="the key's dataset (torchserve: its normalisation; default: as the key records it)"
    )
    remote.add_argument("--data-dir", help="that dataset's folder, for datasets read from disk")
    remote.add_argument(
        "--out", default="runs/verify-remote", help="folder for result.json/.md and requests.jsonl"
    )
    remote.add_argument("--batch-size", type=int, default=16, help="inputs per request")
    remote.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    remote.add_argument(
        "--retries", type=int, default=5, help="retries of a failed request (429, 5xx, network)"
    )
    remote.add_argument(
        "--backoff", type=float, default=0.5, help="first wait before a retry, doubled each time"
    )
    remote.add_argument(
        "--rate", type=float, default=0.0, help="at most this many requests per second (0: no limit)"
    )
    remote.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its answered batches"
    )
    remote.add_argument("--overwrite", action="store_true", help="discard the run in --out and start afresh")
    remote.add_argument("--max-trigger-p-value", type=float, default=1e-6, help="black-box threshold")
    remote.add_argument("--json", action="store_true", help="print the result as JSON")
    remote.add_argument(
        "--html",
        metavar="FILE",
        help="also write a self-contained HTML evidence report (plots inline) to FILE",
    )


def run_serve(args: argparse.Namespace) -> int:
    from .device import resolve_device
    from .serve import require_serving, serve_forever, served_release

    require_serving()
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port {args.port} is not a TCP port (1-65535)")
    if args.max_batch < 1:
        raise ConfigError(f"--max-batch must be at least 1, got {args.max_batch}")
    served = served_release(
        args.folder,
        args.name,
        args.input_shape,
        args.data_dir,
        args.arch,
        str(resolve_device(args.device)),
        args.max_batch,
    )
    serve_forever(served, args.host, args.port)
    return 0


def run_verify_remote(args: argparse.Namespace) -> int:
    from .remote import RemoteOptions, TransportOptions, verify_remote
    from .verdict import VerdictRule

    try:
        import httpx  # noqa: F401
    except ImportError:
        raise ConfigError(
            "verify-remote needs the 'serve' extra (httpx): pip install 'passportnorm[serve]'"
        ) from None
    options = RemoteOptions(
        url=args.url,
        key=args.key,
        out=args.out,
        model=args.model,
        protocol=args.protocol,
        template=args.template,
        dataset=args.dataset,
        data_dir=args.data_dir,
        batch_size=args.batch_size,
        resume=args.resume,
        overwrite=args.overwrite,
        transport=TransportOptions(
            timeout=args.timeout, retries=args.retries, backoff=args.backoff, rate=args.rate
        ),
    )
    result = verify_remote(options, VerdictRule(max_trigger_p_value=args.max_trigger_p_value))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print((Path(args.out) / "result.md").read_text())
    if args.html:
        from .evidence_report import remote_page, write_page

        write_page(args.html, remote_page(result, args.key, args.argv))
    return 0 if result["verified"] else 1
