"""Resumable checkpoints: model, optimizer, scheduler, objective, RNG states, data position.

A checkpoint is a folder ``<output_dir>/checkpoints/step_000010/`` holding

- ``model.safetensors``: the model's ``state_dict`` in its training dtype (tied weights once),
- ``state.safetensors``: every other tensor (AdamW moments, the objective's copies such as
  SDPO's teacher, the torch RNG state),
- ``state.pt``: a small pickle of the rest (step counters, the sampler, Python/NumPy RNG
  states, byte offsets of the run's logs) whose tensors are references into the two files,
- ``DONE``, written last.

Nothing is stored twice, and nothing is half-written: the folder is written under a
temporary name, every file is fsynced, and the folder is renamed into place (``os.replace``
semantics), so a crash, a full disk or Ctrl-C during a save leaves the previous checkpoint
as it was. Ctrl-C during a save lets the save finish first (a second Ctrl-C aborts it and
removes the temporary folder). :func:`load_latest` returns the newest checkpoint that loads,
warning about any newer one that does not. Bytes per checkpoint: about 4 bytes x parameters
for the fp32 model, 8 x parameters for AdamW's two moments, plus the objective's copies
(SDPO's EMA teacher: 4 x parameters) — see the README's checkpoint section.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlrf.errors import RLRFError, RLRFWarning

__all__ = [
    "CheckpointError",
    "CheckpointWarning",
    "RunInterrupted",
    "capture_rng",
    "complete_checkpoints",
    "deferred_sigint",
    "latest_checkpoint",
    "load_checkpoint",
    "load_latest",
    "log_size",
    "prune_checkpoints",
    "restore_log",
    "restore_rng",
    "resume_hint",
    "save_checkpoint",
]

_PATTERN = re.compile(r"^step_(\d+)$")
_REF = "__rlrf_tensor__"
MODEL_FILE = "model.safetensors"
STATE_FILE = "state.safetensors"


class CheckpointError(RLRFError):
    """A checkpoint could not be written or read (the message names the file)."""


class CheckpointWarning(RLRFWarning):
    """A checkpoint or a log line was unreadable and skipped."""


class RunInterrupted(KeyboardInterrupt):
    """Training was interrupted (Ctrl-C); the message says how to resume."""


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


# --- writing ----------------------------------------------------------------------------


def _split(state: dict[str, Any]) -> tuple[Any, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Replace every tensor in ``state`` by a reference; return (skeleton, model, rest)."""
    files: dict[str, dict[str, torch.Tensor]] = {MODEL_FILE: {}, STATE_FILE: {}}
    seen: dict[tuple[Any, ...], list[str]] = {}
    storages: set[tuple[int, str]] = set()

    def walk(obj: Any, path: str, file: str) -> Any:
        if isinstance(obj, torch.Tensor):
            t = obj.detach()
            ident = (t.untyped_storage().data_ptr(), t.storage_offset(), t.dtype, t.device)
            ident += (tuple(t.shape), tuple(t.stride()))
            if ident in seen:  # tied weights, shared buffers: stored once
                return {_REF: seen[ident]}
            t = t.to("cpu")
            storage = (t.untyped_storage().data_ptr(), str(t.device))
            if storage in storages or not t.is_contiguous():
                t = t.clone(memory_format=torch.contiguous_format)  # safetensors refuses views
            storages.add((t.untyped_storage().data_ptr(), str(t.device)))
            key = path
            while key in files[file]:
                key += "_"
            files[file][key] = t
            seen[ident] = [file, key]
            return {_REF: [file, key]}
        if isinstance(obj, dict):
            return {k: walk(v, f"{path}/{k}" if path else str(k), file) for k, v in obj.items()}
        if type(obj) in (list, tuple):
            return type(obj)(walk(v, f"{path}/{i}", file) for i, v in enumerate(obj))
        return obj

    skeleton = {
        k: walk(v, "" if k == "model" else k, MODEL_FILE if k == "model" else STATE_FILE)
        for k, v in state.items()
    }
    return skeleton, files[MODEL_FILE], files[STATE_FILE]


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems cannot fsync a directory; the data is written anyway
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def deferred_sigint(what: str) -> Iterator[None]:
    """Let ``what`` finish before a Ctrl-C stops the program (a second Ctrl-C aborts it).

    Only in the main thread, and only when SIGINT has Python's default handler (a program
    with its own handler keeps it).
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    received: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        if received:
            raise KeyboardInterrupt
        received.append(signum)
        print(f"\nrlrf: finishing {what} before stopping (Ctrl-C again aborts it)", file=sys.stderr)

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if received:
        raise KeyboardInterrupt


def save_checkpoint(directory: Path, step: int, state: dict[str, Any]) -> Path:
    """Write ``state`` atomically as ``directory/step_<step>/``; return the folder.

    Raises:
        CheckpointError: the write failed (a full disk, ...); the previous checkpoints are
            untouched and the partial folder is removed.

    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step_{step:06d}"
    tmp = directory / f".tmp_step_{step:06d}_{os.getpid()}"
    old = directory / f".old_step_{step:06d}_{os.getpid()}"
    skeleton, model, rest = _split(state)
    with deferred_sigint(f"the checkpoint of step {step}"):
        try:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
            save_file(model, str(tmp / MODEL_FILE), metadata={"format": "pt"})
            save_file(rest, str(tmp / STATE_FILE), metadata={"format": "pt"})
            with (tmp / "state.pt").open("wb") as f:
                torch.save(skeleton, f)
            (tmp / "DONE").write_text(str(step), encoding="utf-8")
            for name in (MODEL_FILE, STATE_FILE, "state.pt", "DONE"):
                _fsync(tmp / name)
            _fsync(tmp)
            if final.exists():  # a re-save of the same step: swap, then drop the old one
                final.rename(old)
            tmp.rename(final)
            _fsync(directory)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if old.exists() and not final.exists():
                old.rename(final)
            if isinstance(e, OSError):
                previous = latest_checkpoint(directory)
                kept = f"the newest intact checkpoint is {previous}" if previous else "none"
                raise CheckpointError(
                    f"could not write the checkpoint of step {step} under {directory}: {e}; "
                    f"nothing half-written was left ({kept}). Free disk space (or lower "
                    "keep_checkpoints / raise checkpoint_every) and resume"
                ) from e
            raise
        shutil.rmtree(old, ignore_errors=True)
    return final


# --- reading ----------------------------------------------------------------------------


def complete_checkpoints(directory: Path) -> list[Path]:
    """Return the complete checkpoint folders (with ``DONE``), newest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    done = [
        (int(m.group(1)), p)
        for p in directory.iterdir()
        if (m := _PATTERN.match(p.name)) and (p / "DONE").exists()
    ]
    return [p for _, p in sorted(done, reverse=True)]


def resume_hint(output_dir: Path, checkpoint_every: int) -> str:
    """How a run that stopped mid-step continues, read from the disk now.

    Names the newest complete checkpoint under ``output_dir/checkpoints`` and the command that
    resumes from it, or says that there is none (so the run starts again).
    """
    output_dir = Path(output_dir)
    ckpt = latest_checkpoint(output_dir / "checkpoints")
    if ckpt is None:
        return (
            f"no checkpoint was written (checkpoint_every={checkpoint_every}), so the run "
            "cannot be resumed: start it again"
        )
    return (
        f"the newest complete checkpoint is {ckpt}. Resume with: rlrf train --config "
        f"{output_dir / 'config.yaml'} --resume true (or resume=True with "
        f"output_dir={str(output_dir)!r} in Python)"
    )


def latest_checkpoint(directory: Path) -> Path | None:
    """Return the newest complete checkpoint folder, or None."""
    found = complete_checkpoints(directory)
    return found[0] if found else None


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint's state (tensors on CPU; the trainer moves them where they belong).

    Raises:
        CheckpointError: a file is missing, truncated or corrupted (named in the message).

    """
    from safetensors.torch import load_file

    path = Path(path)
    where = path / "state.pt"
    try:
        skeleton = torch.load(where, map_location="cpu", weights_only=False)
        tensors: dict[str, dict[str, torch.Tensor]] = {}
        for name in (MODEL_FILE, STATE_FILE):
            if (path / name).exists():
                where = path / name
                tensors[name] = load_file(str(where))
    except Exception as e:  # a torn file raises EOFError, RuntimeError, SafetensorError, ...
        raise CheckpointError(
            f"checkpoint file {where} is unreadable ({type(e).__name__}: {e})"
        ) from e

    def fill(obj: Any) -> Any:
        if isinstance(obj, dict):
            if set(obj) == {_REF}:
                file, key = obj[_REF]
                if key not in tensors.get(file, {}):
                    raise CheckpointError(f"checkpoint file {path / file} lacks tensor {key!r}")
                return tensors[file][key]
            return {k: fill(v) for k, v in obj.items()}
        if type(obj) in (list, tuple):
            return type(obj)(fill(v) for v in obj)
        return obj

    if not isinstance(skeleton, dict):
        raise CheckpointError(f"checkpoint file {path / 'state.pt'} does not hold a state dict")
    return fill(skeleton)


def load_latest(directory: Path) -> tuple[Path, dict[str, Any]] | None:
    """Load the newest checkpoint that reads; warn about each newer unreadable one.

    Returns:
        ``(folder, state)``, or None when ``directory`` holds no complete checkpoint.

    Raises:
        CheckpointError: there are complete checkpoints but none of them reads.

    """
    found = complete_checkpoints(directory)
    errors = []
    for path in found:
        try:
            state = load_checkpoint(path)
        except CheckpointError as e:
            errors.append(str(e))
            warnings.warn(
                f"{e}; falling back to the previous checkpoint", CheckpointWarning, stacklevel=2
            )
            continue
        return path, state
    if errors:
        raise CheckpointError(
            f"no checkpoint under {directory} is readable: " + "; ".join(errors) + ". Delete "
            "the broken folders to start over, or restore them from a copy"
        )
    return None


def prune_checkpoints(directory: Path, keep: int) -> None:
    """Delete all but the ``keep`` newest complete checkpoints (and stale temporaries)."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    for pattern in (".tmp_step_*", ".old_step_*"):
        for p in directory.glob(pattern):
            shutil.rmtree(p, ignore_errors=True)
    done = sorted(
        (int(m.group(1)), p) for p in directory.iterdir() if (m := _PATTERN.match(p.name))
    )
    for _, p in done[: max(0, len(done) - keep)]:
        shutil.rmtree(p, ignore_errors=True)


# --- the run's logs ---------------------------------------------------------------------


def restore_log(
    path: Path, size: int | None = None, keep: Callable[[dict[str, Any]], bool] | None = None
) -> int:
    """Cut a JSONL log back to what a checkpoint saw; return the number of lines dropped.

    ``size`` is the byte length the log had when the checkpoint was written: everything
    after it (the records of steps the killed run did not checkpoint, a line torn by the
    crash, even a torn UTF-8 character) goes. Checkpoints without ``size`` (older ones, or a
    log shorter than recorded) fall back to ``keep(record)``. Either way every kept line is
    checked: a corrupted one is dropped with a :class:`CheckpointWarning` naming
    ``file:line``. The file is replaced atomically, so a crash here leaves the old one.
    """
    path = Path(path)
    if not path.exists():
        return 0
    total = path.stat().st_size
    if size is not None and size > total:
        warnings.warn(
            f"{path} is {total} bytes but the checkpoint saw {size}; it lost data since, so "
            "records are kept by their step",
            CheckpointWarning,
            stacklevel=2,
        )
        size = None
    limit = total if size is None else size
    kept: list[bytes] = []
    dropped = 0
    with path.open("rb") as f:
        data = f.read(limit)
    lines = data.split(b"\n")
    tail = lines.pop()  # after the last newline: b"" or a torn line
    if tail:
        dropped += 1
        if size is None:  # with a recorded size, a torn line cannot precede it
            warnings.warn(
                f"{path}:{len(lines) + 1}: incomplete last line (the run was killed while "
                "writing it); dropped",
                CheckpointWarning,
                stacklevel=2,
            )
    for lineno, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            dropped += 1
            warnings.warn(
                f"{path}:{lineno}: corrupted line dropped ({e})", CheckpointWarning, stacklevel=2
            )
            continue
        if size is None and keep is not None and not keep(record):
            dropped += 1
            continue
        kept.append(raw + b"\n")
    if dropped or limit != total:
        tmp = path.with_name(f".{path.name}.tmp")
        with tmp.open("wb") as f:
            f.writelines(kept)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    return dropped


def log_size(path: Path) -> int | None:
    """Flush ``path`` to disk (fsync) and return its size, or None when it does not exist."""
    path = Path(path)
    if not path.exists():
        return None
    _fsync(path)
    return path.stat().st_size
