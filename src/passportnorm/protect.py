"""Attach passport-aware branches to a model, switch between branches, and remove them.

``protect`` returns a protected copy; ``strip`` returns the released model (the original
architecture, module classes and state-dict keys); ``passport_mode`` runs the passport-aware branch for
the duration of a ``with`` block. The user's model code is never edited or re-threaded.
"""

from __future__ import annotations

import copy
import fnmatch
import secrets
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from operator import attrgetter
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .attach import BINDING, SECRET_SEED, STAMPS, attach_branch, branch_of, detach_branch, stamp
from .aware_statistics import AwareStatistics, Branch, needs_aware_statistics
from .binding import SECURITY_BITS, SIGNATURE_MODES, hash_bits_by_layer
from .branch import PassportAwareBranch
from .capture import capture
from .choices import LayerPolicy, SignatureMode, words
from .errors import (
    AlreadyProtectedError,
    NothingToProtectError,
    NotProtectedError,
    PairingError,
    PassportWarning,
    SignatureError,
)
from .norm import (
    Layer,
    consumer_outputs,
    consumer_responses,
    lever_weight,
    producer_channel_dim,
    producer_responses,
)
from .pairing import WEAK_FAN_IN, Pair, PairingReport, find_pairs
from .passports import PassportGenerator, make_passport_generator
from .signature import Signature

__all__ = [
    "protect",
    "strip",
    "passport_mode",
    "protected_layers",
    "statistics_layers",
    "is_protected",
    "capacity",
    "sign_loss",
    "select_pairs",
    "ProtectOptions",
    "hash_bits_of",
    "passports_of",
    "LAYER_POLICIES",
    "RESPONSE_LIMIT",
    "response_outliers",
]

# passport responses are O(1) by construction (unit-scale passports through initialised weights);
# beyond this the MLP saturates and the sign loss dwarfs the task loss (issue 16: NaN in 6 steps)
RESPONSE_LIMIT = 10.0


def _branches(model: nn.Module) -> dict[str, Branch]:
    return {path: branch for path, m in model.named_modules() if (branch := branch_of(m)) is not None}


def protected_layers(model: nn.Module) -> dict[str, PassportAwareBranch]:
    """Every passport-aware branch of ``model`` by the path of its norm, in module order."""
    return {path: b for path, b in _branches(model).items() if isinstance(b, PassportAwareBranch)}


def statistics_layers(model: nn.Module) -> dict[str, AwareStatistics]:
    """Every unprotected norm's branch of separate statistics for the passport-aware forward, by norm path."""
    return {path: b for path, b in _branches(model).items() if isinstance(b, AwareStatistics)}


def is_protected(model: nn.Module) -> bool:
    return bool(protected_layers(model))


def _require_protected(model: nn.Module, action: str) -> dict[str, PassportAwareBranch]:
    layers = protected_layers(model)
    if not layers:
        raise NotProtectedError(
            f"{type(model).__name__} has no passport-aware branches, so it cannot {action}; "
            "call passportnorm.protect(model, example_input, signature) first"
        )
    return layers


def capacity(model: nn.Module) -> int:
    """Signature bits a protected model carries: one per protected channel."""
    return sum(layer.channels for layer in _require_protected(model, "report a capacity").values())


def response_outliers(model: nn.Module) -> dict[str, float]:
    """Protected layers whose largest passport response exceeds RESPONSE_LIMIT (or is not finite), by path."""
    outliers = {}
    with torch.no_grad():
        for path, layer in protected_layers(model).items():
            top = float(layer.passport_responses().abs().max())
            if not top <= RESPONSE_LIMIT:  # NaN lands here too
                outliers[path] = top
    return outliers


def _warn_about_outliers(model: nn.Module) -> None:
    outliers = response_outliers(model)
    if outliers:
        shown = ", ".join(f"{path} ({top:.3g})" for path, top in list(outliers.items())[:5])
        more = f" and {len(outliers) - 5} more" if len(outliers) > 5 else ""
        warnings.warn(
            f"passport responses out of range (|g| > {RESPONSE_LIMIT:g}) at {shown}{more}: training may "
            "diverge; use random passports, or give activation passports real inputs of the task",
            PassportWarning,
            stacklevel=3,
        )


def select_pairs(
    report: PairingReport,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> list[Pair]:
    """The pairs whose norm path matches an ``include`` pattern and no ``exclude`` pattern (fnmatch).

    An include pattern that matches no protectable norm is an error that says why.
    """
    chosen = list(report.pairs)
    if include is not None:
        include = [include] if isinstance(include, str) else list(include)
        for pattern in include:
            if not any(fnmatch.fnmatchcase(p.norm, pattern) for p in report.pairs):
                blocked = [u for u in report.unprotectable if fnmatch.fnmatchcase(u.norm, pattern)]
                why = f": '{blocked[0].norm}' {blocked[0].reason}" if blocked else ""
                raise PairingError(f"include pattern '{pattern}' matches no protectable norm layer{why}")
        chosen = [p for p in chosen if any(fnmatch.fnmatchcase(p.norm, pat) for pat in include)]
    if exclude is not None:
        exclude = [exclude] if isinstance(exclude, str) else list(exclude)
        chosen = [p for p in chosen if not any(fnmatch.fnmatchcase(p.norm, pat) for pat in exclude)]
    return chosen


def _uniform_response_scale(responses, activations: torch.Tensor) -> float:
    """The RMS of the producer's responses to a U(-1, 1) input shaped like one of ``activations``: the
    scale random passports start at, and the one activation passports are given (issue 17: AlexNet
    x0.25 with shuffle passports at the sign loss's margin, 2-10x this scale, reached NaN within 15
    steps). Weak layers (a producer reading at most 3 channels) keep the margin: their responses
    have that few degrees of freedom, and at this scale the demo's grayscale layer missed 7 of its
    bits after one epoch (an exploratory run of ``passportnorm demo --epochs 1 --width 0.5``: 100% of
    112 at the margin, 93.75% at this scale; tests/test_cli.py asserts 100%)."""
    draw = torch.rand((1, *activations.shape[1:]), generator=torch.Generator().manual_seed(0)) * 2 - 1
    return float(responses(draw.to(activations)).pow(2).mean().sqrt())


def _bit_layout(pairs: Sequence[Pair]) -> dict[str, int]:
    """Where each layer's slice starts in the filled bit vector (message first, random fill after).

    Layers are filled strongest lever first: by producer fan-in, largest first (module order among
    equals). A channel's passport response has as many degrees of freedom as its producer reads
    input channels, so bits in layers reading 1 (grayscale, depthwise) or 3 (xyz points, RGB
    1x1) channels embed last and least reliably; the owner's message lands where they embed well.
    """
    starts, position = {}, 0
    for pair in sorted(pairs, key=lambda p: -p.fan_in):  # stable: module order among equals
        starts[pair.norm] = position
        position += pair.channels
    return starts


def _seeds(seed: int, count: int) -> list[int]:
    """Independent child seeds for the separate random choices of one ``protect`` call."""
    return [int(s) for s in np.random.SeedSequence(int(seed)).generate_state(count, dtype=np.uint32)]


def secret_seed(seed: int | None) -> tuple[int, str]:
    """The seed of the secret material and where it came from.

    Passports, random signature bits and branch MLPs are secrets: if they followed from a seed
    anyone can read or guess (0, or the training seed in model.json), the key could be rebuilt
    from public files. So by default the seed is 128 bits from the operating system's CSPRNG;
    a given seed is for experiments and is marked ``"user"`` in the key.
    """
    if seed is None:
        return secrets.randbits(128), "os-csprng"
    return int(seed), "user"


LAYER_POLICIES = words(LayerPolicy)


@dataclass(frozen=True)
class ProtectOptions:
    """``protect``'s settings, checked before any work (see ``protect`` for what each means)."""

    signature: Signature | str | bytes | Tensor | None = None
    passports: str | PassportGenerator = "random"
    seed: int | None = None
    include: Sequence[str] | None = None
    exclude: Sequence[str] | None = None
    pairs: Mapping[str, str] | None = None
    alpha: float = 0.1
    margin: float = 0.1
    weak_layers: LayerPolicy = "protect"
    transform_layers: LayerPolicy = "protect"
    signature_mode: SignatureMode = "hash"
    separate_statistics: bool = True

    def validate(self) -> PassportGenerator:
        """One typed error naming the option; the passport generator the options name."""
        if self.signature_mode not in SIGNATURE_MODES:
            raise SignatureError(
                f"signature_mode must be one of {', '.join(SIGNATURE_MODES)}, got {self.signature_mode!r}"
            )
        if self.signature_mode == "hash" and not (self.signature is None or isinstance(self.signature, str)):
            raise SignatureError(
                "hash-bound signatures take the owner's identity as text (signature='(c) Alice'); "
                "pass signature_mode='text' to embed bytes or bits as they are"
            )
        for option in ("weak_layers", "transform_layers"):
            if getattr(self, option) not in LAYER_POLICIES:
                raise PairingError(f"{option} must be 'protect' or 'skip', got {getattr(self, option)!r}")
        return make_passport_generator(self.passports)


@dataclass(frozen=True)
class BitPlan:
    """Every protected channel's signature bit and where each layer's slice starts, and the seeds of
    the secret draws (passports, branch MLPs)."""

    message: Signature
    bits: Tensor
    starts: dict[str, int]
    seed: int
    seed_source: str
    passport_seed: int
    mlp_seed: int

    @property
    def total(self) -> int:
        return len(self.bits)

    def layer_bits(self, pair: Pair) -> tuple[Tensor, int, int]:
        """The pair's bits, how many of them carry the message, and the message offset they start at."""
        start = self.starts[pair.norm]
        in_message = min(pair.channels, max(0, self.message.num_bits - start))
        return self.bits[start : start + pair.channels], in_message, start if in_message else 0


def _leave_out(chosen: list[Pair], policy: str, option: str, flagged, why: str, model: str) -> list[Pair]:
    """The pairs a layer policy keeps: all with "protect", those not ``flagged`` (truthy) with "skip"."""
    if policy == "protect":
        return chosen
    if chosen and all(flagged(p) for p in chosen):
        flag = "--" + option.replace("_", "-")
        raise NothingToProtectError(
            f"every protectable norm of {model} ({len(chosen)}, e.g. '{chosen[0].norm}') {why}, and "
            f"{option}='skip' leaves those out; protect them with {option}='protect' ({flag} protect)"
        )
    return [p for p in chosen if not flagged(p)]


_WEAK = (
    f"follows a producer reading at most {WEAK_FAN_IN} channels per output channel "
    "(depthwise convs, the RGB stem)"
)
_TRANSFORM = "sits inside a sub-network whose output transforms the data as a matrix (a T-Net)"


def _refuse_protected(model: nn.Module) -> None:
    if is_protected(model):
        paths = ", ".join(protected_layers(model))
        raise AlreadyProtectedError(
            f"{type(model).__name__} already carries passport-aware branches ({paths}); protect the "
            "original model, or passportnorm.strip(model) first to get the released model back"
        )


def _choose_pairs(model: nn.Module, example_input: Any, options: ProtectOptions) -> list[Pair]:
    """The (norm, producer) pairs to protect: traced or given, filtered by patterns and layer policies."""
    report = find_pairs(model, example_input, pairs=options.pairs)
    chosen = select_pairs(report, options.include, options.exclude)
    name = type(model).__name__
    chosen = _leave_out(chosen, options.weak_layers, "weak_layers", attrgetter("weak"), _WEAK, name)
    in_transform = attrgetter("transform")
    chosen = _leave_out(chosen, options.transform_layers, "transform_layers", in_transform, _TRANSFORM, name)
    if not chosen:
        raise NothingToProtectError(f"no norm layer of {name} can be protected:\n{report}")
    return chosen


def _plan_bits(chosen: list[Pair], options: ProtectOptions) -> BitPlan:
    """The secret seed, the signature bits of every channel (message first) and the layout."""
    message = Signature.coerce(options.signature if options.signature_mode == "text" else None)
    seed, source = secret_seed(options.seed)
    bit_seed, passport_seed, mlp_seed = _seeds(seed, 3)
    bits = message.fill(sum(p.channels for p in chosen), bit_seed)
    return BitPlan(message, bits, _bit_layout(chosen), seed, source, passport_seed, mlp_seed)


def _warn_weak(chosen: list[Pair]) -> None:
    weak = [p.norm for p in chosen if p.weak]
    if weak:
        warnings.warn(
            f"{', '.join(weak)}: the layer carrying the bits has at most {WEAK_FAN_IN} channels on its other "
            "side (a producer reading grayscale, RGB or xyz inputs, a depthwise conv, a consumer with that "
            "few outputs), so the passport response has that few degrees of freedom and these signature "
            "bits embed slowly (docs/RESULTS.md); the owner's message goes to the other layers first, and "
            "weak_layers='skip' leaves them out",
            PassportWarning,
            stacklevel=3,
        )


def _draw_passports(
    model: nn.Module,
    protected: nn.Module,
    example_input: Any,
    chosen: list[Pair],
    generator: PassportGenerator,
    plan: BitPlan,
    margin: float,
) -> dict[str, tuple[Tensor, Tensor]]:
    """Each pair's (gamma, beta) passports, drawn from the levers' real inputs (a consumer's: its
    outputs) and scaled so their responses start where the sign loss can move them."""
    lever_paths = sorted({p.producer for p in chosen})
    captured = capture(protected, example_input, lever_paths).inputs
    activations = generator.activations(model, example_input, lever_paths, captured)
    rng = torch.Generator().manual_seed(plan.passport_seed)
    modules = dict(protected.named_modules())
    drawn = {}
    for pair in chosen:
        with torch.no_grad():
            acts, channel_dim, responses = _passport_space(
                pair, modules[pair.producer], activations[pair.producer]
            )
            scale = margin if pair.weak else _uniform_response_scale(responses, acts)
            gamma, beta = (
                generator.fit_to(passport, responses(passport), scale)
                for passport in generator.generate(acts, channel_dim, rng)
            )
        drawn[pair.norm] = (gamma, beta)
    return drawn


def _passport_space(pair: Pair, lever: Layer, inputs: Tensor) -> tuple[Tensor, int, Any]:
    """(activations to draw passports from, their channel axis, passport -> (N, C) responses).

    A producer's passports are shaped like its input; a consumer's like its output ``x W^T`` (bias
    left out), the space its weight maps the norm's channels to, so ``g`` reads its columns.
    """
    if pair.role == "consumer":
        outputs = consumer_outputs(lever, inputs)
        channel_dim = 1 if isinstance(lever, nn.modules.conv._ConvNd) else outputs.dim() - 1
        responses = partial(consumer_responses, lever, lever_weight(lever), channels=pair.channels)
        return outputs, channel_dim, responses
    responses = partial(producer_responses, lever, lever.weight, channels=pair.channels)
    return inputs, producer_channel_dim(lever, inputs.dim()), responses


def _attach_branches(
    protected: nn.Module,
    chosen: list[Pair],
    passports: dict[str, tuple[Tensor, Tensor]],
    plan: BitPlan,
    options: ProtectOptions,
) -> None:
    """A passport-aware branch on every chosen norm; a second set of statistics on every other norm
    that keeps running statistics (unless ``separate_statistics`` is off)."""
    chosen_norms = {p.norm for p in chosen}
    unprotected = [
        path
        for path, m in protected.named_modules()
        if path not in chosen_norms and needs_aware_statistics(m)
    ]
    modules = dict(protected.named_modules())
    mlp_rng = torch.Generator().manual_seed(plan.mlp_seed)
    for pair in chosen:
        layer_bits, in_message, offset = plan.layer_bits(pair)
        branch = PassportAwareBranch(
            modules[pair.norm],
            modules[pair.producer],
            *passports[pair.norm],
            layer_bits,
            producer_path=pair.producer,
            role=pair.role,
            message_bits=in_message,
            message_offset=offset,
            alpha=options.alpha,
            margin=options.margin,
            generator=mlp_rng,
        )
        attach_branch(modules[pair.norm], branch)
    if options.separate_statistics:
        for path in unprotected:
            attach_branch(modules[path], AwareStatistics(modules[path]))


def protect(
    model: nn.Module,
    example_input: Any,
    signature: Signature | str | bytes | Tensor | None = None,
    passports: str | PassportGenerator = "random",
    seed: int | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    pairs: Mapping[str, str] | None = None,
    *,
    alpha: float = 0.1,
    margin: float = 0.1,
    weak_layers: LayerPolicy = "protect",
    transform_layers: LayerPolicy = "protect",
    signature_mode: SignatureMode = "hash",
    separate_statistics: bool = True,
) -> nn.Module:
    """A copy of ``model`` whose paired norm layers carry passport-aware branches.

    ``example_input`` is run once (eval mode, no grad) to learn real shapes and, for ``image``
    and ``shuffle`` passports, real activations. ``signature`` is the owner's message (text,
    bytes, +-1 bits); channels beyond it get random bits from ``seed``, which also fixes the
    passports and the branch MLPs. ``seed=None`` (default) draws a secret seed from the operating
    system's CSPRNG; a given seed makes the call repeatable (experiments) and is marked so in the key.
    ``include`` and ``exclude`` are fnmatch patterns over norm paths; ``pairs`` replaces tracing by
    explicit ``{norm path: producer path}``. ``alpha`` and ``margin`` shape the sign loss.
    ``weak_layers="skip"`` leaves out norms whose producer reads one input channel per output
    channel (their bits embed slowly, see docs/RESULTS.md); the default protects them with a warning.
    ``transform_layers="skip"`` leaves out norms inside a sub-network whose output transforms the
    data as a matrix (PointNet's T-Nets; transform_branches.py says why; the CLI's default).
    ``signature_mode="hash"`` (default) derives every bit from SHAKE-256 of the owner's identity
    (``signature`` as text) and all passports, so a forger cannot pick passports and bits apart
    (see binding.py); ``"text"`` embeds the text itself as the paper does (readable, forgeable).
    ``separate_statistics`` gives every other norm with running statistics a second set for the
    passport-aware forward (see aware_statistics.py); ``False`` shares one set, as DeepIPR does.

    The input model is left alone, and until the copy is trained its passport-free outputs
    equal the input model's bit for bit.
    """
    options = ProtectOptions(
        signature=signature, passports=passports, seed=seed, include=include, exclude=exclude,
        pairs=pairs, alpha=alpha, margin=margin, weak_layers=weak_layers,
        transform_layers=transform_layers, signature_mode=signature_mode,
        separate_statistics=separate_statistics,
    )  # fmt: skip
    generator = options.validate()
    _refuse_protected(model)
    protected = copy.deepcopy(model)
    chosen = _choose_pairs(protected, example_input, options)
    plan = _plan_bits(chosen, options)
    _warn_weak(chosen)
    drawn = _draw_passports(model, protected, example_input, chosen, generator, plan, options.margin)
    _attach_branches(protected, chosen, drawn, plan, options)
    if options.signature_mode == "hash":
        _bind_to_hash(protected, _identity(options), plan.total)
    _warn_about_outliers(protected)
    _stamp(protected, options, plan)
    return protected


def _identity(options: ProtectOptions) -> str:
    """The owner's identity of a hash-bound signature: its text (validate() refused anything else)."""
    return options.signature if isinstance(options.signature, str) else ""


def _stamp(protected: nn.Module, options: ProtectOptions, plan: BitPlan) -> None:
    """What extract_key records: the signature's mode and identity, and the secret seed's source."""
    identity = _identity(options) if options.signature_mode == "hash" else None
    stamp(protected, BINDING, {"mode": options.signature_mode, "identity": identity})
    stamp(protected, SECRET_SEED, {"value": plan.seed, "source": plan.seed_source})


def passports_of(layers: Mapping[str, PassportAwareBranch]) -> list[tuple[str, Tensor, Tensor]]:
    """(path, gamma passport, beta passport) of each layer: what a hash-bound signature is bound to."""
    return [(path, layer.passport_gamma, layer.passport_beta) for path, layer in layers.items()]


def hash_bits_of(layers: Mapping[str, PassportAwareBranch], identity: str) -> dict[str, Tensor]:
    """Each layer's hash-bound bits for ``identity`` and the layers' passports."""
    return hash_bits_by_layer(identity, passports_of(layers), [layer.channels for layer in layers.values()])


def _bind_to_hash(protected: nn.Module, identity: str, total: int) -> None:
    """Replace the bits of every layer by the hash of the identity and all passports (key order)."""
    layers = protected_layers(protected)
    for path, bits in hash_bits_of(layers, identity).items():
        layers[path].signature.copy_(bits.to(layers[path].signature.device))
        layers[path].message_bits.zero_()
        layers[path].message_offset.zero_()
    if total < SECURITY_BITS:
        warnings.warn(
            f"only {total} hash-bound signature bits: a claim needs at least {SECURITY_BITS} to reach the "
            f"2^-{SECURITY_BITS} "
            "forgery bound; protect more (or wider) norm layers",
            PassportWarning,
            stacklevel=3,
        )


def strip(model: nn.Module) -> nn.Module:
    """The released model: a copy of ``model`` with every passport-aware branch removed.

    Every branch (passports and aware statistics) is detached from its norm and the norm's class
    restored, so module classes, parameter names and passport-free outputs are exactly those of
    the original architecture.
    """
    _require_protected(model, "be stripped")
    released = copy.deepcopy(model)
    for branch in _branches(released).values():
        detach_branch(branch.norm)
    for name in STAMPS:  # what protect added to the model object; the release carries none of it
        released.__dict__.pop(name, None)
    return released


@contextmanager
def passport_mode(model: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """Run the passport-aware branch (or, with ``enabled=False``, the free one) inside the block.

    The previous mode of every layer is restored on exit, so blocks nest. In passport mode torch's
    fused transformer fast path is off: in eval mode without gradients ``TransformerEncoderLayer``
    and ``MultiheadAttention`` read a norm's weight straight into one kernel and never call the
    norm, so the branch would not run (measured: the passport-aware output equalled the free one).
    """
    layers = [*_require_protected(model, "enter passport mode").values(), *statistics_layers(model).values()]
    previous = [(layer, layer.passport_mode) for layer in layers]
    for layer in layers:
        layer.passport_mode = enabled
    try:
        with _transformer_fast_path(allowed=not enabled):
            yield model
    finally:
        for layer, mode in previous:
            layer.passport_mode = mode


@contextmanager
def _transformer_fast_path(allowed: bool) -> Iterator[None]:
    """torch's fused transformer fast path on or off (where this torch has the switch), restored after."""
    mha = getattr(torch.backends, "mha", None)
    if mha is None or not hasattr(mha, "set_fastpath_enabled"):
        yield
        return
    before = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(before and allowed)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(before)


def sign_loss(model: nn.Module) -> Tensor:
    """Total sign loss over all protected layers, for the ``g`` of the last passport-aware forward.

    Add it to the task loss of a passport-mode step; it keeps the autograd graph of that forward.
    """
    layers = _require_protected(model, "give a sign loss").values()
    return torch.stack([layer.sign_loss() for layer in layers]).sum()
