"""Every request and response of a remote verification, one JSON line each, kept as evidence.

A line holds the batch it answers, the attempt, the HTTP status (or the transport error), the
SHA-256 of the exact request and response bytes and, once answered, the labels read. The first
line says what was being verified (endpoint, model, protocol, key digest, batch size): a rerun
into the same folder resumes from the answered batches only when that line matches, so answers
from another endpoint or key can never be mixed in.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["EvidenceLog", "sha256_bytes"]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class EvidenceLog:
    """Append-only JSONL log; ``answered`` maps batch ids to the labels already received."""

    def __init__(self, path: Path, header: dict[str, Any], resume: bool):
        self.path = path
        self.answered: dict[str, list[int]] = {}
        if path.exists() and resume:
            self._read_back(header)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("")
            self._write({"kind": "header", **header})

    def _read_back(self, header: dict[str, Any]) -> None:
        lines = [line for line in self.path.read_text().splitlines() if line.strip()]
        try:
            records = [json.loads(line) for line in lines]
        except json.JSONDecodeError:
            records = [json.loads(line) for line in lines[:-1]]  # the last line was cut by an interruption
        first = records[0] if records else {}
        recorded = {k: first.get(k) for k in header}
        if first.get("kind") != "header" or recorded != header:
            changed = sorted(k for k in header if first.get(k) != header[k])
            raise ConfigError(
                f"{self.path} records a verification with other settings "
                f"({', '.join(changed) or 'no header'}); "
                "pass another --out, or --overwrite to start afresh"
            )
        for record in records[1:]:
            if record.get("labels") is not None:
                self.answered[record["batch"]] = record["labels"]

    def _write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")

    def attempt(self, batch: str, attempt: int, request: bytes, outcome: dict[str, Any]) -> None:
        """One request and what came back (status and response hash, or the error), labels if read."""
        self._write(
            {
                "kind": "request",
                "batch": batch,
                "attempt": attempt,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "request_sha256": sha256_bytes(request),
                **outcome,
            }
        )
        if outcome.get("labels") is not None:
            self.answered[batch] = outcome["labels"]

    def digest(self) -> str:
        """SHA-256 of the whole log as written: what a report cites."""
        return sha256_bytes(self.path.read_bytes())
