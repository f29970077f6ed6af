"""The owner's jobs end to end, shared by the CLI and Python users: protect, train, verify.

``run_protect`` trains a protected zoo model on a named dataset and writes, under ``out``:
``released/`` (the plain architecture), ``certificate.json``, ``metrics.json``, ``history.csv``
and ``report.md`` (public), and ``owner-key/`` and ``secret/`` (the run's secret seed and its
resumable ``checkpoint.pt``, which holds the passports), both readable by the owner only.
Nothing public contains or determines the secrets. The certificate is issued only when the
release verifies with its key. ``run_train`` is the same without protection (the baseline;
its ``checkpoint.pt`` holds no secret and stays in ``out``). ``run_verify`` checks a released
model folder against a key.
"""

from __future__ import annotations

import contextlib
import copy
import io
import platform
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, cast

import torch

from . import zoo
from .attach import SECRET_SEED
from .certificate import Certificate
from .choices import (
    AwareOptimizer,
    LayerPolicy,
    NormKind,
    Optimizer,
    PassportKind,
    Precision,
    Schedule,
    SignatureMode,
    Task,
    check_choices,
)
from .data import DatasetSplits, dataset_task, load_dataset
from .data.holdout import hold_out
from .data.registry import first_inputs, recorded_dataset
from .data.triggers import TRIGGER_KINDS, TriggerSet, generate_triggers, load_trigger_folder
from .device import resolve_device
from .dispute import Claim, DisputeResult, dispute
from .distributed import (
    World,
    check_batch,
    check_sync_bn,
    join_world,
    leave_world,
    restore_batchnorm,
    to_sync_batchnorm,
)
from .errors import CertificateError, ConfigError, PassportWarning
from .fileio import write_json_atomic, write_text_atomic
from .key import OwnerKey, extract_key
from .key_manifest import AncestorEntry
from .option_checks import Range, check_ranges, typed_values
from .progress import print_epoch
from .protect import capacity, protect, strip
from .release import load_model_like, load_released, released_fingerprint, save_released
from .report import run_report_markdown, write_history_csv
from .retrofit import describe_retrofit, retrofit
from .run_folder import SEED_SOURCES, keep_secret_seed, prepare_run_folder, run_secret_seed, secret_folder
from .timestamp import load_roots
from .train import TrainConfig, Trainer
from .verify import VerdictRule, VerificationReport, verify
from .weights import load_weights

__all__ = ["RunOptions", "recorded_settings", "resolve_task", "run_protect", "run_train", "run_verify"]


@dataclass
class RunOptions:
    dataset: str = "mnist5k"
    data_dir: str | None = None
    task: Task | Literal["auto"] = "auto"  # image or pointcloud; auto: what the dataset holds
    points: int = 0  # points per cloud for point-cloud datasets; 0: the dataset's default
    image_size: int = 0  # side of the square crops of --dataset imagefolder; 0: 64
    arch: str = (
        "auto"  # auto: resnet18 for images, pointnet for point clouds; or tv:NAME, timm:NAME, file.py:factory
    )
    # start from these trained weights (safetensors, or a state dict torch.load(weights_only=True) reads)
    weights: str = ""
    width: float = 0.25
    norm: NormKind = "bn"
    epochs: int = 8
    batch_size: int = 64
    # 0: the task's default, 0.05 for images, 0.01 for point clouds (PointNet is unstable higher);
    # a fifth of it from --weights (fine-tuning a trained model: retrofit.py)
    lr: float = 0.0
    # auto: the model's recipe (Adam for the zoo's ViT, docs/RESULTS.md), SGD with momentum otherwise
    optimizer: Optimizer | Literal["auto"] = "auto"
    seed: int = 0  # training: data order, initialisation (public)
    secret_seed: int | None = (
        None  # passports, signature bits, triggers; None: drawn from the OS CSPRNG (secret)
    )
    signature: str = "(c) passportnorm owner"
    signature_mode: SignatureMode = (
        "hash"  # hash: bits bound to identity and passports; text: the paper's (forgeable)
    )
    passports: PassportKind = "random"  # chosen by measurement: docs/RESULTS.md, "Which passports by default"
    schedule: Schedule | Literal["auto"] = (
        "auto"  # auto: alternate from scratch, interleave from --weights (retrofit.py)
    )
    ratio: float = 0.5
    aware_optimizer: AwareOptimizer = (
        "shared"  # separate: passport-aware steps keep their own momentum (see train.py)
    )
    precision: Precision = (
        "fp32"  # bf16 (CPU or CUDA) or fp16 (CUDA, with loss scaling): the forwards under autocast
    )
    sign_weight: float = 1.0
    alpha: float = 0.1
    weak_layers: LayerPolicy = "skip"
    transform_layers: LayerPolicy = (
        "skip"  # norms inside a T-Net-like sub-network: left out (transform_branches.py)
    )
    exclude: str = ""  # comma-separated fnmatch patterns of norm paths to leave unprotected
    trigger: str = "auto"  # none, noise, pattern (images), shapes (point clouds), prompts (text), or a folder
    trigger_count: int = 50
    triggers_per_batch: int = 0  # 0: the task's default, 2 for images and text, 8 for point clouds
    holdout: float = (
        0.0  # > 0: evaluate on this share of the training split instead of the test split (tuning)
    )
    device: str = "auto"
    sync_bn: bool = False  # torchrun on CUDA: BatchNorm -> SyncBatchNorm while training (distributed.py)
    out: str = field(default_factory=lambda: f"runs/{time.strftime('%Y%m%d-%H%M%S')}")
    resume: bool = False
    overwrite: bool = False  # replace the outputs (and the key) of an earlier run in ``out``

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> RunOptions:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"unknown option {unknown[0]!r} in the config; known: {', '.join(sorted(known))}"
            )
        options = cls(**typed_values(cls, values))
        check_choices(options)
        check_ranges(options, RUN_RANGES)
        return options


# what each size, width and rate must be; 0 stands for "the default" where the field says so
RUN_RANGES = {
    "points": Range(0, why="points per cloud; 0: the dataset's default"),
    "image_size": Range(0, why="side of the crops; 0: 64"),
    "width": Range(0, open_low=True, why="the model's channel multiplier, e.g. 0.25"),
    "epochs": Range(1),
    "batch_size": Range(1),
    "lr": Range(0, why="0: the task's default"),
    "ratio": Range(0, high=1, why="the share of steps that train the passport-aware branch"),
    "sign_weight": Range(0),
    "alpha": Range(0, why="the sign loss's weight"),
    "trigger_count": Range(1),
    "triggers_per_batch": Range(0, why="0: the task's default"),
    "holdout": Range(0, high=1, why="a share of the training split; 0: evaluate on the test split"),
}


def _train_config(opts: RunOptions) -> TrainConfig:
    return TrainConfig(
        epochs=opts.epochs,
        batch_size=opts.batch_size,
        lr=opts.lr,
        optimizer=cast(Optimizer, opts.optimizer),  # resolve_task has replaced "auto"
        schedule=cast(Schedule, opts.schedule),  # resolve_task has replaced "auto"
        ratio=opts.ratio,
        sign_weight=opts.sign_weight,
        triggers_per_batch=opts.triggers_per_batch,
        seed=opts.seed,
        aware_optimizer=opts.aware_optimizer,
        precision=opts.precision,
    )


DEFAULT_ARCH = {"image": "resnet18", "pointcloud": "pointnet", "text": "gpt"}
DEFAULT_TRIGGER = {"image": "noise", "pointcloud": "shapes", "text": "prompts"}
DEFAULT_LR = {"image": 0.05, "pointcloud": 0.01, "text": 0.002}
# shapes are learned more slowly than noise images: at 8 epochs PointNet answered 21-27 of 50 with 2 per
# batch and 38-44 with 8 (black-box p 10^-8..10^-14 -> 10^-27..10^-37; benchmarks/pointcloud_defaults.py)
DEFAULT_TRIGGERS_PER_BATCH = {"image": 2, "pointcloud": 8, "text": 2}
RETROFIT_LR_DIVISOR = 5  # from --weights: fine-tune at a fifth of the from-scratch rate (retrofit.py)


def resolve_task(opts: RunOptions) -> RunOptions:
    """Fill in ``task``, ``arch``, ``trigger``, ``schedule``, ``lr``, ``optimizer`` and
    ``triggers_per_batch`` left on auto (from ``--weights``: the retrofit recipe), and refuse a model
    that cannot read the data."""
    task = dataset_task(opts.dataset)
    if opts.task not in ("auto", task):
        raise ConfigError(
            f"dataset {opts.dataset!r} holds {task} data, not {opts.task}; drop --task or pick a {opts.task} "
            "dataset"
        )
    arch = DEFAULT_ARCH[task] if opts.arch == "auto" else opts.arch
    if zoo.model_task(arch) not in (task, "any"):
        raise ConfigError(
            f"model {arch!r} reads {zoo.model_task(arch)} inputs but {opts.dataset!r} holds {task} data; "
            f"use --arch {DEFAULT_ARCH[task]}"
        )
    if opts.points and task != "pointcloud":
        raise ConfigError(f"--points applies to point-cloud datasets; {opts.dataset!r} holds {task} data")
    trigger = DEFAULT_TRIGGER[task] if opts.trigger == "auto" else opts.trigger
    retrofit = bool(opts.weights)
    schedule = ("interleave" if retrofit else "alternate") if opts.schedule == "auto" else opts.schedule
    recipe = zoo.model_recipe(arch)
    optimizer = recipe.get("optimizer", "sgd") if opts.optimizer == "auto" else opts.optimizer
    lr = opts.lr or recipe.get("lr", DEFAULT_LR[task]) / (RETROFIT_LR_DIVISOR if retrofit else 1)
    per_batch = opts.triggers_per_batch or DEFAULT_TRIGGERS_PER_BATCH[task]
    return replace(
        opts,
        task=task,
        arch=arch,
        trigger=trigger,
        schedule=schedule,
        lr=lr,
        optimizer=optimizer,
        triggers_per_batch=per_batch,
    )


def _load(opts: RunOptions) -> DatasetSplits:
    """The run's data; with ``holdout`` the test split is a validation share of the training split."""
    data = load_dataset(
        opts.dataset,
        opts.data_dir,
        seed=opts.seed,
        points=opts.points or None,
        image_size=opts.image_size or None,
    )
    return hold_out(data, opts.holdout, opts.seed)


def _trigger(opts: RunOptions, data, secret: int) -> TriggerSet | None:
    """The owner's trigger set: generated from the secret seed (never the public one), or a folder."""
    if opts.trigger in ("none", "", None):
        return None
    if opts.trigger in TRIGGER_KINDS:
        seed = (secret + 7919) % 2**64
        return generate_triggers(
            opts.trigger_count, data.input_shape, data.num_classes, seed=seed, kind=opts.trigger
        )
    seed = (secret + 7919) % 2**63  # a folder's drawn labels and held-out controls: secret too
    return load_trigger_folder(opts.trigger, data.input_shape, data.num_classes, data.normalize, seed)


def _model_config(opts: RunOptions, data) -> dict[str, Any]:
    return {
        "in_channels": data.input_shape[0],
        "num_classes": data.num_classes,
        "width": opts.width,
        "norm": opts.norm,
    } | zoo.size_options(opts.arch, data.input_shape)


def _train(opts: RunOptions, protected: bool) -> dict[str, Any]:
    device = resolve_device(opts.device)
    world = join_world(device)
    if world is not None and device.type == "cuda":
        # one GPU per process under nccl; with PASSPORTNORM_BACKEND=gloo processes may share them
        device = torch.device("cuda", world.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    try:
        quiet = world is not None and not world.main  # one process speaks and writes: rank 0
        with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
            return _train_in(opts, protected, device, world)
    finally:
        leave_world(world)


@dataclass
class _Run:
    """One ``protect`` or ``train`` run as its steps fill it in."""

    opts: RunOptions
    protected: bool
    device: torch.device
    world: World | None
    data: Any = None
    model_config: dict[str, Any] = field(default_factory=dict)
    model: Any = None
    weights_sha256: str | None = None
    ancestor: Any = None  # the trained model a retrofit starts from (a CPU copy), for the self-check
    synced: dict[str, Any] = field(default_factory=dict)
    trigger: TriggerSet | None = None
    seed_source: str | None = None
    retrofitted: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def out(self) -> Path:
        return Path(self.opts.out)

    @property
    def main(self) -> bool:
        """Whether this process releases, keys and reports (rank 0, or the only one)."""
        return self.world is None or self.world.main


def _build(run: _Run) -> None:
    """Every option checked before anything is written; then the run folder, the data and the model."""
    opts = run.opts
    _train_config(opts).validate(run.device)
    check_batch(opts.batch_size, run.world)
    if opts.sync_bn:
        check_sync_bn(run.world, run.device)
    if run.main:
        prepare_run_folder(run.out, resume=opts.resume, overwrite=opts.overwrite)
    run.data = _load(opts)
    torch.manual_seed(opts.seed)
    run.model_config = _model_config(opts, run.data)
    model = zoo.build(opts.arch, trust_code=True, **run.model_config)  # the user named this --arch
    run.weights_sha256 = load_weights(model, opts.weights) if opts.weights else None
    run.ancestor = copy.deepcopy(model).eval() if opts.weights else None
    run.model = model.to(run.device)
    run.synced = to_sync_batchnorm(run.model) if opts.sync_bn else {}


def _protect_model(run: _Run) -> None:
    """The run's secret seed (drawn once, shared by every rank), its trigger set, and the branches;
    from ``--weights`` the signature is embedded in the trained weights first (retrofit)."""
    opts, world = run.opts, run.world
    secret: int | None = None
    if run.main:
        secret, run.seed_source = run_secret_seed(run.out, opts.secret_seed, resume=opts.resume)
    if world is not None:  # every rank must build the same passports and branches
        secret = world.broadcast_int(secret)
    assert secret is not None  # drawn by this process, or received from rank 0
    run.trigger = _trigger(opts, run.data, secret)
    example = first_inputs(run.data.train, 16).to(run.device)
    exclude = [pattern.strip() for pattern in opts.exclude.split(",") if pattern.strip()] or None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PassportWarning)
        run.model = protect(
            run.model,
            example,
            signature=opts.signature,
            passports=opts.passports,
            seed=secret,
            alpha=opts.alpha,
            weak_layers=opts.weak_layers,
            transform_layers=opts.transform_layers,
            signature_mode=opts.signature_mode,
            exclude=exclude,
        )
    if opts.weights:
        began = time.perf_counter()
        run.retrofitted = retrofit(run.model, example) | {"seconds": time.perf_counter() - began}
        print(describe_retrofit(run.retrofitted))
    getattr(run.model, SECRET_SEED)["source"] = run.seed_source  # protect() saw a given seed
    if not opts.resume and run.seed_source is not None:  # rank 0 (or the only process)
        keep_secret_seed(run.out, secret, run.seed_source)
    run.notes = [str(w.message) for w in caught]
    for note in run.notes:
        print(f"note: {note}")


def _fit(run: _Run) -> tuple[Trainer, float]:
    """Train (resumable from the checkpoint); the trainer and the seconds it took."""
    opts = run.opts
    checkpoints = secret_folder(run.out) if run.protected else run.out
    trainer = Trainer(
        run.model,
        run.data,
        _train_config(opts),
        trigger=run.trigger,
        out_dir=checkpoints,
        device=run.device,
        world=run.world,
    )
    print(
        f"{'protected' if run.protected else 'plain'} {opts.arch} (width {opts.width}, {opts.norm}) on "
        f"{opts.dataset} ({len(run.data.train)} train / {len(run.data.test)} test), {opts.epochs} epochs on "
        f"{run.device}"
        + (f" x {run.world.size} processes" if run.world is not None else "")
        + (f", {capacity(run.model)} signature bits, {opts.schedule} schedule" if run.protected else "")
    )
    start = time.perf_counter()
    trainer.fit(resume=opts.resume, on_epoch=print_epoch)
    return trainer, time.perf_counter() - start


def recorded_settings(opts: RunOptions) -> dict[str, Any]:
    """The settings metrics.json records: the public ones (not the secret seed, nor how the run started)."""
    return {k: v for k, v in asdict(opts).items() if k not in ("resume", "overwrite", "secret_seed")}


def _metrics(run: _Run, history: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """What metrics.json records; the secret seed itself stays in owner-key/ and secret/, only where it
    came from is public."""
    settings = recorded_settings(run.opts)
    secret = {"secret_seed": SEED_SOURCES[run.seed_source]} if run.seed_source is not None else {}
    return {
        "command": "protect" if run.protected else "train",
        "settings": settings,
        "seeds": {"seed": run.opts.seed} | secret,
        "history": history,
        "train_seconds": seconds,
        "notes": run.notes,
        **({"retrofit": run.retrofitted} if run.retrofitted is not None else {}),
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": str(run.device),
            "processes": run.world.size if run.world is not None else 1,
        },
    }


def _release(run: _Run) -> torch.nn.Module:
    """The released model (branches stripped) written to ``released/``."""
    opts = run.opts
    restore_batchnorm(run.model, run.synced)
    released = strip(run.model) if run.protected else run.model
    released.eval()
    save_released(
        released.cpu(),
        run.out / "released",
        opts.arch,
        run.model_config,
        dataset=opts.dataset,
        seed=opts.seed,
        points=opts.points,
        image_size=opts.image_size,
        initial_weights_sha256=run.weights_sha256,
        ancestor_weights_sha256=_ancestor_entry(run).weights_sha256 if run.ancestor is not None else None,
        signature_bits=capacity(run.model) if run.protected else 0,
    )
    return released


def _ancestor_entry(run: _Run) -> AncestorEntry:
    """What the key and the release record of the model a retrofit started from."""
    assert run.ancestor is not None and run.weights_sha256 is not None
    return AncestorEntry(released_fingerprint(run.ancestor), run.weights_sha256)


def _key_and_certificate(run: _Run, released: torch.nn.Module, metrics: dict[str, Any]) -> str:
    """The owner key, the release verified with it on the test split, and the certificate when it
    verifies; the verification as markdown."""
    config = metrics["settings"] | {"model_config": run.model_config, "secret_seed": run.opts.secret_seed}
    key = extract_key(
        run.model.cpu(),
        config=config,
        seeds=metrics["seeds"],
        trigger=run.trigger,
        ancestor=_ancestor_entry(run) if run.ancestor is not None else None,
    )
    key.save(run.out / "owner-key")
    report = verify(released.cpu(), key, data=run.data.test, trigger=key.trigger, ancestor=run.ancestor)
    metrics["verification"] = report.to_dict()
    metrics["verified"] = report.verified
    _certify_if_verified(key, released.cpu(), run.out / "certificate.json", report.verified)
    return report.to_markdown("Verification of the released model with the owner key")


def _report(run: _Run, metrics: dict[str, Any], verification: str | None) -> None:
    """history.csv, metrics.json and report.md, and what the run wrote, on stdout."""
    out = run.out
    write_history_csv(out / "history.csv", metrics["history"])
    write_json_atomic(out / "metrics.json", metrics)
    write_text_atomic(out / "report.md", run_report_markdown(metrics, verification))
    secrets_written = f", {out}/owner-key/ and {out}/secret/ (keep both secret)" if run.protected else ""
    print(f"wrote {out}/released/" + secrets_written)
    if verification:
        print(verification)
    if run.protected:
        print(_protect_outcome(metrics, run.opts, out))


def _train_in(opts: RunOptions, protected: bool, device: torch.device, world: World | None) -> dict[str, Any]:
    run = _Run(resolve_task(opts), protected, device, world)
    _build(run)
    if protected:  # plain training has no key, so no trigger set (owner evidence that lives in the key)
        _protect_model(run)
    trainer, seconds = _fit(run)
    if not run.main:  # rank 0 releases, keys and reports; this rank exits with its verdict
        verdict = {"verified": bool(world.broadcast_int(None))} if protected and world else {}
        return {"history": trainer.history} | verdict
    metrics = _metrics(run, trainer.history, seconds)
    released = _release(run)
    verification = _key_and_certificate(run, released, metrics) if protected else None
    if protected and world is not None:
        world.broadcast_int(int(metrics["verified"]))
    _report(run, metrics, verification)
    return metrics


def _certify_if_verified(key: OwnerKey, released: torch.nn.Module, path: Path, verified: bool) -> None:
    """Issue the certificate of a release that verifies; keep one that already commits to this key and
    release (a resumed run must not move a published time); remove one that names a replaced key."""
    current = False
    if path.is_file():
        try:
            old = Certificate.load(path)
            current = old.key_sha256 == key.digest() and old.matches_released(released)
        except CertificateError:
            pass
    if verified and not current:
        Certificate.issue(key, released).save(path)
    elif not verified and path.is_file():
        path.unlink()  # it certifies a key that --overwrite replaced, or a release that no longer verifies


def _protect_outcome(metrics: dict[str, Any], opts: RunOptions, out: Path) -> str:
    """The last line of ``protect``: whether the release verifies, and what to do when it does not."""
    if metrics["verified"]:
        return (
            f"protect: the release verifies with its key; publish {out}/certificate.json, "
            f"keep {out}/owner-key/ secret"
        )
    reasons = "; ".join(metrics["verification"]["failed_conditions"])
    return (
        f"protect: NOT VERIFIED, so no certificate was issued ({reasons}). Train longer (--epochs "
        f"{2 * opts.epochs} --overwrite) or protect more channels (a larger --width)"
    )


def run_protect(opts: RunOptions) -> dict[str, Any]:
    """Protect, train, release, key, certify and self-verify; returns the metrics written to metrics.json."""
    return _train(opts, protected=True)


def run_train(opts: RunOptions) -> dict[str, Any]:
    """Plain training with the same data, budget and seeds (the baseline); no key, certificate or triggers."""
    return _train(opts, protected=False)


def run_verify(
    model_dir: str | Path,
    key_dir: str | Path,
    certificate: str | Path | None = None,
    dataset: str | None = None,
    data_dir: str | None = None,
    use_data: bool = True,
    recalibrate: bool = False,
    rule: VerdictRule = VerdictRule(),
    device: str = "auto",
    reference_dir: str | Path | None = None,
    arch: str | None = None,
    ancestor: str | Path | None = None,
    tsa_roots: list[str] | None = None,
) -> VerificationReport:
    """Verify a released-model folder with an owner key (and optionally its certificate); with
    ``reference_dir`` (the owner's released model) the suspect's channels are aligned to it first.
    ``arch`` is the user's own model code (file.py:factory) the folders name, run only when given.
    ``ancestor``: the model a retrofit key records (released folder or weights file)."""
    key = OwnerKey.load(key_dir)
    model, meta = load_released(model_dir, trusted_arch=arch)
    if ancestor is not None:
        key = key.with_ancestor(load_model_like(ancestor, model, trusted_arch=arch))
    reference = load_released(reference_dir, trusted_arch=arch)[0] if reference_dir is not None else None
    cert = Certificate.load(certificate) if certificate is not None else None
    data = calibration = None
    if use_data:
        missing = "no dataset recorded in the key or model; pass --dataset (or --no-data)"
        splits = recorded_dataset(key.config, dataset, data_dir, fallback=meta, missing=missing)
        data, calibration = (
            splits.test,
            splits.train,
        )  # statistics re-estimated on owner data the accuracy is not read from
    target = resolve_device(device)
    model = model.to(target)
    return verify(
        model,
        key,
        data=data,
        trigger=key.trigger,
        certificate=cert,
        recalibrate=recalibrate,
        rule=rule,
        reference=reference.to(target) if reference is not None else None,
        calibration_data=calibration,
        tsa_roots=load_roots(tsa_roots or []),
    )


def _with_ancestors(claims: list[Claim], ancestors: list[torch.nn.Module]) -> list[Claim]:
    """Each claim with the ancestor its key records, where one of ``ancestors`` is it; an ancestor
    no key records is one line (it would change no verdict, so it is a mistake)."""
    by_hash = {released_fingerprint(model): model for model in ancestors}
    wanted = {c.key.ancestor.weights_sha256 for c in claims if c.key.ancestor is not None}
    stray = sorted(set(by_hash) - wanted)
    if stray:
        raise ConfigError(
            f"--ancestor with weights SHA-256 {stray[0][:16]}... is recorded by neither claim's key; give "
            "only the models the retrofit keys record"
        )
    return [
        replace(c, key=c.key.with_ancestor(by_hash[c.key.ancestor.weights_sha256]))
        if c.key.ancestor is not None and c.key.ancestor.weights_sha256 in by_hash
        else c
        for c in claims
    ]


def run_dispute(
    suspect_dir: str | Path,
    claims: list[tuple[str, str, str]],
    dataset: str | None = None,
    data_dir: str | None = None,
    use_data: bool = True,
    arch: str | None = None,
    ancestors: list[str] | None = None,
    tsa_roots: list[str] | None = None,
) -> DisputeResult:
    """Two claims of (key folder, certificate file, released folder) on a suspect released folder;
    ``arch`` is the user's own model code the folders name, run only when given. ``ancestors``:
    models that retrofit keys record, each handed to the claim whose key records it. ``tsa_roots``:
    PEM files of the time-stamp authorities whose attested times may order the claims."""
    if len(claims) != 2:
        raise ConfigError(f"a dispute needs exactly two --claim entries, got {len(claims)}")
    suspect = load_released(suspect_dir, trusted_arch=arch)[0]
    parsed = []
    for index, (key_dir, cert_file, released_dir) in enumerate(claims):
        name = Path(key_dir).resolve().parent.name or "ABCDEFG"[index]
        parsed.append(
            Claim(
                name,
                OwnerKey.load(key_dir),
                Certificate.load(cert_file),
                load_released(released_dir, trusted_arch=arch)[0],
            )
        )
    parsed = _with_ancestors(parsed, [load_model_like(path, suspect, arch) for path in ancestors or []])
    if parsed[0].name == parsed[1].name:
        parsed = [
            Claim(f"{c.name} ({i + 1})", c.key, c.certificate, c.released) for i, c in enumerate(parsed)
        ]
    data = None
    if use_data:
        missing = "no dataset recorded in the first key; pass --dataset (or --no-data)"
        data = recorded_dataset(parsed[0].key.config, dataset, data_dir, missing=missing).test
    return dispute(suspect, parsed[0], parsed[1], data=data, tsa_roots=load_roots(tsa_roots or []))
