"""Sending batches to an endpoint as a careful client does: timeouts, retries with backoff, a rate limit.

A request that fails in transit, times out, or is answered 429 or 5xx is retried up to
``retries`` times, waiting ``backoff * 2**attempt`` seconds (capped at ``max_wait``), or what
the server's ``Retry-After`` asks when it says; other 4xx answers are the caller's mistake and
stop at once with the server's message. Every attempt goes to the evidence log.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ..errors import PassportNormError
from .evidence_log import EvidenceLog, sha256_bytes
from .protocols import Protocol, Request, answer_count

__all__ = ["Endpoint", "RemoteError", "TransportOptions"]

_RETRIED = {429, 500, 502, 503, 504}


class RemoteError(PassportNormError):
    """The endpoint could not be reached or answered something the protocol cannot read."""


@dataclass(frozen=True)
class TransportOptions:
    timeout: float = 30.0  # seconds per request
    retries: int = 5  # after the first attempt
    backoff: float = 0.5  # first wait, doubled after each failure
    max_wait: float = 30.0
    rate: float = 0.0  # requests per second at most; 0: no limit

    def __post_init__(self) -> None:
        for name in ("timeout", "backoff", "max_wait", "rate"):
            if getattr(self, name) < 0 or (name == "timeout" and self.timeout == 0):
                raise RemoteError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.retries < 0:
            raise RemoteError(f"--retries must be 0 or more, got {self.retries}")


class Endpoint:
    """One server: ``labels(batch_id, inputs)`` answers from the log when already answered, else asks."""

    def __init__(self, url: str, protocol: Protocol, log: EvidenceLog, options: TransportOptions):
        import httpx

        if not url.startswith(("http://", "https://")):
            raise RemoteError(f"--url {url!r} must start with http:// or https://")
        self.url, self.protocol, self.log, self.options = url.rstrip("/"), protocol, log, options
        self._client = httpx.Client(timeout=options.timeout)
        self._last_sent = 0.0
        self.requests_sent = 0

    def close(self) -> None:
        self._client.close()

    def labels(self, batch: str, inputs: Tensor) -> list[int]:
        if batch in self.log.answered:
            return self.log.answered[batch]
        request = self.protocol.request(inputs)
        body = request.content()
        for attempt in range(self.options.retries + 1):
            outcome, wait = self._attempt(request, body, answer_count(inputs))
            self.log.attempt(batch, attempt, body, outcome)
            if outcome.get("labels") is not None:
                return outcome["labels"]
            if wait is None:  # not worth repeating
                raise RemoteError(f"{self.url}{request.path}: {outcome['error']}")
            if attempt < self.options.retries:
                time.sleep(min(self.options.max_wait, wait or self.options.backoff * 2**attempt))
        raise RemoteError(
            f"{self.url}{request.path}: no answer after {self.options.retries + 1} attempts "
            f"(last: {outcome['error']}); rerun the same command to resume from the answered batches"
        )

    def _attempt(self, request: Request, body: bytes, count: int) -> tuple[dict[str, Any], float | None]:
        """(what to log, how long to wait before retrying: None = do not retry, 0 = the backoff)."""
        import httpx

        self._respect_rate()
        started = time.monotonic()
        try:
            response = self._client.request(
                request.method,
                self.url + request.path,
                content=body,
                headers={"content-type": request.content_type},
            )
        except httpx.HTTPError as error:
            return {"error": f"{type(error).__name__}: {error}"[:300], "elapsed_s": _since(started)}, 0.0
        finally:
            self.requests_sent += 1
        outcome: dict[str, Any] = {
            "status": response.status_code,
            "response_sha256": sha256_bytes(response.content),
            "elapsed_s": _since(started),
        }
        if response.status_code != 200:
            outcome["error"] = f"HTTP {response.status_code} {_message(response)}"
            if response.status_code in _RETRIED:
                return outcome, _retry_after(response)
            return outcome, None
        try:
            answer = response.json()
        except ValueError:
            kind = response.headers.get("content-type", "no content type")
            outcome["error"] = f"answered {kind}, not JSON: {response.text[:80]!r}"
            return outcome, None
        try:
            outcome["labels"] = self.protocol.labels(answer, count)
        except ValueError as error:
            outcome["error"] = f"the answer does not fit the {self.protocol.name} protocol: {error}"
        return outcome, None

    def _respect_rate(self) -> None:
        if self.options.rate > 0:
            pause = self._last_sent + 1.0 / self.options.rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        self._last_sent = time.monotonic()


def _since(started: float) -> float:
    return round(time.monotonic() - started, 4)


def _message(response: Any) -> str:
    try:
        answer = response.json()
        text = answer.get("error") or answer.get("detail") or answer
    except (ValueError, AttributeError):
        text = response.text
    return str(text)[:200]


def _retry_after(response: Any) -> float:
    """Seconds the server asks to wait (Retry-After in seconds), else 0: use the backoff."""
    try:
        return max(0.0, float(response.headers.get("retry-after", 0)))
    except ValueError:
        return 0.0
