"""The ``passportnorm`` command. Errors become one line on stderr and exit code 2.

passportnorm protect  [options]   train a protected model; write released/, owner-key/, secret/,
                                  certificate.json; exit 0 when the release verifies with its key,
                                  1 when not (no certificate)
passportnorm train    [options]   the same training without protection (the baseline)
passportnorm verify --model DIR --key DIR [--certificate FILE]   exit 0 verified, 1 not, 2 error
passportnorm inspect  [--arch --width --norm --dataset]          which norms can be protected, and why not
passportnorm attack NAME --model DIR --key DIR --out DIR          run one attack, write result.json/md, plots
passportnorm compare  [--dataset --arch --schemes --seeds --epochs]
                                  plain vs DeepIPR V1/V2 vs passport-aware norm
passportnorm demo     [options]   the quick core demonstration (small CNN, mnist5k)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, NoReturn

from . import __version__
from .cli_attack import add_attack_command, run_attack_command
from .cli_help import default_text, finish_help
from .cli_remote import add_serve_command, add_verify_remote_command, run_serve, run_verify_remote
from .errors import ConfigError, PassportNormError

_HELP = {
    "epochs": "training epochs",
    "batch_size": "examples per step",
    "lr": "SGD learning rate; 0 picks the task's: 0.05 for images, 0.01 for point clouds, a fifth of "
    "that with --weights (retrofit)",
    "trigger_count": "how many trigger inputs the owner's trigger set has",
    "triggers_per_batch": "trigger inputs mixed into every training batch; 0 picks the task's: 2 for images, "
    "8 for point clouds",
    "dataset": "images: mnist5k, digits (shipped), cifar10, cifar100, imagefolder (one folder per "
    "class; needs --data-dir); "
    "point clouds: mnist5k-points, shapes3d (shipped), modelnet40 (needs --data-dir)",
    "data_dir": "folder holding a local dataset (CIFAR or ModelNet40 archives unpacked)",
    "task": "image or pointcloud (default: what the dataset holds)",
    "points": "points per cloud (default 256; modelnet40 1024)",
    "image_size": "side of the square crops of --dataset imagefolder (default 64)",
    "arch": "zoo model: resnet18, alexnet, small_cnn (images); pointnet, pointnet_vanilla (point clouds); "
    "default by task; "
    "or tv:NAME / timm:NAME for a torchvision or timm classifier (random init; needs the zoo extra); "
    "or your own: path/to/file.py:factory or module.path:factory (called with in_channels and "
    "num_classes if it takes them)",
    "weights": "start from your trained weights: a safetensors file or a torch.save'd state dict (read with "
    "weights_only=True; plain pickles are refused); every key and shape must match --arch",
    "width": "channel width multiplier (small widths for CPU)",
    "norm": "bn, gn or in",
    "signature": "owner identity text (hash mode: hashed with the passports into the bits; text mode: "
    "embedded as is)",
    "signature_mode": "hash (default: bits bound to identity and passports) or text (the paper's; forgeable)",
    "passports": "random, image or shuffle",
    "schedule": "alternate (the paper), joint (the original code) or interleave (one step per batch, "
    "a share --ratio of them passport-aware); auto: alternate, or interleave from --weights",
    "ratio": "share of steps that train the passport-aware branch (alternate and interleave schedules)",
    "optimizer": "sgd (momentum 0.9) or adam; auto: the model's recipe (adam for vit, sgd otherwise)",
    "aware_optimizer": "shared (one SGD state for both steps) or separate (passport-aware steps keep their "
    "own momentum "
    "and decay only the branch; alternate schedule)",
    "precision": "fp32 (default), bf16 (CPU or CUDA) or fp16 (CUDA only, with loss scaling): the forwards "
    "run under "
    "autocast; passport responses and the sign loss stay in fp32",
    "holdout": "share of the training split to evaluate on instead of the test split (choose settings on it; "
    "default 0)",
    "sign_weight": "multiplier of the sign loss in passport-aware steps",
    "alpha": "sign-loss alpha stored in each protected layer",
    "weak_layers": "skip or protect norms whose producer reads at most 3 input channels "
    "(see docs/RESULTS.md)",
    "transform_layers": "skip or protect norms inside a sub-network whose output transforms the data as a "
    "matrix (PointNet's T-Nets; `passportnorm inspect` marks them)",
    "exclude": "comma-separated patterns of norm paths to leave unprotected, e.g. "
    "'input_transform.*,feature_transform.*' "
    "(see `passportnorm inspect`)",
    "trigger": "none, noise, pattern (images), shapes (point clouds), or a folder with inputs and "
    "labels.csv (lines 'file': labels drawn from the secret seed; 'file,label': your labels, half the "
    "inputs then held out as controls that measure chance); default noise/shapes",
    "device": "auto (CUDA when present), cpu, cuda, cuda:N",
    "sync_bn": "under torchrun on CUDA: torch's BatchNorm layers become SyncBatchNorm while training, "
    "so each norm (and its passport-aware statistics) normalizes over the global batch; the release "
    "keeps the original classes",
    "resume": "continue the run in --out from its last checkpoint (same options)",
    "overwrite": "replace the earlier run in --out, its owner key included (the old key is lost)",
    "out": "output folder (default runs/<time>); an earlier run's folder is refused without --resume or "
    "--overwrite",
    "seed": "training seed: data order and initialisation (public; passports do not depend on it)",
    "secret_seed": "seed of the secret material (passports, bits, triggers) for repeatable experiments; "
    "default: "
    "128 bits from the OS CSPRNG, kept in owner-key/ and secret/ only",
}


# input shape and classes per dataset, so `inspect` needs no data on disk
_SHAPES = {
    "mnist5k": ((1, 28, 28), 10),
    "digits": ((1, 8, 8), 10),
    "cifar10": ((3, 32, 32), 10),
    "cifar100": ((3, 32, 32), 100),
    "mnist5k-points": ((3, 256), 10),
    "shapes3d": ((3, 256), 8),
    "modelnet40": ((3, 1024), 40),
    "pydocs": ((64,), 256),  # token windows, byte vocabulary (data/text.py)
}


# options only protect uses; train (the unprotected baseline) does not list what it would ignore
_PROTECTION_ONLY = {
    "signature",
    "signature_mode",
    "secret_seed",
    "passports",
    "schedule",
    "ratio",
    "aware_optimizer",
    "sign_weight",
    "alpha",
    "weak_layers",
    "transform_layers",
    "exclude",
    "trigger",
    "trigger_count",
    "triggers_per_batch",
}
_EXIT_CODES = {
    "protect": "exit codes: 0 the release verifies with its key (certificate issued); 1 it does not (no "
    "certificate, "
    "the failed conditions and a hint are printed); 2 bad input (one line naming it); 130 interrupted",
    "train": "exit codes: 0 trained and released; 2 bad input (one line naming it); 130 interrupted",
    "verify": "exit codes: 0 verified; 1 not verified (the reasons are printed); 2 bad input (one line "
    "naming it)",
    "certify": "exit codes: 0 certificate written; 1 refused, the pair does not verify (reasons printed); 2 "
    "bad input",
    "dispute": "exit codes: 0 an owner is decided; 1 no owner proven; 2 bad input",
    "demo": "exit codes: 0 the message reads back intact and strip gives the original model; 1 one of them "
    "failed; 2 bad input",
}


class _OneLineErrors(argparse.ArgumentParser):
    """Bad arguments are one line on stderr and exit code 2, like every other bad input; flags are
    never abbreviated (``attack prune --mode`` would otherwise be read as ``--model``)."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_run_options(parser: argparse.ArgumentParser, protected: bool = True) -> None:
    from .pipeline import RunOptions

    parser.add_argument("--config", help="YAML file with any of these options; flags given here win")
    for spec in fields(RunOptions):
        if not protected and spec.name in _PROTECTION_ONLY:
            continue
        flag = "--" + spec.name.replace("_", "-")
        if str(spec.type) == "bool":
            parser.add_argument(flag, action="store_true", default=None, help=_HELP[spec.name])
            continue
        kind = {"int": int, "int | None": int, "float": float}.get(str(spec.type), str)
        parser.add_argument(
            flag, type=kind, default=None, help=(_HELP.get(spec.name) or "") + default_text(spec.default)
        )


def _read_config(name: str) -> dict:
    """A YAML mapping of option: value (dashes read as underscores); one line naming the file if not."""
    import yaml

    path = Path(name)
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"cannot read config {path}: {error}") from error
    if not isinstance(loaded, dict):
        raise ConfigError(f"config {path} must be a mapping of option: value")
    return {k.replace("-", "_"): v for k, v in loaded.items()}


def _options(args: argparse.Namespace, kind: Any) -> Any:
    """``kind`` (RunOptions, CompareOptions) from ``--config`` (YAML) with the flags given on top."""
    values = _read_config(args.config) if args.config else {}
    given = {spec.name: getattr(args, spec.name, None) for spec in fields(kind)}
    values.update({name: value for name, value in given.items() if value is not None})
    return kind.from_mapping(values)


def _add_protect(commands: Any) -> None:
    _add_run_options(
        commands.add_parser(
            "protect", help="train a protected model and release it with a key", epilog=_EXIT_CODES["protect"]
        )
    )


def _add_train(commands: Any) -> None:
    _add_run_options(
        commands.add_parser(
            "train", help="train the same model without protection (baseline)", epilog=_EXIT_CODES["train"]
        ),
        protected=False,
    )


def _add_verify(commands: Any) -> None:
    check = commands.add_parser(
        "verify", help="verify a released model with an owner key", epilog=_EXIT_CODES["verify"]
    )
    check.add_argument(
        "--model", required=True, help="released-model folder (model.json + model.safetensors)"
    )
    check.add_argument("--key", required=True, help="owner-key folder (key.json + key.safetensors)")
    check.add_argument("--certificate", help="certificate.json published at release")
    check.add_argument(
        "--dataset", help="dataset for the accuracy check (default: the one recorded at protect time)"
    )
    check.add_argument("--data-dir")
    check.add_argument(
        "--no-data", action="store_true", help="signature (and triggers) only, no accuracy check"
    )
    check.add_argument(
        "--recalibrate",
        action="store_true",
        help="re-estimate the branch statistics on the training split first (after fine-tuning)",
    )
    check.add_argument(
        "--max-p-value", type=float, default=1e-6, help="signature p-value threshold (default 1e-6)"
    )
    check.add_argument(
        "--max-accuracy-drop",
        type=float,
        default=0.10,
        help="allowed passport-aware accuracy drop (default 0.10)",
    )
    check.add_argument(
        "--reference",
        help="the owner's released-model folder: align the suspect's channels to it first "
        "(undoes permutation, sign flips and rescaling)",
    )
    check.add_argument(
        "--tsa-root",
        action="append",
        metavar="PEM",
        help="a time-stamp authority's root certificate you trust: the report then states the time "
        "the certificate's token attests (repeat for several)",
    )
    check.add_argument(
        "--ancestor",
        help="the trained model a retrofit key started from (released folder or weights file); a "
        "retrofit key's claim is decided only with it",
    )
    check.add_argument(
        "--allow-text-signatures",
        action="store_true",
        help="accept a claim resting on the paper's text signature (forgeable, see docs/SECURITY.md)",
    )
    check.add_argument(
        "--security-bits", type=int, default=128, help="hash-bound claims need p <= 2^-N (default 128)"
    )
    check.add_argument(
        "--min-accuracy-above-chance",
        type=float,
        default=0.25,
        help="accuracy floor: passport-aware accuracy must cover this share of the way from chance to "
        "100%% (default 0.25: 32.5%% for 10 classes)",
    )
    check.add_argument(
        "--min-alignment-confidence",
        type=float,
        default=0.5,
        help="use a --reference alignment only when every layer's filters match this well (default 0.5; "
        "independent models stay near 0.03, copies near 1, docs/SECURITY.md)",
    )
    check.add_argument(
        "--arch",
        help="the model code the folders name when it is your own (file.py:factory); "
        "passportnorm runs it only when you pass it here",
    )
    check.add_argument("--device", default="auto")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.add_argument(
        "--html",
        metavar="FILE",
        help="also write a self-contained HTML evidence report (plots inline) to FILE",
    )


def _add_certify(commands: Any) -> None:
    cert = commands.add_parser(
        "certify",
        help="issue the public certificate of a key and its released model (UTC time now)",
        epilog=_EXIT_CODES["certify"],
    )
    cert.add_argument("--key", required=True, help="owner-key folder")
    cert.add_argument("--model", required=True, help="the released-model folder the key protects")
    cert.add_argument("--out", required=True, help="certificate file to write (publish it)")
    cert.add_argument(
        "--dataset", help="dataset for the accuracy check (default: the one recorded in the key)"
    )
    cert.add_argument("--data-dir")
    cert.add_argument("--no-data", action="store_true", help="check the signature only before certifying")
    cert.add_argument("--arch", help="the model code the folder names when it is your own (file.py:factory)")
    cert.add_argument(
        "--ancestor",
        help="the trained model a retrofit key records (released folder or weights file): a retrofit "
        "release is certified only once it verifies against it",
    )
    cert.add_argument(
        "--tsa",
        metavar="URL",
        help="an RFC 3161 time-stamp authority: its signed time goes into the certificate, the only "
        "time a dispute orders claims by",
    )
    cert.add_argument(
        "--tsa-token",
        metavar="FILE",
        help="a time-stamp response obtained offline over the file --commitment-out wrote "
        "(openssl ts -query -data FILE -sha256 -cert, sent to any TSA)",
    )
    cert.add_argument(
        "--commitment-out",
        metavar="FILE",
        help="also write the bytes a TSA must time-stamp (for --tsa-token), then stop",
    )


def _add_dispute(commands: Any) -> None:
    fight = commands.add_parser(
        "dispute",
        help="decide between two ownership claims on a suspect model",
        epilog=_EXIT_CODES["dispute"],
    )
    fight.add_argument("--suspect", required=True, help="the disputed released-model folder")
    fight.add_argument(
        "--claim",
        nargs=3,
        action="append",
        required=True,
        metavar=("KEY", "CERTIFICATE", "RELEASED"),
        help="one claimant: key folder, certificate file, certified released-model folder (give two)",
    )
    fight.add_argument("--dataset", help="dataset for the accuracy condition (default: the first key's)")
    fight.add_argument("--data-dir")
    fight.add_argument("--no-data", action="store_true", help="signatures only")
    fight.add_argument(
        "--tsa-root",
        action="append",
        metavar="PEM",
        help="a time-stamp authority's root certificate you trust (repeat for several); without one, "
        "no certificate time is attested and time decides nothing",
    )
    fight.add_argument(
        "--ancestor",
        action="append",
        help="a trained model a claimant's retrofit key records (released folder or weights file); "
        "repeat for each; a retrofit claim counts only with its ancestor",
    )
    fight.add_argument("--arch", help="the model code the folders name when it is your own (file.py:factory)")
    fight.add_argument("--json", action="store_true")
    fight.add_argument(
        "--html",
        metavar="FILE",
        help="also write a self-contained HTML evidence report (plots inline) to FILE",
    )


def _add_compare(commands: Any) -> None:
    versus = commands.add_parser(
        "compare", help="train plain, DeepIPR V1/V2 and passport-aware normalization side by side"
    )
    versus.add_argument(
        "--config", help="YAML file of compare options (configs/paper/*.yaml); flags given here win"
    )
    versus.add_argument("--dataset", help="default mnist5k")
    versus.add_argument("--data-dir")
    versus.add_argument("--points", type=int, help="points per cloud (point-cloud datasets)")
    versus.add_argument("--arch", help="zoo model (alexnet and resnet18 are the paper's); default resnet18")
    versus.add_argument("--width", type=float, help="default 0.25")
    versus.add_argument("--norm", help="norm of every model but DeepIPR's own choice: bn (default), gn or in")
    versus.add_argument(
        "--deepipr",
        choices=("authors", "shared"),
        help="authors (default): DeepIPR with its authors' recipe (SGD 0.01, wd 1e-4, x0.1 at 1/2 and 3/4), "
        "V2 on GroupNorm, passports from the trained plain model; shared: the recipe, norm and passports "
        "of the other rows",
    )
    versus.add_argument(
        "--schemes", help="comma-separated: plain, deepipr-v1, deepipr-v2, pan (default: all)"
    )
    versus.add_argument("--seeds", type=int, help="number of seeds (0, 1, ...); default 3")
    versus.add_argument("--epochs", type=int, help="default 8")
    versus.add_argument("--batch-size", type=int, help="default 64")
    versus.add_argument("--lr", type=float, help="the shared recipe's SGD rate (default 0.05, cosine decay)")
    versus.add_argument(
        "--placement", help="all (every norm, default) or deepipr (AlexNet's last 3 convs, ResNet18's layer4)"
    )
    versus.add_argument(
        "--forge-epochs", type=int, help="epochs of the ambiguity II forgery per run (default 3)"
    )
    versus.add_argument("--device", help="auto (default), cpu, cuda")
    versus.add_argument(
        "--out", help="output folder (default runs/compare); a rerun resumes and skips finished runs"
    )


def _add_inspect(commands: Any) -> None:
    look = commands.add_parser(
        "inspect", help="which norm layers of a zoo model can be protected, and why not"
    )
    look.add_argument(
        "--arch", default="auto", help="default: resnet18 for images, pointnet for point clouds"
    )
    look.add_argument("--width", type=float, default=0.25)
    look.add_argument("--norm", default="bn")
    look.add_argument(
        "--dataset",
        default="mnist5k",
        help="decides input shape and classes: "
        + ", ".join(_SHAPES)
        + ", or imagefolder (with --data-dir: its classes, at --image-size)",
    )
    look.add_argument("--data-dir", help="the image folder, for --dataset imagefolder")
    look.add_argument("--image-size", type=int, default=64, help="crop size for --dataset imagefolder")


def _add_bench(commands: Any) -> None:
    bench = commands.add_parser(
        "bench",
        help="what protection costs: each figure as a ratio to a plain model measured in the same process",
    )
    bench.add_argument(
        "--arch", default="small_cnn", help="a zoo model (small_cnn, resnet18, pointnet, tv:NAME, ...)"
    )
    bench.add_argument("--dataset", default="mnist5k", help="its data (mnist5k, digits, mnist5k-points, ...)")
    bench.add_argument("--width", type=float, default=0.25, help="channel width multiplier")
    bench.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    bench.add_argument("--precision", default="fp32", help="fp32, bf16 or fp16 (CUDA)")
    bench.add_argument("--batch-size", type=int, default=64)
    bench.add_argument("--epochs", type=int, default=3, help="epochs of plain and of protected training")
    bench.add_argument(
        "--rounds", type=int, default=5, help="interleaved rounds of the step timings (medians)"
    )
    bench.add_argument("--steps", type=int, default=5, help="steps timed per variant per round")
    bench.add_argument(
        "--processes",
        default="1,2",
        help="process counts for the torchrun scaling runs, comma-separated; empty: none",
    )
    bench.add_argument("--out", default="runs/bench", help="folder for bench.json")


def _add_demo(commands: Any) -> None:
    demo = commands.add_parser(
        "demo", help="quick core demonstration: protect a small CNN on MNIST-5k, read the signature, strip"
    )
    demo.add_argument("--out", default="runs/core-demo")
    demo.add_argument("--epochs", type=int, default=5)
    demo.add_argument("--batch-size", type=int, default=64)
    demo.add_argument("--lr", type=float, default=0.05)
    demo.add_argument("--width", type=float, default=1.0, help="channel width multiplier of the CNN")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    demo.add_argument("--signature", default="(c) passportnorm demo", help="owner text to embed")
    demo.add_argument("--passports", default="shuffle", choices=["random", "image", "shuffle"])


def _parser() -> argparse.ArgumentParser:
    parser = _OneLineErrors(
        prog="passportnorm", description="Passport-aware normalization for model ownership"
    )
    parser.add_argument("--version", action="version", version=f"passportnorm {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS.values():
        command.add(commands)
    finish_help(commands, _EXIT_CODES)
    return parser


def _inspect(args: argparse.Namespace) -> int:
    import torch

    from . import zoo
    from .pairing import WEAK_RULE, find_pairs
    from .transform_branches import TRANSFORM_RULE

    if args.dataset == "imagefolder":
        from .data import load_dataset

        folder = load_dataset(
            "imagefolder", args.data_dir, image_size=args.image_size
        )  # reads names and headers, not pixels
        shape, classes = folder.input_shape, folder.num_classes
    elif args.dataset not in _SHAPES:
        raise ConfigError(
            f"unknown dataset {args.dataset!r}; choose one of {', '.join(_SHAPES)}, imagefolder"
        )
    else:
        shape, classes = _SHAPES[args.dataset]
    if args.arch == "auto":
        from .pipeline import DEFAULT_ARCH, dataset_task

        args.arch = DEFAULT_ARCH[dataset_task(args.dataset)]
    if zoo.model_task(args.arch) == "text":  # a language model reads token windows, whatever --dataset says
        shape, classes = _SHAPES["pydocs"]
    # the user named --arch on this command line: their own code may run (zoo/user_code.py)
    model = zoo.build(
        args.arch,
        trust_code=True,
        in_channels=shape[0],
        num_classes=classes,
        width=args.width,
        norm=args.norm,
        **zoo.size_options(args.arch, shape),
    )
    example = torch.zeros((2, *shape))
    if zoo.model_task(args.arch) == "text":
        from .zoo.hf import token_input

        example, args.dataset = token_input(), "token"
    print(
        f"{args.arch} (width {args.width}, norm {args.norm}) for {args.dataset} inputs "
        f"{tuple(example.shape[1:])}:"
    )
    report = find_pairs(model, example)
    print(report)
    chosen = [p for p in report.pairs if not p.weak and not p.transform]
    bits = sum(p.channels for p in chosen)
    print(f"`passportnorm protect` protects {len(chosen)} of them ({bits} bits) by default:")
    print(f"  - {WEAK_RULE}")
    print(f"  - {TRANSFORM_RULE}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from .pipeline import run_verify
    from .verify import VerdictRule

    rule = VerdictRule(
        max_signature_p_value=args.max_p_value,
        max_accuracy_drop=args.max_accuracy_drop,
        security_bits=args.security_bits,
        allow_text_signatures=args.allow_text_signatures,
        min_accuracy_above_chance=args.min_accuracy_above_chance,
        min_alignment_confidence=args.min_alignment_confidence,
    )
    report = run_verify(
        args.model,
        args.key,
        certificate=args.certificate,
        dataset=args.dataset,
        data_dir=args.data_dir,
        use_data=not args.no_data,
        recalibrate=args.recalibrate,
        rule=rule,
        device=args.device,
        reference_dir=args.reference,
        arch=args.arch,
        ancestor=args.ancestor,
        tsa_roots=args.tsa_root,
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.to_markdown(f"Verification of {args.model} with {args.key}"))
    if args.html:
        from .evidence_report import verify_page, write_page

        write_page(args.html, verify_page(report, args.model, args.key, args.certificate, args.argv))
    return 0 if report.verified else 1


def _certify(args: argparse.Namespace) -> int:
    """Certify only a pair that verifies: a certificate for a key that does not fit its model proves
    nothing. With ``--tsa`` or ``--tsa-token`` the certificate carries a trusted time."""
    from .certificate import Certificate
    from .key import OwnerKey
    from .pipeline import run_verify
    from .release import load_released
    from .timestamp import request_token, token_of_file

    if Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out} is a folder; name the certificate file to write")
    if args.tsa and args.tsa_token:
        raise ConfigError("give --tsa or --tsa-token, not both")
    report = run_verify(
        args.model,
        args.key,
        dataset=args.dataset,
        data_dir=args.data_dir,
        use_data=not args.no_data,
        arch=args.arch,
        ancestor=args.ancestor,
    )
    if not report.verified:
        print(
            f"passportnorm: certify refused: {args.model} does not verify with {args.key} "
            f"({'; '.join(report.failed_conditions)})",
            file=sys.stderr,
        )
        return 1
    certificate = Certificate.issue(
        OwnerKey.load(args.key), load_released(args.model, trusted_arch=args.arch)[0]
    )
    if args.commitment_out:
        Path(args.commitment_out).write_bytes(certificate.commitment())
        print(f"wrote {args.commitment_out}: have a TSA time-stamp it, then certify again with --tsa-token")
        return 0
    if args.tsa:
        certificate = certificate.with_token(request_token(args.tsa, certificate.commitment()))
    elif args.tsa_token:
        certificate = certificate.with_token(token_of_file(args.tsa_token, certificate.commitment()))
    certificate.save(args.out)
    print(json.dumps(certificate.__dict__, indent=2))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from .bench import BenchOptions, bench_table, run_bench

    try:
        processes = [int(count) for count in args.processes.split(",") if count.strip()]
    except ValueError:
        raise ConfigError(
            f"--processes {args.processes!r} must be comma-separated counts, e.g. 1,2"
        ) from None
    options = {name: getattr(args, name) for name in BenchOptions.__dataclass_fields__ if name != "processes"}
    result = run_bench(BenchOptions(**options, processes=processes))
    print(bench_table(result))
    print(f"wrote {Path(args.out) / 'bench.json'}")
    return 0


def _protect(args: argparse.Namespace) -> int:
    from .pipeline import RunOptions, run_protect

    return 0 if run_protect(_options(args, RunOptions))["verified"] else 1


def _train(args: argparse.Namespace) -> int:
    from .pipeline import RunOptions, run_train

    run_train(_options(args, RunOptions))
    return 0


def _dispute(args: argparse.Namespace) -> int:
    from .pipeline import run_dispute

    result = run_dispute(
        args.suspect,
        args.claim,
        dataset=args.dataset,
        data_dir=args.data_dir,
        use_data=not args.no_data,
        arch=args.arch,
        ancestors=args.ancestor,
        tsa_roots=args.tsa_root,
    )
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.to_markdown())
    if args.html:
        from .evidence_report import dispute_page, write_page

        write_page(args.html, dispute_page(result, args.suspect, args.claim, args.argv))
    return 0 if result.winner else 1


def _compare(args: argparse.Namespace) -> int:
    from .baselines.compare import CompareOptions, run_compare

    print(run_compare(_options(args, CompareOptions))["table"])
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    metrics = run_demo(
        out=args.out,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        signature=args.signature,
        width=args.width,
        passports=args.passports,
    )
    # success: the released model is the original architecture and computes what the
    # free branch computes, and the owner's message reads back from the weights intact
    strip_ok = all(metrics["strip"].values())
    return 0 if strip_ok and metrics["signature_detection"]["message"] == args.signature else 1


@dataclass(frozen=True)
class Command:
    """A sub-command: what adds its parser, and what runs it (returns the exit code)."""

    add: Callable[[Any], None]
    run: Callable[[argparse.Namespace], int]


# the order of `passportnorm --help`
COMMANDS = {
    "protect": Command(_add_protect, _protect),
    "train": Command(_add_train, _train),
    "verify": Command(_add_verify, _verify),
    "attack": Command(add_attack_command, run_attack_command),
    "certify": Command(_add_certify, _certify),
    "dispute": Command(_add_dispute, _dispute),
    "compare": Command(_add_compare, _compare),
    "serve": Command(add_serve_command, run_serve),
    "verify-remote": Command(add_verify_remote_command, run_verify_remote),
    "inspect": Command(_add_inspect, _inspect),
    "bench": Command(_add_bench, _bench),
    "demo": Command(_add_demo, _demo),
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the command, for reports to reproduce
    try:
        return COMMANDS[args.command].run(args)
    except PassportNormError as error:
        print(f"passportnorm: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "passportnorm: interrupted; rerun with --resume to continue from the last epoch", file=sys.stderr
        )
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
