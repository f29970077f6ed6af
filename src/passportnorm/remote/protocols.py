"""How a batch of inputs becomes a request, and a response becomes labels, for each kind of API.

``v2``: the Open Inference Protocol (KServe v2, Triton, MLServer, ``passportnorm serve``).
``torchserve``: TorchServe's ``POST /predictions/{name}`` with one encoded image per request.
``template``: a user's JSON file describing any other JSON API (see :class:`TemplateProtocol`).
All are registered in ``PROTOCOLS`` by name; ``load_protocol`` builds one from the CLI's options.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..data.pixels import PixelScale, encode_png
from ..errors import ConfigError
from ..registry import Registry

__all__ = [
    "PROTOCOLS",
    "Protocol",
    "Request",
    "TemplateProtocol",
    "TorchServeProtocol",
    "V2Protocol",
    "answer_count",
    "load_protocol",
]

PROTOCOLS: Registry[Callable[..., Protocol]] = Registry("protocol")


def register_protocol(name: str) -> Callable[[Any], Any]:
    """``@register_protocol("v2")`` above the class that speaks it."""
    return PROTOCOLS.register(name)


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # appended to the endpoint's base URL
    body: Any  # JSON-serialisable, or bytes sent as they are
    content_type: str = "application/json"

    def content(self) -> bytes:
        return self.body if isinstance(self.body, bytes) else json.dumps(self.body).encode()


def answer_count(inputs: Tensor) -> int:
    """How many labels a batch is answered with: one per input, or, for token ids (a language
    model's prompts), one next-token choice at every place."""
    if inputs.is_floating_point():
        return len(inputs)
    return inputs.numel()


def _values(inputs: Tensor) -> Tensor:
    """What travels: token ids as integers, anything else as 32-bit floats."""
    return inputs if not inputs.is_floating_point() else inputs.float()


class Protocol(ABC):
    """Encodes a batch ``(N, *shape)`` into one request and reads its labels (:func:`answer_count`
    of them, in row-major order) from its JSON answer."""

    name: str
    inputs_per_request: int | None = None  # None: any batch; else the most one request carries

    @abstractmethod
    def request(self, inputs: Tensor) -> Request: ...

    @abstractmethod
    def labels(self, answer: Any, count: int) -> list[int]:
        """``count`` integer labels; ValueError naming what is missing or malformed."""

    def encoding(self, inputs: Tensor) -> dict[str, Any]:
        """How the inputs travel, for the report: what the suspect saw of them."""
        if not inputs.is_floating_point():
            return {"format": "token ids as JSON integers (exact)"}
        return {"format": "32-bit floats in JSON (exact)"}


@register_protocol("v2")
class V2Protocol(Protocol):
    """Open Inference Protocol: input ``input`` FP32 (token ids: INT64); the ``label`` output, else
    argmax of the first output's last axis."""

    name = "v2"

    def __init__(self, model: str, input_name: str = "input"):
        self.model, self.input_name = model, input_name

    def request(self, inputs: Tensor) -> Request:
        tensor = {
            "name": self.input_name,
            "shape": list(inputs.shape),
            "datatype": "FP32" if inputs.is_floating_point() else "INT64",
            "data": _values(inputs).flatten().tolist(),
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


@register_protocol("torchserve")
class TorchServeProtocol(Protocol):
    """TorchServe: each input as PNG bytes to ``/predictions/{model}``; the server's handler normalises.

    The answer is read as TorchServe's image classifier writes it, ``{"class": probability, ...}``
    (the most probable class taken; classes must be indices, not names), or as a bare class index,
    ``{"label": index}``, or a list of scores. Inputs are turned back into 8-bit pixels with the
    dataset's normalisation (:class:`PixelScale`); ``clipped`` is the share of values that did not fit.
    """

    name = "torchserve"
    inputs_per_request = 1

    def __init__(self, model: str, pixels: PixelScale):
        self.model, self.pixels = model, pixels

    def request(self, inputs: Tensor) -> Request:
        if len(inputs) != 1:
            raise ValueError(f"TorchServe takes one image per request, got a batch of {len(inputs)}")
        image, _ = self.pixels.to_pixels(inputs[0].cpu())
        return Request("POST", f"/predictions/{self.model}", encode_png(image), "image/png")

    def encoding(self, inputs: Tensor) -> dict[str, Any]:
        clipped = self.pixels.to_pixels(inputs.cpu())[1]
        return {"format": "8-bit PNG images (the dataset's normalisation undone)", "clipped_share": clipped}

    def labels(self, answer: Any, count: int) -> list[int]:
        if isinstance(answer, list) and len(answer) == 1 and not _is_number(answer[0]):
            answer = answer[0]  # some handlers wrap the one answer in a list
        if isinstance(answer, dict) and "label" in answer:
            answer = answer["label"]
        if isinstance(answer, bool) or not isinstance(answer, (int, dict, list)):
            raise ValueError(f"expected class probabilities, a class index or scores, got {answer!r:.80}")
        if isinstance(answer, int):
            return [answer]
        if isinstance(answer, list):
            if not answer or not all(_is_number(v) for v in answer):
                raise ValueError(f"expected a list of scores, got {answer!r:.80}")
            return [max(range(len(answer)), key=answer.__getitem__)]
        if not answer or not all(_is_number(v) for v in answer.values()):
            raise ValueError(f"expected {{class: probability}}, got {answer!r:.80}")
        best = max(answer, key=answer.__getitem__)
        try:
            return [int(best)]
        except ValueError:
            raise ValueError(
                f"the answer names classes ({best!r}), not indices: serve without index_to_name.json, "
                "or use --protocol template with a 'labels' path"
            ) from None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integers(values: Any, count: int, what: str) -> list[int]:
    while isinstance(values, list) and values and all(isinstance(v, list) for v in values):
        values = [v for row in values for v in row]  # a language model's rows of per-place choices
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
    taken) says where the answer is (for token ids, a label or a row of scores at every place);
    a path is keys joined by dots, ``[i]`` an index, ``[*]`` every element of a list.
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
    def load(cls, path: str | Path) -> TemplateProtocol:
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
            "{{inputs}}": _values(inputs).tolist(),
            "{{flat_inputs}}": _values(inputs).flatten().tolist(),
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
        rows = scores.reshape(-1, scores.shape[-1]) if scores.dim() >= 2 else scores
        if scores.dim() < 2 or len(rows) != count:
            raise ValueError(
                f"'{self.answer_path}' should hold {count} rows of scores, got shape {tuple(scores.shape)}"
            )
        return rows.argmax(1).tolist()


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


def load_protocol(
    name: str, model: str, template: str | None, pixels: Callable[[], PixelScale] | None = None
) -> Protocol:
    """The protocol the CLI names; one ConfigError line when it is unknown or lacks its template.
    ``pixels`` gives the dataset's pixel scale, asked for only by protocols that send images."""
    PROTOCOLS.check(name)
    if name == "template":
        if not template:
            raise ConfigError("--protocol template needs --template FILE (a JSON description of the API)")
        return TemplateProtocol.load(template)
    if template:
        raise ConfigError(f"--template is read only with --protocol template, not {name!r}")
    if name == "torchserve":
        if pixels is None:
            raise ConfigError("--protocol torchserve needs the key's dataset to turn triggers into images")
        return TorchServeProtocol(model, pixels())
    return PROTOCOLS[name](model)
