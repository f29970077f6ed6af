"""Find, for each norm layer, the layer whose weights carry its bits: its producer, else its consumer.

The producer is the Conv/Linear module whose output feeds the norm directly; the data flow comes
from ``torch.fx``, nothing is guessed from module order. When a module cannot be traced
(data-dependent control flow, say) its children are traced one by one, and a norm left unreached
is paired from the real calls of one forward instead (call_links.py), or reported with the
tracing error. A norm with no producer (the pre-norm LayerNorm/RMSNorm of a transformer block
reads the residual stream) is paired with its consumer, the first Linear or self-attention that
reads its output, seen in the same calls. Explicit ``pairs`` replace tracing and discovery.
Every candidate is checked against real shapes from one run of ``example_input``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from .call_links import called_producer, first_consumer, stream_writer
from .capture import Capture, capture
from .choices import LeverRole
from .errors import PairingError
from .norm import (
    SUPPORTED_PRODUCERS,
    consumer_kinds,
    is_hand_written_rmsnorm,
    lever_weight,
    norm_channel_dim,
    norm_channels,
    observed_channel_dim,
    producer_channel_dim,
    producer_fan_in,
    reparametrized_weight_reason,
    unsupported_norm_reason,
)
from .transform_branches import find_transform_modules

__all__ = [
    "Pair",
    "Unprotectable",
    "PairingReport",
    "WEAK_RULE",
    "find_pairs",
    "is_norm_layer",
    "trace_graph",
]

_NORM_FAMILIES: tuple[type[nn.Module], ...] = (
    _NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
    nn.CrossMapLRN2d,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())

_PRODUCER_NAMES = ", ".join(t.__name__ for t in SUPPORTED_PRODUCERS)


def is_norm_layer(module: nn.Module) -> bool:
    """True for every normalization layer PyTorch ships, supported or not (so it can be reported), and
    for the hand-written RMSNorm of decoder LMs."""
    return isinstance(module, _NORM_FAMILIES) or is_hand_written_rmsnorm(module)


# producers reading this few input channels per output channel are weak levers for the sign loss:
# measured, a grayscale first conv (1) embeds 59-91% of its bits and PointNet's xyz layer (3) lost
# a bit in 1 of 3 runs while every wider layer reached 100% (docs/RESULTS.md)
WEAK_FAN_IN = 3
WEAK_RULE = (
    f"norms whose producer reads at most {WEAK_FAN_IN} input channels per output channel are left out "
    "(--weak-layers protect keeps them): their bits embed slowly (docs/RESULTS.md)"
)


@dataclass(frozen=True)
class Pair:
    """A norm layer and its lever, by module path: the producer whose output feeds it, or (role
    ``consumer``) the layer that reads its output. The lever's fields keep the name ``producer``
    (key files and reports read them so for both roles)."""

    norm: str
    producer: str
    norm_type: str
    producer_type: str
    channels: int
    fan_in: int = 0
    crossed: tuple[str, ...] = ()  # ops between producer and norm that only move or keep the channel axis
    transform: str = ""  # the sub-network it sits in, when that one's output transforms the data (a T-Net)
    role: LeverRole = "producer"
    read_as: str = ""  # how the link was seen: a consumer's read (call_links.how_read), or in the calls

    @property
    def weak(self) -> bool:
        """At most WEAK_FAN_IN input channels (grayscale, RGB or xyz inputs, depthwise convs): a
        channel's passport response has that few degrees of freedom, so its bits embed slowly."""
        return 0 < self.fan_in <= WEAK_FAN_IN


@dataclass(frozen=True)
class Unprotectable:
    """A norm layer that cannot carry a passport-aware branch, and why."""

    norm: str
    norm_type: str
    reason: str


@dataclass
class PairingReport:
    """Which norms can be protected (``pairs``, in module order) and which cannot (with reasons)."""

    pairs: list[Pair] = field(default_factory=list)
    unprotectable: list[Unprotectable] = field(default_factory=list)

    @property
    def capacity(self) -> int:
        """Signature bits the protectable norms offer: one per channel."""
        return sum(pair.channels for pair in self.pairs)

    @property
    def producer_pairs(self) -> list[Pair]:
        """The pairs whose lever is a producer: what the attacks and alignments built on a producer's
        output channels (permute, prune, split) act on."""
        return [pair for pair in self.pairs if pair.role == "producer"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "pairs": [asdict(p) for p in self.pairs],
            "unprotectable": [asdict(u) for u in self.unprotectable],
            "capacity_bits": self.capacity,
        }

    def __str__(self) -> str:
        lines = [f"{len(self.pairs)} protectable norm layers, {self.capacity} channels (signature bits)"]
        for p in self.pairs:
            weak = f"  [fan-in {p.fan_in}: weak lever, bits embed slowly]" if p.weak else ""
            transform = f"  [inside transform {p.transform}]" if p.transform else ""
            via = f" via {', '.join(p.crossed)}" if p.crossed else ""
            link = {"consumer": "->", "writer": "<+"}.get(p.role, "<-")
            read = f", {p.read_as}" if p.read_as else ""
            lines.append(
                f"  + {p.norm} ({p.norm_type}, {p.channels} ch) {link} {p.producer} "
                f"({p.producer_type}{read}){via}{weak}{transform}"
            )
        if self.unprotectable:
            lines.append(f"{len(self.unprotectable)} norm layers cannot be protected")
            for u in self.unprotectable:
                lines.append(f"  - {u.norm} ({u.norm_type}): {u.reason}")
        return "\n".join(lines)


class _LeafTracer(fx.Tracer):
    """Keeps every norm and producer a leaf, subclasses included (timm's BatchNormAct2d, a user's
    ``class MyConv(nn.Conv2d)``): the default tracer only stops at modules of ``torch.nn`` itself
    and would trace into them, so pairing never saw them."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        if is_norm_layer(module) or isinstance(module, SUPPORTED_PRODUCERS):
            return True
        return super().is_leaf_module(module, qualified_name)


def trace_graph(module: nn.Module) -> fx.Graph:
    """The fx graph of ``module`` with norms and producers (and their subclasses) as leaves."""
    return _LeafTracer().trace(module)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _describe_source(node: Any, prefix: str, modules: Mapping[str, nn.Module]) -> tuple[str | None, str]:
    """(producer path or None, reason) for the node that feeds a norm."""
    if not isinstance(node, fx.Node):
        return None, f"its input is a constant ({type(node).__name__}), not a layer output"
    if node.op == "call_module":
        path = _join(prefix, str(node.target))
        module = modules[path]
        if isinstance(module, SUPPORTED_PRODUCERS):
            reparametrized = reparametrized_weight_reason(module)
            if reparametrized:
                return (
                    None,
                    f"its producer '{path}' ({type(module).__name__}) cannot carry bits: {reparametrized}",
                )
            return path, ""
        return None, (
            f"its input comes from {type(module).__name__} '{path}'; only {_PRODUCER_NAMES} can be producers"
        )
    if node.op == "placeholder":
        where = f"'{prefix}'" if prefix else "the model"
        return (
            None,
            f"its input is the input '{node.target}' of {where}, not the output of a {_PRODUCER_NAMES}",
        )
    what = getattr(node.target, "__name__", str(node.target))
    return None, f"its input comes from {node.op} '{what}', not straight from a {_PRODUCER_NAMES}"


# ops that may hand a tensor on with every channel intact, at most on another axis (a reshape only
# when it leaves the channel axis alone): pairing looks through them, and _check_moved_channels then
# proves on the example input that each norm channel holds exactly its producer channel's values
_KEEPING_MODULES = (
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.Flatten,
)
_KEEPING_FUNCTIONS = {
    torch.permute,
    torch.transpose,
    torch.swapaxes,
    torch.movedim,
    F.dropout,
    torch.clone,
    torch.flatten,
    torch.reshape,
}
_KEEPING_METHODS = {
    "permute",
    "transpose",
    "swapaxes",
    "movedim",
    "contiguous",
    "clone",
    "flatten",
    "reshape",
    "view",
}


def _channel_keeping(node: Any, prefix: str, modules: Mapping[str, nn.Module]) -> str | None:
    """A short name of ``node``'s op when it only moves or keeps channels (permute, dropout ...), else
    None."""
    if not isinstance(node, fx.Node) or not node.args or not isinstance(node.args[0], fx.Node):
        return None
    rest = ", ".join(str(a) for a in node.args[1:] if not isinstance(a, fx.Node))
    if node.op == "call_module":
        module = modules.get(_join(prefix, str(node.target)))
        return (
            f"{type(module).__name__} '{_join(prefix, str(node.target))}'"
            if isinstance(module, _KEEPING_MODULES)
            else None
        )
    if node.op == "call_function" and node.target in _KEEPING_FUNCTIONS:
        return f"{node.target.__name__}({rest})"
    if node.op == "call_method" and node.target in _KEEPING_METHODS:
        return f"{node.target}({rest})"
    return None


def _through_keeping_ops(
    node: Any, prefix: str, modules: Mapping[str, nn.Module]
) -> tuple[Any, tuple[str, ...]]:
    """Walk back from a norm's input over channel-keeping ops: (the node before them, the ops crossed)."""
    crossed: list[str] = []
    while (op := _channel_keeping(node, prefix, modules)) is not None:
        crossed.append(op)
        node = node.args[0]
    return node, tuple(reversed(crossed))


def _trace_links(
    model: nn.Module, norms: Mapping[str, nn.Module]
) -> tuple[dict[str, str], dict[str, str], dict[str, tuple[str, ...]]]:
    """fx data flow: ({norm: producer}, {norm: reason}, {norm: ops crossed}) for every norm the traces
    reach."""
    modules = dict(model.named_modules())
    links: dict[str, str] = {}
    reasons: dict[str, str] = {}
    crossings: dict[str, tuple[str, ...]] = {}
    calls: dict[str, int] = {}
    trace_errors: dict[str, str] = {}

    def visit(module: nn.Module, prefix: str) -> None:
        try:
            graph = trace_graph(module)
        except Exception as error:  # fx raises many kinds; all mean "cannot trace here"
            message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            trace_errors[prefix] = f"{type(error).__name__}: {message}"
            for name, child in module.named_children():
                if next(child.children(), None) is not None:
                    visit(child, _join(prefix, name))
            return
        for node in graph.nodes:
            if node.op != "call_module":
                continue
            path = _join(prefix, str(node.target))
            if path not in norms:
                continue
            calls[path] = calls.get(path, 0) + 1
            source = node.args[0] if node.args else next(iter(node.kwargs.values()), None)
            source, crossed = _through_keeping_ops(source, prefix, modules)
            producer, reason = _describe_source(source, prefix, modules)
            if producer is not None:
                links[path] = producer
                crossings[path] = crossed
            else:
                reasons[path] = reason + (f" (looked through {', '.join(crossed)})" if crossed else "")

    visit(model, "")
    for path, count in calls.items():
        if count > 1:
            links.pop(path, None)
            reasons[path] = (
                f"it is called {count} times in one forward; one branch cannot serve several inputs"
            )
    for path in norms:
        if path in links or path in reasons:
            continue
        failed = [p for p in trace_errors if p == "" or path.startswith(p + ".")]
        if failed:
            where = max(failed, key=len)
            reasons[path] = (
                f"torch.fx could not trace '{where or type(model).__name__}' ({trace_errors[where]}); "
                "pass pairs={'norm.path': 'producer.path'} for it"
            )
        else:
            reasons[path] = _NEVER_CALLED
    return links, reasons, crossings


_NEVER_CALLED = "the traced forward never calls it"


def _check_reasons_against_calls(reasons: dict[str, str], record: Any) -> None:
    """No false reason: what the trace could not see is checked against the run-time calls."""
    for path, reason in reasons.items():
        calls = record.calls.get(path, 0)
        if reason == _NEVER_CALLED and calls:
            reasons[path] = (
                f"torch.fx did not see its call (it runs {calls} time(s) per forward, inside code the "
                "trace cannot follow); pass pairs={'norm.path': 'producer.path'} for it"
            )
        elif reason == _NEVER_CALLED:
            reasons[path] = "the forward with example_input never calls it"


def _shape_of(example_input: Any) -> str:
    if isinstance(example_input, torch.Tensor):
        return f"of shape {tuple(example_input.shape)}"
    return f"({type(example_input).__name__})"


_NO_AXIS = (
    "its own forward shows no axis carrying one affine value per channel (run with weight 0 and bias 1..C), "
    "so {name} does not apply its weight and bias per channel as the branch needs"
)


def _norm_axis(norm: nn.Module, x: Any) -> int | None:
    """Where ``norm`` keeps its channels in its input ``x``: as its own forward shows, for the torch
    classes and for subclasses that permute or add inside their forward alike."""
    if x.dim() < 2:
        return norm_channel_dim(norm, x.dim())
    return observed_channel_dim(norm, x)


def _check_shapes(pair: Pair, norm: nn.Module, producer: nn.Module, record: Any) -> str | None:
    """Why the real tensors contradict the pairing, or None when they agree."""
    if record.calls.get(pair.norm, 0) == 0:
        return "the forward with example_input never calls it"
    if record.calls.get(pair.norm, 0) > 1:
        return (
            f"it is called {record.calls[pair.norm]} times in one forward; "
            "one branch cannot serve several inputs"
        )
    if pair.producer not in record.outputs or pair.producer not in record.inputs:
        return f"its producer '{pair.producer}' is never called by the forward with example_input"
    out = record.outputs[pair.producer]
    seen = record.inputs.get(pair.norm)
    if pair.crossed:
        return _check_moved_channels(pair, norm, producer, out, seen)
    if seen is not None and tuple(seen.shape) != tuple(out.shape):
        return (
            f"it receives shape {tuple(seen.shape)} but producer '{pair.producer}' returns {tuple(out.shape)}"
        )
    p_axis = producer_channel_dim(producer, out.dim())
    n_axis = _norm_axis(norm, seen if seen is not None else out)
    if n_axis is None:
        return _NO_AXIS.format(name=type(norm).__name__)
    if p_axis != n_axis:
        return (
            f"producer '{pair.producer}' ({type(producer).__name__}) writes channels on axis {p_axis} of its "
            f"{tuple(out.shape)} output but {type(norm).__name__} keeps its affine values on axis {n_axis}"
        )
    if out.shape[p_axis] != norm_channels(norm):
        return (
            f"it has {norm_channels(norm)} channels but producer '{pair.producer}' gives {out.shape[p_axis]}"
        )
    return None


def _check_moved_channels(
    pair: Pair, norm: nn.Module, producer: nn.Module, out: Any, seen: Any
) -> str | None:
    """Across permutes and dropouts: channel c of the norm's input must hold exactly the values of
    the producer's channel c (eval mode: dropout is the identity), wherever the axis moved to."""
    p_axis, n_axis = producer_channel_dim(producer, out.dim()), _norm_axis(norm, seen)
    if n_axis is None:
        return _NO_AXIS.format(name=type(norm).__name__)
    channels = norm_channels(norm)
    if out.shape[p_axis] != channels or seen.shape[n_axis] != channels or out.numel() != seen.numel():
        return (
            f"across {', '.join(pair.crossed)} it receives shape {tuple(seen.shape)} from producer "
            f"'{pair.producer}' output {tuple(out.shape)}: the channels do not line up"
        )
    ours = out.movedim(p_axis, 0).reshape(channels, -1).sort(dim=1).values
    theirs = seen.movedim(n_axis, 0).reshape(channels, -1).sort(dim=1).values
    if not torch.equal(ours, theirs):
        return (
            f"across {', '.join(pair.crossed)} its channel axis {n_axis} does not carry producer "
            f"'{pair.producer}''s channels (axis {p_axis}) one to one"
        )
    return None


_FROM_CALLS = "seen in the calls; torch.fx could not trace it"
_NO_CONSUMER = (
    "; and no Linear, self-attention or one-group convolution reads its output whole, channel for "
    "channel (the consumer that could carry its bits instead), nor does one Linear write the residual "
    "stream it reads"
)
_WRITES_STREAM = "writes the residual stream it reads"


def _transform_of(path: str, transforms: Mapping[str, Any]) -> str:
    """The transform sub-network (a T-Net) the module at ``path`` sits in, or ""."""
    return next((t for t in transforms if path.startswith(t + ".")), "")


def _pair_from_calls(
    report: PairingReport,
    reasons: dict[str, str],
    norms: Mapping[str, nn.Module],
    modules: Mapping[str, nn.Module],
    record: Capture,
    transforms: Mapping[str, Any],
) -> None:
    """Pair the norms left without a traced producer from the calls of one forward: a producer the
    trace could not see, else the consumer that reads the norm's output (call_links.py)."""
    # one lever per norm and side: a producer already feeding a norm may still be another norm's
    # consumer (Swin's patch-merging Linear reads one norm's channels and writes the next norm's);
    # its rows and its columns carry the two norms' bits
    taken = {pair.producer for pair in report.pairs}  # the traced pairs are all producers
    reading: set[str] = set()
    for path in [p for p in norms if p in reasons]:
        norm = norms[path]
        if unsupported_norm_reason(norm) is not None or record.calls.get(path, 0) != 1:
            continue
        transform = _transform_of(path, transforms)
        pair = _called_producer_pair(path, norm, modules, record, transform, reasons[path])
        if pair is None or pair.producer in taken:
            pair = _consumer_pair(path, norm, modules, record, transform, reading)
        if pair is None:
            pair = _writer_pair(path, norm, modules, record, transform, taken)
        if pair is None:
            reasons[path] += _NO_CONSUMER
            continue
        report.pairs.append(pair)
        (reading if pair.role == "consumer" else taken).add(pair.producer)  # a writer's rows: taken
        del reasons[path]


def _called_producer_pair(
    path: str, norm: nn.Module, modules: Mapping[str, nn.Module], record: Capture, transform: str, reason: str
) -> Pair | None:
    """Where the trace found no producer (it could not follow the code, or the norm's input came
    out of a function): the producer whose output the norm was called on, if the shapes agree as for
    a traced pair."""
    called = called_producer(path, record, modules)
    if called is None:
        return None
    found, how = called
    producer = modules[found]
    if reparametrized_weight_reason(producer) is not None:
        return None
    pair = Pair(
        path,
        found,
        type(norm).__name__,
        type(producer).__name__,
        norm_channels(norm),
        producer_fan_in(producer),
        (),
        transform,
        read_as=_FROM_CALLS if reason.startswith("torch.fx") else f"seen in the calls, {how}",
    )
    if how != "as it is":  # call_links matched it row by row, channels last: the norm must read them there
        return pair if _reads_last_axis(norm, record.inputs.get(path)) else None
    return pair if _check_shapes(pair, norm, producer, record) is None else None


def _reads_last_axis(norm: nn.Module, seen: Any) -> bool:
    return isinstance(seen, torch.Tensor) and _norm_axis(norm, seen) == seen.dim() - 1


def _consumer_pair(
    path: str,
    norm: nn.Module,
    modules: Mapping[str, nn.Module],
    record: Capture,
    transform: str,
    taken: set[str],
) -> Pair | None:
    """The norm paired with its first consumer, found on the axis the norm keeps its channels on."""
    seen = record.inputs.get(path)
    axis = _norm_axis(norm, seen) if isinstance(seen, torch.Tensor) else None
    if axis is None:
        return None
    found = first_consumer(path, axis, record, modules, taken)
    if found is None:
        return None
    consumer, how = found
    rows = int(lever_weight(modules[consumer]).shape[0])
    return Pair(
        path,
        consumer,
        type(norm).__name__,
        type(modules[consumer]).__name__,
        norm_channels(norm),
        rows,
        (),
        transform,
        "consumer",
        how,
    )


def _writer_pair(
    path: str,
    norm: nn.Module,
    modules: Mapping[str, nn.Module],
    record: Capture,
    transform: str,
    taken: set[str],
) -> Pair | None:
    """The norm paired with the residual stream's last writer, when it reads the channels last as
    the writer writes them."""
    if not _reads_last_axis(norm, record.inputs.get(path)):
        return None
    found = stream_writer(path, record, modules, taken)
    if found is None:
        return None
    writer = modules[found]
    return Pair(
        path,
        found,
        type(norm).__name__,
        type(writer).__name__,
        norm_channels(norm),
        producer_fan_in(writer),
        (),
        transform,
        "writer",
        _WRITES_STREAM,
    )


def find_pairs(
    model: nn.Module,
    example_input: Any,
    pairs: Mapping[str, str] | None = None,
) -> PairingReport:
    """Pair each norm layer of ``model`` with its producer, or report why it cannot be.

    ``pairs`` ({norm path: producer path}) skips tracing and lists exactly the norms to pair;
    the caller vouches that each producer's output feeds its norm directly. Either way every
    pair is checked against the shapes seen when ``example_input`` runs through the model.
    """
    modules = dict(model.named_modules())
    norms = {path: m for path, m in modules.items() if path and is_norm_layer(m)}
    report = PairingReport()

    crossings: dict[str, tuple[str, ...]] = {}
    if pairs is not None:
        links: dict[str, str] = {}
        reasons: dict[str, str] = {}
        for norm_path, producer_path in pairs.items():
            for path, role in ((norm_path, "norm"), (producer_path, "producer")):
                if path not in modules or not path:
                    raise PairingError(
                        f"pairs names {role} '{path}', which is not a module path of the model"
                    )
            if norm_path not in norms:
                raise PairingError(
                    f"pairs names '{norm_path}' as a norm but it is a {type(modules[norm_path]).__name__}"
                )
            links[norm_path] = producer_path
        for path in norms:
            if path not in links:
                reasons[path] = "not listed in pairs="
    else:
        links, reasons, crossings = _trace_links(model, norms)

    for path, norm in norms.items():
        why = unsupported_norm_reason(norm)
        found = links.get(path)
        if why is None and found is not None and not isinstance(modules[found], SUPPORTED_PRODUCERS):
            kind = type(modules[found]).__name__
            why = f"its producer '{found}' is a {kind}; only {_PRODUCER_NAMES} can be"
        if why is not None:
            reasons[path] = why
            links.pop(path, None)

    transforms = find_transform_modules(model) if pairs is None else {}
    candidates = [
        Pair(
            path,
            links[path],
            type(norms[path]).__name__,
            type(modules[links[path]]).__name__,
            norm_channels(norms[path]),
            producer_fan_in(modules[links[path]]),
            crossings.get(path, ()),
            _transform_of(path, transforms),
        )
        for path in norms
        if path in links
    ]
    watched = {p.norm for p in candidates} | {p.producer for p in candidates} | set(norms)
    if pairs is None:  # every possible lever: the calls may link what the trace did not
        watched |= {
            path
            for path, m in modules.items()
            if path and isinstance(m, SUPPORTED_PRODUCERS + consumer_kinds())
        }
    try:
        record = capture(model, example_input, sorted(watched))
    except Exception as error:  # the user's model refusing the example is theirs to fix: say so in one line
        first = (str(error).strip().splitlines() or [""])[0][:200]
        raise PairingError(
            f"{type(model).__name__} cannot run on the example input {_shape_of(example_input)} "
            f"({type(error).__name__}: {first}); give an input the model accepts (a larger image size or "
            "another --dataset)"
        ) from error
    _check_reasons_against_calls(reasons, record)
    for pair in candidates:
        why = _check_shapes(pair, norms[pair.norm], modules[pair.producer], record)
        if why is None:
            report.pairs.append(pair)
        else:
            reasons[pair.norm] = why
    if pairs is None:
        _pair_from_calls(report, reasons, norms, modules, record, transforms)
    position = {path: index for index, path in enumerate(norms)}
    report.pairs.sort(key=lambda pair: position[pair.norm])

    for path, norm in norms.items():
        if path in reasons:
            report.unprotectable.append(Unprotectable(path, type(norm).__name__, reasons[path]))
    if pairs is not None:
        explicit = [u for u in report.unprotectable if u.norm in pairs]
        if explicit:
            u = explicit[0]
            raise PairingError(f"explicit pair '{u.norm}' -> '{pairs[u.norm]}' is invalid: {u.reason}")
    return report
