"""Serve a released model over the Open Inference Protocol (KServe v2, as Triton and MLServer speak it).

Owners serve their release to try black-box verification end to end; the tests serve one as the
suspect. The protocol: ``GET /v2/health/live|ready``, ``GET /v2``, ``GET /v2/models/{name}[/ready]``
and ``POST /v2/models/{name}/infer`` with named tensors (input ``input``, FP32, ``[N, *shape]``;
outputs ``logits`` FP32 ``[N, classes]`` and ``label`` INT64 ``[N]``); a language model takes token
ids (INT64 ``[N, context]``) and answers ``logits`` ``[N, context, vocabulary]`` and ``label`` INT64
``[N, context]``, its next-token choice at every place. Image models also answer as
TorchServe's image classifier does: ``POST /predictions/{name}`` with PNG or JPEG bytes, normalised
with the recorded dataset's mean and std, answered ``{"class index": probability}`` for the top 5;
``GET /ping``. Malformed requests get a 4xx answer ``{"error": "..."}`` naming what is wrong.
FastAPI and uvicorn are the ``serve`` extra: ``pip install 'passportnorm[serve]'``.
"""

# no ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations (Request,
# imported inside build_app so that the extra stays optional) as objects, not strings

import json
import math
import threading
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import __version__
from .data.pixels import PixelScale, decode_image
from .errors import ConfigError

__all__ = ["DEFAULT_MODEL_NAME", "ServedModel", "build_app", "require_serving"]

DEFAULT_MODEL_NAME = "passportnorm"
INPUT_NAME = "input"
TOP_CLASSES = 5  # /predictions answers the most probable classes, as TorchServe's image classifier
_DTYPES = {"FP32": torch.float32, "FP64": torch.float64, "FP16": torch.float16}
_TOKEN_DTYPES = {"INT64": torch.int64, "INT32": torch.int32}


def require_serving() -> None:
    """One line naming the extra when FastAPI or uvicorn is missing."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as error:
        raise ConfigError(
            f"serving needs the 'serve' extra ({error.name} is not installed): "
            "pip install 'passportnorm[serve]'"
        ) from None


@dataclass
class ServedModel:
    """A model in eval mode with what its metadata endpoint announces."""

    model: nn.Module
    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    max_batch: int = 256
    sha256_weights: str | None = None
    pixels: PixelScale | None = None  # how images become inputs; None: no /predictions (not images)
    token_inputs: bool = False  # a language model: inputs are token ids in 0..num_classes-1

    def __post_init__(self) -> None:
        self.model.eval()
        self._lock = threading.Lock()  # one forward at a time: requests arrive on a thread pool
        self._device = next(self.model.parameters()).device

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": ["1"],
            "platform": "pytorch",
            "inputs": [
                {
                    "name": INPUT_NAME,
                    "datatype": "INT64" if self.token_inputs else "FP32",
                    "shape": [-1, *self.input_shape],
                }
            ],
            "outputs": [
                {"name": "logits", "datatype": "FP32", "shape": [-1, *self._places, self.num_classes]},
                {"name": "label", "datatype": "INT64", "shape": [-1, *self._places]},
            ],
            "parameters": {"sha256_weights": self.sha256_weights, "max_batch_size": self.max_batch},
        }

    def tensor_of(self, entry: dict[str, Any]) -> torch.Tensor:
        """The request's input tensor; ValueError (a 400 answer) naming what does not fit."""
        shape, datatype, data = entry.get("shape"), entry.get("datatype"), entry.get("data")
        dtypes = _TOKEN_DTYPES if self.token_inputs else _DTYPES
        if datatype not in dtypes:
            raise ValueError(
                f"input {INPUT_NAME!r} has datatype {datatype!r}; send one of {', '.join(dtypes)}"
                + (" (token ids)" if self.token_inputs else "")
            )
        if (
            not isinstance(shape, list)
            or len(shape) < 1
            or not all(isinstance(s, int) and s > 0 for s in shape)
        ):
            raise ValueError(f"input {INPUT_NAME!r} has shape {shape!r}; send [batch, {self._shape_text()}]")
        if tuple(shape[1:]) != self.input_shape:
            raise ValueError(
                f"input {INPUT_NAME!r} has shape {shape}; this model takes [batch, {self._shape_text()}]"
            )
        if shape[0] > self.max_batch:
            raise OverflowError(f"batch of {shape[0]} exceeds this server's limit of {self.max_batch}")
        flat = _flatten(data)
        if len(flat) != math.prod(shape):
            raise ValueError(
                f"input {INPUT_NAME!r} has {len(flat)} values, its shape {shape} needs {math.prod(shape)}"
            )
        if self.token_inputs:
            return self._tokens(flat, shape)
        try:
            return torch.tensor(flat, dtype=_DTYPES[datatype]).reshape(shape).float()
        except (TypeError, ValueError):
            raise ValueError(f"input {INPUT_NAME!r} holds values that are not numbers") from None

    def _tokens(self, flat: list, shape: list[int]) -> torch.Tensor:
        """Token ids as a long tensor; ValueError unless each is an integer of the vocabulary."""
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in flat):
            raise ValueError(f"input {INPUT_NAME!r} holds values that are not integer token ids")
        tokens = torch.tensor(flat, dtype=torch.int64).reshape(shape)
        if len(flat) and not 0 <= int(tokens.min()) <= int(tokens.max()) < self.num_classes:
            raise ValueError(
                f"input {INPUT_NAME!r} holds token ids outside 0..{self.num_classes - 1} (the vocabulary)"
            )
        return tokens

    def image_input(self, data: bytes) -> torch.Tensor:
        """One encoded image as a batch of one model input; ValueError (a 400 answer) if it does not fit."""
        if self.pixels is None:
            raise ValueError(
                "this server takes no images: its inputs are not images, or it was started with "
                "--input-shape instead of the recorded dataset (use /v2/models/{name}/infer)"
            )
        return self.pixels.to_inputs(decode_image(data, self.input_shape)).unsqueeze(0)

    def _shape_text(self) -> str:
        return ", ".join(str(s) for s in self.input_shape)

    @property
    def _places(self) -> tuple[int, ...]:
        """Where the model answers: once per input, or at every token of a language model's."""
        return self.input_shape if self.token_inputs else ()

    @torch.no_grad()
    def infer(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits with the class axis last (a language model's ``[N, vocabulary, context]``, the
        layout cross-entropy takes, is answered as ``[N, context, vocabulary]``)."""
        with self._lock:
            return self.model(inputs.to(self._device)).float().cpu().movedim(1, -1)


def _flatten(data: Any) -> list:
    """OIP allows the data flat or nested row-major; both become one flat list."""
    if not isinstance(data, list):
        raise ValueError(f"input {INPUT_NAME!r} has no data list")
    if data and isinstance(data[0], list):
        return [value for row in data for value in _flatten(row)]
    return data


def _error(status: int, message: str) -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=status, content={"error": message})


def build_app(served: ServedModel) -> Any:
    """The FastAPI application speaking the Open Inference Protocol for ``served``."""
    require_serving()
    from fastapi import FastAPI, Request
    from fastapi.concurrency import run_in_threadpool

    app = FastAPI(title="passportnorm serve", version=__version__)

    def _known(name: str) -> Any:
        if name != served.name:
            return _error(404, f"no model named {name!r}; this server serves {served.name!r}")
        return None

    @app.get("/v2/health/live")
    def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    def ready() -> dict[str, bool]:
        return {"ready": True}

    @app.get("/v2")
    def server_metadata() -> dict[str, Any]:
        return {"name": "passportnorm", "version": __version__, "extensions": []}

    @app.get("/v2/models/{name}")
    def model_metadata(name: str) -> Any:
        return _known(name) or served.metadata()

    @app.get("/v2/models/{name}/ready")
    def model_ready(name: str) -> Any:
        return _known(name) or {"name": name, "ready": True}

    @app.post("/v2/models/{name}/infer")
    async def infer(name: str, request: Request) -> Any:
        unknown = _known(name)
        if unknown is not None:
            return unknown
        try:  # read as JSON whatever the content type says (curl -d sends form-encoded by default)
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            return _error(400, "malformed request: the body is not JSON")
        if not isinstance(body, dict):
            return _error(400, "malformed request: the body must be a JSON object with 'inputs'")
        return await run_in_threadpool(_answer, body)

    def _answer(body: dict[str, Any]) -> Any:
        inputs = body.get("inputs")
        if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
            return _error(400, f"send exactly one input tensor named {INPUT_NAME!r} in 'inputs'")
        try:
            batch = served.tensor_of(inputs[0])
        except OverflowError as error:
            return _error(413, str(error))
        except ValueError as error:
            return _error(400, str(error))
        logits = served.infer(batch)
        wanted = {o.get("name") for o in body.get("outputs") or [] if isinstance(o, dict)} or {
            "logits",
            "label",
        }
        outputs = []
        if "logits" in wanted:
            outputs.append(
                {
                    "name": "logits",
                    "datatype": "FP32",
                    "shape": list(logits.shape),
                    "data": logits.flatten().tolist(),
                }
            )
        if "label" in wanted:
            outputs.append(
                {
                    "name": "label",
                    "datatype": "INT64",
                    "shape": list(logits.shape[:-1]),
                    "data": logits.argmax(-1).flatten().tolist(),
                }
            )
        answer: dict[str, Any] = {"model_name": served.name, "model_version": "1", "outputs": outputs}
        if "id" in body:
            answer["id"] = body["id"]
        return answer

    @app.get("/ping")
    def ping() -> dict[str, str]:
        return {"status": "Healthy"}

    @app.post("/predictions/{name}")
    async def predictions(name: str, request: Request) -> Any:
        unknown = _known(name)
        if unknown is not None:
            return unknown
        try:
            image = served.image_input(await request.body())
        except ValueError as error:
            return _error(400, str(error))
        probabilities = (await run_in_threadpool(served.infer, image))[0].softmax(0)
        top = probabilities.topk(min(TOP_CLASSES, len(probabilities)))
        return {str(int(c)): float(p) for p, c in zip(top.values, top.indices)}

    return app


def served_release(
    folder: str,
    name: str = DEFAULT_MODEL_NAME,
    input_shape: tuple[int, ...] | None = None,
    data_dir: str | None = None,
    arch: str | None = None,
    device: str = "cpu",
    max_batch: int = 256,
) -> ServedModel:
    """A released-model folder ready to serve; the input shape comes from the dataset it records."""
    from .data.registry import recorded_dataset
    from .release import load_released

    model, meta = load_released(folder, trusted_arch=arch)
    pixels, tokens = None, False
    if input_shape is None:
        missing = f"{folder}/model.json records no dataset; pass --input-shape C,H,W"
        splits = recorded_dataset(meta, None, data_dir, missing=missing)
        input_shape, pixels = tuple(splits.input_shape), PixelScale.of_dataset(splits)
        tokens = splits.task == "text"
    model = model.to(device).eval()
    with torch.no_grad():
        dtype = torch.int64 if tokens else torch.float32
        probe = model(torch.zeros(1, *input_shape, dtype=dtype, device=device))
    sha = meta.get("sha256_weights")
    return ServedModel(
        model, name, tuple(input_shape), int(probe.shape[1]), max_batch, sha, pixels, token_inputs=tokens
    )


class BackgroundServer:
    """uvicorn in a thread (``with BackgroundServer(app) as url:``): tests and notebooks serve this way."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        self._server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> str:
        import time

        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                raise ConfigError("the server did not start (is the port in use?)")
            time.sleep(0.02)
        host, port = self._server.servers[0].sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    def __exit__(self, *exc: Any) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


def serve_forever(served: ServedModel, host: str, port: int) -> None:
    """Serve until interrupted (Ctrl-C stops uvicorn cleanly)."""
    import uvicorn

    print(
        f"serving {served.name!r} on http://{host}:{port}/v2/models/{served.name} (Open Inference Protocol)",
        flush=True,
    )
    uvicorn.run(build_app(served), host=host, port=port, log_level="info")
