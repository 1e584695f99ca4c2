"""Resumable checkpoints: model, optimizer, scheduler, teacher, RNG states, data position.

A checkpoint is a folder ``<output_dir>/checkpoints/step_000010/`` holding ``state.pt`` (one
``torch.save`` of everything needed to continue bit-identically on CPU) and a ``DONE``
marker written last, so a run killed mid-save never resumes from a torn checkpoint: the
folder is written under a temporary name and renamed into place. :func:`latest_checkpoint`
returns the newest complete one. The final model is also saved with ``save_pretrained``
(``<output_dir>/final/``) so it loads with :func:`algorithms.models.load_model`.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "capture_rng",
    "latest_checkpoint",
    "load_checkpoint",
    "prune_checkpoints",
    "restore_rng",
    "save_checkpoint",
]

_PATTERN = re.compile(r"^step_(\d+)$")


def capture_rng() -> dict[str, Any]:
    """Return the states of Python's, NumPy's and torch's (CPU and CUDA) RNGs."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Restore RNG states from :func:`capture_rng`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory: Path, step: int, state: dict[str, Any]) -> Path:
    """Write ``state`` atomically as ``directory/step_<step>/state.pt``; return the folder."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step_{step:06d}"
    tmp = directory / f".tmp_step_{step:06d}_{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    torch.save(state, tmp / "state.pt")
    (tmp / "DONE").write_text(str(step), encoding="utf-8")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return final


def latest_checkpoint(directory: Path) -> Path | None:
    """Return the newest complete checkpoint folder, or None."""
    if not directory.is_dir():
        return None
    done = [
        (int(m.group(1)), p)
        for p in directory.iterdir()
        if (m := _PATTERN.match(p.name)) and (p / "DONE").exists()
    ]
    return max(done)[1] if done else None


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint's state (on CPU; the trainer moves tensors where they belong)."""
    return torch.load(path / "state.pt", map_location="cpu", weights_only=False)


def prune_checkpoints(directory: Path, keep: int) -> None:
    """Delete all but the ``keep`` newest complete checkpoints (and stale temporaries)."""
    if not directory.is_dir():
        return
    for p in directory.glob(".tmp_step_*"):
        shutil.rmtree(p, ignore_errors=True)
    done = sorted(
        (int(m.group(1)), p) for p in directory.iterdir() if (m := _PATTERN.match(p.name))
    )
    for _, p in done[: max(0, len(done) - keep)]:
        shutil.rmtree(p, ignore_errors=True)
