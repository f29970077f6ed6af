"""Verify a model behind an HTTP API with the owner key's trigger set, and a control beside it.

The triggers go to the endpoint in batches; so does a control of as many fresh inputs drawn
like the triggers, scored against the same owner labels. A copy of the owner's model answers
the triggers with the owner's labels far beyond chance and the control near chance; a model
that merely favours some classes answers both alike. The verdict is ``verify``'s black-box
rule on the triggers; the control is reported beside it. Every request and response is kept
in ``requests.jsonl`` (hashes of both), and an interrupted run resumes from it.

A language model reads a secret prompt with its continuation in the input, one place ahead of
where each token is scored (teacher forcing). An endpoint whose model sees the next token (a
non-causal model, or one built to echo) would name the owner's continuations without ever having
learned them, so the fresh control prompts are also scored on their own random continuations:
an endpoint naming those beyond chance reads ahead, and is never verified.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..data.pixels import PixelScale
from ..data.registry import recorded_dataset
from ..data.triggers import UNSCORED, TriggerSet, generate_triggers
from ..errors import ConfigError
from ..fileio import write_json_atomic
from ..key import OwnerKey
from ..verdict import VerdictRule, binomial_log10_p_value, binomial_p_value, format_p_value
from ..verify import blackbox_report
from .evidence_log import EvidenceLog
from .protocols import load_protocol
from .transport import Endpoint, RemoteError, TransportOptions

__all__ = ["RemoteOptions", "control_inputs", "verify_remote"]

CONTROL_SEED_OFFSET = 1_000_003  # the control's seed: the trigger seed plus this (fresh, reproducible)
# an endpoint naming the control prompts' random continuations this far beyond chance reads ahead; a
# causal model is refused by it once in a thousand runs (a retry), a reading-ahead one every time
LOOKAHEAD_P_VALUE = 1e-3
LOG_NAME = "requests.jsonl"
RESULT_NAMES = ("result.json", "result.md")


@dataclass(frozen=True)
class RemoteOptions:
    url: str
    key: str
    out: str
    model: str = "passportnorm"
    protocol: str = "v2"
    template: str | None = None
    dataset: str | None = None  # the key's dataset (default: as the key records it), for protocols
    data_dir: str | None = None  # that send images (torchserve): how pixels become inputs
    batch_size: int = 16
    resume: bool = False
    overwrite: bool = False
    transport: TransportOptions = field(default_factory=TransportOptions)

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"--url {self.url!r} must start with http:// or https://")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.resume and self.overwrite:
            raise ConfigError("--resume continues the run in --out and --overwrite discards it: pass one")


def control_inputs(trigger: TriggerSet) -> tuple[Tensor, str, Tensor | None]:
    """As many fresh inputs drawn like the triggers: the same generator with another seed, or, for
    triggers from a folder, Gaussian noise with the triggers' per-channel mean and spread; and, for
    secret prompts, the fresh prompts' own continuations (the lookahead check, module docstring)."""
    match = re.fullmatch(r"generated:(\w+):(\d+):seed(\d+)", trigger.source)
    shape = tuple(trigger.inputs.shape[1:])
    if match:
        kind, seed = match.group(1), int(match.group(3)) + CONTROL_SEED_OFFSET
        fresh = generate_triggers(len(trigger), shape, trigger.num_classes, seed=seed, kind=kind)
        own = fresh.labels if kind == "prompts" else None
        return fresh.inputs, f"generated:{kind}:{len(trigger)}:seed{seed}", own
    dims = [0] + list(range(2, trigger.inputs.dim()))
    mean, std = trigger.inputs.mean(dim=dims, keepdim=True), trigger.inputs.std(dim=dims, keepdim=True)
    noise = torch.randn(trigger.inputs.shape, generator=torch.Generator().manual_seed(CONTROL_SEED_OFFSET))
    return mean + std * noise, "noise matched to the triggers' per-channel mean and std", None


def _control(trigger: TriggerSet) -> tuple[Tensor, str, Tensor, Tensor | None]:
    """The control inputs, where they come from, the labels they are scored on (the key's held-out
    controls for owner-chosen labels: they measure the null; else fresh inputs on the owner's
    labels), and, for prompts, their own continuations."""
    if trigger.controls is not None and trigger.control_labels is not None:
        source = "the key's held-out controls, labelled by the owner like the triggers"
        return trigger.controls, source, trigger.control_labels, None
    inputs, source, own = control_inputs(trigger)
    return inputs, source, trigger.labels, own


def lookahead(answers: Tensor, own: Tensor | None, chance: float) -> dict[str, Any] | None:
    """How many of the control prompts' own continuation tokens the endpoint named. They are drawn
    at random, so a model that reads only the tokens before a place names each with chance
    ``chance``; one that reads ahead (its input holds the next token) names them all, and would name
    the owner's continuations just as well: its trigger answers then prove nothing."""
    if own is None:
        return None
    scored = int((own != UNSCORED).sum())
    matches = int(((answers == own) & (own != UNSCORED)).sum())
    log10_p = binomial_log10_p_value(matches, scored, chance)
    return {
        "count": scored,
        "matches": matches,
        "p_value": binomial_p_value(matches, scored, chance),
        "log10_p_value": log10_p,
        "reads_ahead": log10_p <= math.log10(LOOKAHEAD_P_VALUE),
    }


def _answers(endpoint: Endpoint, name: str, inputs: Tensor, batch_size: int, classes: int) -> Tensor:
    """The endpoint's labels for ``inputs``, shaped as the trigger labels are: one per input, or one
    per place of a prompt (token ids)."""
    labels: list[int] = []
    total = len(inputs)
    for start in range(0, total, batch_size):
        stop = min(total, start + batch_size)
        answered = endpoint.labels(f"{name}:{start}-{stop}", inputs[start:stop])
        outside = [label for label in answered if not 0 <= label < classes]
        if outside:
            raise RemoteError(
                f"{endpoint.url} answered class {outside[0]} for {name} inputs {start}-{stop}; the key's "
                f"classes are 0-{classes - 1}: is this the model the key protects (check --model)?"
            )
        labels += answered
        print(
            f"{name}: {stop}/{total} answered ({endpoint.requests_sent} requests sent)",
            file=sys.stderr,
            flush=True,
        )
    places = () if inputs.is_floating_point() else tuple(inputs.shape[1:])
    return torch.tensor(labels, dtype=torch.int64).reshape(total, *places)


def _prepare_out(options: RemoteOptions) -> Path:
    out = Path(options.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; name a folder")
    if (out / LOG_NAME).exists() and not (options.resume or options.overwrite):
        raise ConfigError(
            f"{out} holds an earlier remote verification; pass --resume to continue it or --overwrite "
            "to redo it"
        )
    out.mkdir(parents=True, exist_ok=True)
    for stale in RESULT_NAMES:  # a result stands only beside the log it was decided from
        (out / stale).unlink(missing_ok=True)
    return out


def verify_remote(options: RemoteOptions, rule: VerdictRule = VerdictRule()) -> dict[str, Any]:
    """Query the endpoint, decide, and write result.json, result.md and requests.jsonl to ``out``."""
    key = OwnerKey.load(options.key)
    trigger = key.trigger
    if trigger is None:
        raise ConfigError(
            f"the key in {options.key} has no trigger set; black-box verification needs one "
            "(protect with --trigger noise, the default)"
        )
    protocol = load_protocol(options.protocol, options.model, options.template, lambda: _pixels(key, options))
    out = _prepare_out(options)
    control, control_source, control_labels, own_continuations = _control(trigger)
    batch_size = min(options.batch_size, protocol.inputs_per_request or options.batch_size)
    header = {
        "url": options.url.rstrip("/"),
        "model": options.model,
        "protocol": options.protocol,
        "template": options.template,
        "key_sha256": key.digest(),
        "batch_size": batch_size,
        "control": control_source,
    }
    log = EvidenceLog(out / LOG_NAME, header, resume=options.resume)
    endpoint = Endpoint(options.url, protocol, log, options.transport)
    try:
        trigger_answers = _answers(endpoint, "trigger", trigger.inputs, batch_size, trigger.num_classes)
        control_answers = _answers(endpoint, "control", control, batch_size, trigger.num_classes)
    finally:
        endpoint.close()
    held = trigger.controls is not None
    report = blackbox_report(trigger_answers, trigger, rule, control_answers if held else None)
    matches, scored = trigger.hits(control_answers, control_labels), int((control_labels != UNSCORED).sum())
    chance = 1.0 / trigger.num_classes
    ahead = lookahead(control_answers, own_continuations, chance)
    if ahead is not None and ahead["reads_ahead"]:
        report.verified = False
        report.reasons.append(
            f"the endpoint reads ahead: it named {ahead['matches']}/{ahead['count']} of the control prompts' "
            "random continuations, which no model reading only the tokens before a place can; its answers "
            "to the secret prompts prove nothing"
        )
    result = {
        "verified": report.verified,
        "endpoint": header,
        "report": report.to_dict(),
        "control": {
            "count": scored,
            "matches": matches,
            "accuracy_on_owner_labels": matches / scored,
            "p_value": binomial_p_value(matches, scored, chance),
            "log10_p_value": binomial_log10_p_value(matches, scored, chance),
            "source": control_source,
        },
        "lookahead": ahead,
        "encoding": protocol.encoding(torch.cat([trigger.inputs, control])),
        "requests_sent_this_run": endpoint.requests_sent,
        "log": {"path": str(out / LOG_NAME), "sha256": log.digest()},
        "transport": asdict(options.transport),
    }
    write_json_atomic(out / "result.json", result)
    (out / "result.md").write_text(remote_markdown(result))
    return result


def _pixels(key: OwnerKey, options: RemoteOptions) -> PixelScale:
    """How the key's dataset turns pixels into inputs, to send the triggers as images."""
    missing = (
        f"the key in {options.key} records no dataset, needed to turn its triggers into images; "
        "pass --dataset NAME"
    )
    splits = recorded_dataset(key.config, options.dataset, options.data_dir, missing=missing)
    scale = PixelScale.of_dataset(splits)
    if scale is None:
        raise ConfigError(f"dataset {splits.name!r} does not hold images; --protocol torchserve sends images")
    return scale


def remote_markdown(result: dict[str, Any]) -> str:
    report, control, endpoint = result["report"], result["control"], result["endpoint"]
    trigger_p = format_p_value(report["trigger_p_value"], report["trigger_log10_p_value"])
    control_p = format_p_value(control["p_value"], control["log10_p_value"])
    rows = [
        ("verdict", "**VERIFIED**" if result["verified"] else "**NOT VERIFIED**"),
        ("rule", report["rule"]),
        ("endpoint", f"{endpoint['url']} (model {endpoint['model']!r}, protocol {endpoint['protocol']})"),
        (
            "triggers answered with the owner's labels",
            f"{report['trigger_matches']}/{report['trigger_count']} ({report['trigger_accuracy']:.1%}; "
            f"chance {report['trigger_chance']:.3g} each)",
        ),
        ("P(that many by chance)", trigger_p),
        (
            "control (fresh inputs drawn like the triggers) on the owner's labels",
            f"{control['matches']}/{control['count']} ({control['accuracy_on_owner_labels']:.1%}), "
            f"p = {control_p}",
        ),
        *_lookahead_rows(result.get("lookahead")),
        ("inputs sent as", _encoding_text(result["encoding"])),
        ("evidence log", f"{result['log']['path']} (SHA-256 {result['log']['sha256']})"),
    ]
    lines = ["## Remote verification", "", "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), ""]
    lines += [f"- {reason}" for reason in report["reasons"]]
    return "\n".join(lines) + "\n"


def _lookahead_rows(ahead: dict[str, Any] | None) -> list[tuple[str, str]]:
    if ahead is None:
        return []
    p = format_p_value(ahead["p_value"], ahead["log10_p_value"])
    verdict = "reads ahead" if ahead["reads_ahead"] else "reads only what came before"
    return [
        (
            "control prompts' own continuations (lookahead check)",
            f"{ahead['matches']}/{ahead['count']}, p = {p}: {verdict}",
        )
    ]


def _encoding_text(encoding: dict[str, Any]) -> str:
    text = encoding["format"]
    if "clipped_share" in encoding:
        text += (
            f"; {encoding['clipped_share']:.1%} of the values fell outside the pixel range and were clipped"
        )
    return text
