"""One way for every benchmark to reuse a finished run: only one trained with the same settings."""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from passportnorm.pipeline import RunOptions, recorded_settings, resolve_task, run_protect, run_train


def changed_settings(metrics: dict[str, Any], options: RunOptions) -> list[str]:
    """The settings in which the finished run (its metrics.json) differs from ``options``, as the run
    records them (task defaults filled in); where it ran (the folder, the device) does not count."""
    wanted = json.loads(json.dumps(recorded_settings(resolve_task(options))))
    recorded = metrics["settings"]
    return [
        name
        for name, value in wanted.items()
        if name not in ("out", "device") and recorded.get(name, value) != value
    ]


def finished_run(options: RunOptions, protected: bool, reuse: bool = True) -> dict[str, Any]:
    """The metrics of the run in ``options.out``: reused when ``reuse`` and it finished with these
    settings, else trained now (quietly, replacing what is there); ``out`` added for the caller."""
    path = Path(options.out) / "metrics.json"
    if reuse and path.is_file():
        metrics = json.loads(path.read_text())
        changed = changed_settings(metrics, options)
        if not changed:
            return metrics | {"out": options.out}
        print(f"  {options.out}: made with other settings ({', '.join(changed)}); training again", flush=True)
    with contextlib.redirect_stdout(io.StringIO()):
        run = run_protect if protected else run_train
        metrics = run(replace(options, resume=False, overwrite=True))
    return metrics | {"out": options.out}
