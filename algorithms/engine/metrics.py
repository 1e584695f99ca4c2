"""Run-folder logging: metrics JSONL (always), accelerate trackers where installed.

Keys are namespaced: ``train/`` (losses, objective, clip fraction, grad norm, divergence),
``rollout/`` (rewards, lengths, teacher-signal fraction, missing rewards), ``eval/``
(held-out avg@k, response length) and ``timing/`` (seconds per phase).
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

__all__ = ["MetricsLogger", "Timer", "truncate_jsonl"]


class Timer:
    """Accumulate seconds per phase: ``with timer("generation"): ...``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._phase: str | None = None
        self._start = 0.0

    def __call__(self, phase: str) -> Timer:
        """Name the phase the next ``with`` block measures."""
        self._phase = phase
        return self

    def __enter__(self) -> Timer:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._phase is not None
        self.seconds[self._phase] += time.perf_counter() - self._start
        self._phase = None

    def add(self, phase: str, seconds: float) -> None:
        """Add seconds measured elsewhere."""
        self.seconds[phase] += seconds

    def as_metrics(self) -> dict[str, float]:
        """Return ``timing/<phase>`` keys."""
        return {f"timing/{k}": v for k, v in self.seconds.items()}


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsLogger:
    """Append one JSON line per step to ``metrics.jsonl``; forward to accelerate trackers."""

    def __init__(self, path: Path, accelerator: Any = None, *, append: bool = False) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a" if append else "w", encoding="utf-8")
        self.accelerator = accelerator

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """Write the metrics of one step."""
        record = {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self.accelerator is not None and getattr(self.accelerator, "trackers", None):
            numeric = {k: v for k, v in record.items() if isinstance(v, (int, float))}
            self.accelerator.log(numeric, step=step)

    def close(self) -> None:
        """Close the file."""
        self._file.close()


def truncate_jsonl(path: Path, keep: Any) -> None:
    """Rewrite a JSONL file keeping the records for which ``keep(record)`` is true.

    Used on resume: lines written after the checkpoint by the killed run are dropped, and a
    torn last line (the process died mid-write) goes with them.
    """
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if keep(record):
            kept.append(line)
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
