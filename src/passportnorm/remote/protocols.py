"""How a batch of inputs becomes a request, and a response becomes labels, for each kind of API.

``v2``: the Open Inference Protocol (KServe v2, Triton, MLServer, ``passportnorm serve``).
``template``: a user's JSON file describing any other JSON API (see :class:`TemplateProtocol`).
Both are registered in ``PROTOCOLS`` by name; ``load_protocol`` builds one from the CLI's options.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from ..errors import ConfigError

__all__ = ["PROTOCOLS", "Protocol", "Request", "TemplateProtocol", "V2Protocol", "load_protocol"]

PROTOCOLS: dict[str, Callable[..., "Protocol"]] = {}


def register_protocol(name: str) -> Callable[[type], type]:
    def add(cls: type) -> type:
        PROTOCOLS[name] = cls
        return cls

    return add


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # appended to the endpoint's base URL
    body: Any  # JSON-serialisable


class Protocol(ABC):
    """Encodes a batch ``(N, *shape)`` into one request and reads ``N`` labels from its JSON answer."""

    name: str

    @abstractmethod
    def request(self, inputs: Tensor) -> Request: ...

    @abstractmethod
    def labels(self, answer: Any, count: int) -> list[int]:
        """``count`` integer labels; ValueError naming what is missing or malformed."""


@register_protocol("v2")
class V2Protocol(Protocol):
    """Open Inference Protocol: input ``input`` FP32; the ``label`` output, else argmax of the first."""

    name = "v2"

    def __init__(self, model: str, input_name: str = "input"):
        self.model, self.input_name = model, input_name

    def request(self, inputs: Tensor) -> Request:
        tensor = {
            "name": self.input_name,
            "shape": list(inputs.shape),
            "datatype": "FP32",
            "data": inputs.float().flatten().tolist(),
        }
        return Request("POST", f"/v2/models/{self.model}/infer", {"inputs": [tensor]})

    def labels(self, answer: Any, count: int) -> list[int]:
        outputs = answer.get("outputs") if isinstance(answer, dict) else None
        if not isinstance(outputs, list) or not outputs:
            raise ValueError("the answer has no 'outputs' list")
        by_name = {o.get("name"): o for o in outputs if isinstance(o, dict)}
        if "label" in by_name:
            return _integers(by_name["label"].get("data"), count, "output 'label'")
        first = outputs[0]
        scores = torch.tensor(first.get("data", []), dtype=torch.float64)
        if scores.numel() == 0 or scores.numel() % count:
            raise ValueError(f"output {first.get('name')!r} has {scores.numel()} values for {count} inputs")
        return scores.reshape(count, -1).argmax(1).tolist()


def _integers(values: Any, count: int, what: str) -> list[int]:
    if not isinstance(values, list) or len(values) != count:
        raise ValueError(f"{what} should hold {count} labels, got {values!r:.80}")
    try:
        return [int(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(f"{what} holds values that are not class indices: {values!r:.80}") from None


@register_protocol("template")
class TemplateProtocol(Protocol):
    """A JSON file that describes another API::

        {"method": "POST", "path": "/api/classify",
         "body": {"model": "m", "images": "{{inputs}}"},
         "labels": "predictions[*].class"}

    In ``body``, the string ``"{{inputs}}"`` becomes the batch as nested lists ``[N, *shape]``,
    ``"{{flat_inputs}}"`` the same values flat, ``"{{shape}}"`` the batch's shape. Either
    ``labels`` (a path to N class indices) or ``scores`` (a path to N rows of scores, argmax
    taken) says where the answer is; a path is keys joined by dots, ``[i]`` an index, ``[*]``
    every element of a list.
    """

    name = "template"
    _FIELDS = {"method", "path", "body", "labels", "scores"}

    def __init__(self, spec: dict[str, Any], where: str = "the template"):
        if not isinstance(spec, dict):
            raise ConfigError(f"{where} must hold a JSON object with path, body and labels or scores")
        unknown = set(spec) - self._FIELDS
        if unknown:
            raise ConfigError(
                f"{where} has unknown fields {sorted(unknown)}; it knows {sorted(self._FIELDS)}"
            )
        if ("labels" in spec) == ("scores" in spec):
            raise ConfigError(f"{where} needs exactly one of 'labels' or 'scores' (where the answer is)")
        if not isinstance(spec.get("path"), str) or not spec["path"].startswith("/"):
            raise ConfigError(f"{where} needs a 'path' starting with '/' (appended to --url)")
        self.method = str(spec.get("method", "POST")).upper()
        self.path, self.body = spec["path"], spec.get("body", "{{inputs}}")
        self.answer_path = spec.get("labels") or spec.get("scores")
        self.scores = "scores" in spec
        _parse_path(self.answer_path, where)

    @classmethod
    def load(cls, path: str | Path) -> "TemplateProtocol":
        path = Path(path)
        try:
            spec = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"template {path} does not exist") from None
        except json.JSONDecodeError as error:
            raise ConfigError(f"template {path} is not valid JSON ({error})") from None
        return cls(spec, str(path))

    def request(self, inputs: Tensor) -> Request:
        values = {
            "{{inputs}}": inputs.float().tolist(),
            "{{flat_inputs}}": inputs.float().flatten().tolist(),
            "{{shape}}": list(inputs.shape),
        }
        return Request(self.method, self.path, _fill(self.body, values))

    def labels(self, answer: Any, count: int) -> list[int]:
        found = _follow(answer, _parse_path(self.answer_path, "the template"))
        if not self.scores:
            return _integers(found, count, f"'{self.answer_path}'")
        try:
            scores = torch.tensor(found, dtype=torch.float64)
        except (TypeError, ValueError):
            raise ValueError(f"'{self.answer_path}' is not a table of scores: {found!r:.80}") from None
        if scores.dim() != 2 or len(scores) != count:
            raise ValueError(
                f"'{self.answer_path}' should hold {count} rows of scores, got shape {tuple(scores.shape)}"
            )
        return scores.argmax(1).tolist()


def _fill(template: Any, values: dict[str, Any]) -> Any:
    if isinstance(template, str) and template in values:
        return values[template]
    if isinstance(template, dict):
        return {k: _fill(v, values) for k, v in template.items()}
    if isinstance(template, list):
        return [_fill(v, values) for v in template]
    return template


def _parse_path(path: Any, where: str) -> list[str | int]:
    """``a.b[0].c[*]`` -> ["a", "b", 0, "c", "*"]."""
    if not isinstance(path, str) or not path:
        raise ConfigError(f"{where}: the answer path must be a string such as 'predictions[*].class'")
    steps: list[str | int] = []
    for part in path.split("."):
        name, _, rest = part.partition("[")
        if name:
            steps.append(name)
        for index in filter(None, rest.replace("]", "").split("[")) if rest else []:
            if index != "*" and not index.lstrip("-").isdigit():
                raise ConfigError(f"{where}: {path!r} has index [{index}]; use a number or *")
            steps.append(index if index == "*" else int(index))
    return steps


def _follow(value: Any, steps: list[str | int]) -> Any:
    for position, step in enumerate(steps):
        if step == "*":
            if not isinstance(value, list):
                raise ValueError(
                    f"expected a list at step {position + 1} of the answer path, got {value!r:.60}"
                )
            return [_follow(item, steps[position + 1 :]) for item in value]
        try:
            value = value[step]
        except (KeyError, IndexError, TypeError):
            raise ValueError(
                f"the answer has no {step!r} at step {position + 1} of its path: {value!r:.80}"
            ) from None
    return value


def load_protocol(name: str, model: str, template: str | None) -> Protocol:
    """The protocol the CLI names; one ConfigError line when it is unknown or lacks its template."""
    if name not in PROTOCOLS:
        raise ConfigError(f"unknown --protocol {name!r}; choose one of {', '.join(PROTOCOLS)}")
    if name == "template":
        if not template:
            raise ConfigError("--protocol template needs --template FILE (a JSON description of the API)")
        return TemplateProtocol.load(template)
    if template:
        raise ConfigError(f"--template is read only with --protocol template, not {name!r}")
    return PROTOCOLS[name](model)
