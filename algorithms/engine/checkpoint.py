"""Resumable checkpoints: model, optimizer, scheduler, objective, RNG states, data position.

A checkpoint is a folder ``<output_dir>/checkpoints/step_000010/`` holding

- ``model.safetensors``: the model's ``state_dict`` in its training dtype (tied weights once),
- ``state.safetensors``: every other tensor (AdamW moments, the objective's copies such as
  SDPO's teacher, the torch RNG state),
- ``state.json``: the rest as plain data (step counters, the sampler, Python/NumPy RNG
  states, where the run's logs ended) whose tensors are references into the two files,
- ``DONE``, written last.

Loading a checkpoint runs nothing from it: safetensors holds only tensors and ``state.json``
only JSON (tuples, non-string keys, bytes and NumPy arrays are spelled as tagged objects,
see :func:`_encode`), so a run folder from anyone can be resumed. Checkpoints of older rlrf
versions kept the rest in ``state.pt``, a pickle, and unpickling can run code: they are
refused with the command that converts them (``python -m algorithms.engine.checkpoint
convert RUN_DIR``, which reads them with ``torch.load(weights_only=True)`` only and refuses
any file holding more than tensors and plain data).

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

import base64
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
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlrf.errors import RLRFError, RLRFWarning

__all__ = [
    "CheckpointError",
    "CheckpointWarning",
    "OldCheckpointError",
    "RunInterrupted",
    "capture_rng",
    "complete_checkpoints",
    "convert_checkpoints",
    "deferred_sigint",
    "latest_checkpoint",
    "load_checkpoint",
    "load_latest",
    "log_position",
    "prune_checkpoints",
    "restore_log",
    "restore_rng",
    "restoring",
    "resume_hint",
    "save_checkpoint",
]

_PATTERN = re.compile(r"^step_(\d+)$")
MODEL_FILE = "model.safetensors"
STATE_FILE = "state.safetensors"
PLAIN_FILE = "state.json"
PICKLE_FILE = "state.pt"  # older rlrf versions: refused, see convert_checkpoints
_FORMAT = "rlrf-checkpoint"
_VERSION = 1


class CheckpointError(RLRFError):
    """A checkpoint could not be written or read (the message names the file)."""


class CheckpointWarning(RLRFWarning):
    """A checkpoint or a log line was unreadable and skipped."""


class OldCheckpointError(CheckpointError):
    """A checkpoint from an older rlrf (a pickled ``state.pt``); the message says how to convert."""


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


@dataclass(frozen=True)
class _TensorRef:
    """Where a tensor of the state went: ``file`` (one of the two safetensors) and ``key``."""

    file: str
    key: str


def _split(state: dict[str, Any]) -> tuple[Any, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Replace every tensor in ``state`` by a reference; return (skeleton, model, rest)."""
    files: dict[str, dict[str, torch.Tensor]] = {MODEL_FILE: {}, STATE_FILE: {}}
    seen: dict[tuple[Any, ...], _TensorRef] = {}
    storages: set[tuple[int, str]] = set()

    def walk(obj: Any, path: str, file: str) -> Any:
        if isinstance(obj, torch.Tensor):
            t = obj.detach()
            ident = (t.untyped_storage().data_ptr(), t.storage_offset(), t.dtype, t.device)
            ident += (tuple(t.shape), tuple(t.stride()))
            if ident in seen:  # tied weights, shared buffers: stored once
                return seen[ident]
            t = t.to("cpu")
            storage = (t.untyped_storage().data_ptr(), str(t.device))
            if storage in storages or not t.is_contiguous():
                t = t.clone(memory_format=torch.contiguous_format)  # safetensors refuses views
            storages.add((t.untyped_storage().data_ptr(), str(t.device)))
            key = path
            while key in files[file]:
                key += "_"
            files[file][key] = t
            seen[ident] = _TensorRef(file, key)
            return seen[ident]
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


# Tagged objects of state.json: an object whose only key is one of these is not a dict.
_TENSOR, _TUPLE, _DICT, _BYTES, _ARRAY = (
    "__rlrf_tensor__", "__rlrf_tuple__", "__rlrf_dict__", "__rlrf_bytes__", "__rlrf_ndarray__"
)  # fmt: skip
_TAGS = (_TENSOR, _TUPLE, _DICT, _BYTES, _ARRAY)


def _encode(obj: Any, path: str = "state") -> Any:
    """``obj`` as JSON data; tensors must already be :class:`_TensorRef` (see :func:`_split`).

    Plain values stay as they are; a tuple becomes ``{"__rlrf_tuple__": [...]}``, a dict
    with a non-string key (the optimizer's parameter indices) ``{"__rlrf_dict__": [[k, v],
    ...]}``, bytes ``{"__rlrf_bytes__": BASE64}`` and a NumPy array (NumPy's RNG state)
    ``{"__rlrf_ndarray__": {"dtype", "shape", "data"}}``; anything else is refused.
    """
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, _TensorRef):
        return {_TENSOR: [obj.file, obj.key]}
    if isinstance(obj, np.generic) and obj.dtype.kind in "biuf":
        return obj.item()
    if isinstance(obj, list):
        return [_encode(v, f"{path}[{i}]") for i, v in enumerate(obj)]
    if type(obj) is tuple:
        return {_TUPLE: [_encode(v, f"{path}[{i}]") for i, v in enumerate(obj)]}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__rlrf_") for k in obj):
            return {k: _encode(v, f"{path}[{k!r}]") for k, v in obj.items()}
        return {_DICT: [[_encode(k, path), _encode(v, f"{path}[{k!r}]")] for k, v in obj.items()]}
    if isinstance(obj, bytes):
        return {_BYTES: base64.b64encode(obj).decode("ascii")}
    if isinstance(obj, np.ndarray) and obj.dtype.kind in "biuf":
        data = base64.b64encode(np.ascontiguousarray(obj).tobytes()).decode("ascii")
        return {_ARRAY: {"dtype": obj.dtype.str, "shape": list(obj.shape), "data": data}}
    raise CheckpointError(
        f"cannot checkpoint {path}: a {type(obj).__module__}.{type(obj).__qualname__} is "
        "neither a tensor nor plain data (None, bool, int, float, str, bytes, list, tuple, "
        "dict, a numeric NumPy array); make the state_dict that holds it return plain data"
    )


class _Malformed(Exception):
    """state.json holds something :func:`_encode` never writes (internal to the reader)."""


def _decode(obj: Any, tensors: dict[str, dict[str, torch.Tensor]]) -> Any:
    """Invert :func:`_encode`, filling in the tensors; raise :class:`_Malformed`."""
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if len(obj) != 1 or next(iter(obj)) not in _TAGS:
        if any(k.startswith("__rlrf_") for k in obj):
            raise _Malformed(f"unknown or misplaced tag among {sorted(obj)[:5]}")
        return {k: _decode(v, tensors) for k, v in obj.items()}
    ((tag, value),) = obj.items()
    if tag == _TENSOR:
        if not (isinstance(value, list) and len(value) == 2 and value[0] in tensors):
            raise _Malformed(f"bad tensor reference {str(value)[:80]}")
        file, key = value
        if not isinstance(key, str) or key not in tensors[file]:
            raise _Malformed(f"{file} lacks tensor {str(key)[:80]!r}")
        return tensors[file][key]
    if tag == _TUPLE and isinstance(value, list):
        return tuple(_decode(v, tensors) for v in value)
    if tag == _DICT and isinstance(value, list):
        if not all(isinstance(kv, list) and len(kv) == 2 for kv in value):
            raise _Malformed("a tagged dict holds something other than [key, value] pairs")
        items = [(_decode(k, tensors), _decode(v, tensors)) for k, v in value]
        try:
            return dict(items)
        except TypeError as e:  # an unhashable key
            raise _Malformed(f"a tagged dict has an unusable key ({e})") from None
    if tag == _BYTES and isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except ValueError as e:
            raise _Malformed(f"bad base64 ({e})") from None
    if tag == _ARRAY and isinstance(value, dict):
        return _decode_array(value)
    raise _Malformed(f"{tag} holds a {type(value).__name__}")


def _decode_array(value: dict[str, Any]) -> np.ndarray:
    dtype, shape, data = value.get("dtype"), value.get("shape"), value.get("data")
    if not (
        isinstance(dtype, str)
        and re.fullmatch(r"[<>|=]?[biuf]\d{1,2}", dtype)
        and isinstance(shape, list)
        and all(type(n) is int and 0 <= n < 2**31 for n in shape)
        and isinstance(data, str)
    ):
        raise _Malformed("a NumPy array needs a numeric dtype, a shape and base64 data")
    try:
        raw = base64.b64decode(data, validate=True)
        return np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape).copy()
    except (ValueError, TypeError) as e:
        raise _Malformed(f"bad NumPy array ({e})") from None


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
    # JSON as Python writes it (NaN and Infinity included: a metric may be NaN)
    plain = json.dumps({"format": _FORMAT, "version": _VERSION, "state": _encode(skeleton)})
    with deferred_sigint(f"the checkpoint of step {step}"):
        try:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
            save_file(model, str(tmp / MODEL_FILE), metadata={"format": "pt"})
            save_file(rest, str(tmp / STATE_FILE), metadata={"format": "pt"})
            (tmp / PLAIN_FILE).write_text(plain, encoding="utf-8")
            (tmp / "DONE").write_text(str(step), encoding="utf-8")
            for name in (MODEL_FILE, STATE_FILE, PLAIN_FILE, "DONE"):
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

    Reads ``state.json`` and the safetensors files only: nothing in the folder is executed.

    Raises:
        OldCheckpointError: the folder is an older rlrf version's (a pickled ``state.pt``);
            the message gives the command that converts it.
        CheckpointError: a file is missing, truncated or corrupted (named in the message).

    """
    from safetensors.torch import load_file

    path = Path(path)
    where = path / PLAIN_FILE
    if not where.exists() and (path / PICKLE_FILE).exists():
        raise OldCheckpointError(
            f"checkpoint {path} is from an older rlrf: its {PICKLE_FILE} is a pickle, and "
            "unpickling a file can run any code, so rlrf no longer loads it. If you trust "
            "whoever wrote this run folder, convert it (tensors and plain data only; anything "
            f"else is refused): python -m algorithms.engine.checkpoint convert {_run_of(path)}"
        )
    try:
        document = json.loads(where.read_bytes().decode("utf-8"))
        tensors: dict[str, dict[str, torch.Tensor]] = {}
        for name in (MODEL_FILE, STATE_FILE):
            if (path / name).exists():
                where = path / name
                tensors[name] = load_file(str(where))
    except Exception as e:  # a torn file: JSONDecodeError, SafetensorError, RecursionError...
        raise CheckpointError(
            f"checkpoint file {where} is unreadable ({type(e).__name__}: {e})"
        ) from e
    where = path / PLAIN_FILE
    if not (
        isinstance(document, dict)
        and document.get("format") == _FORMAT
        and document.get("version") == _VERSION
        and isinstance(document.get("state"), dict)
    ):
        raise CheckpointError(
            f"checkpoint file {where} is not an rlrf checkpoint state (format {_FORMAT!r}, "
            f"version {_VERSION}, with a 'state' object); was it written by rlrf, or by a "
            "newer version?"
        )
    try:
        return _decode(document["state"], tensors)
    except (_Malformed, RecursionError) as e:
        raise CheckpointError(
            f"checkpoint file {where} is malformed ({e}); it was not written by rlrf, or was "
            "edited since"
        ) from None


def _run_of(checkpoint: Path) -> Path:
    """The run folder of a checkpoint folder (``RUN/checkpoints/step_N``), else the folder."""
    parent = checkpoint.parent
    return parent.parent if parent.name == "checkpoints" else checkpoint


@contextlib.contextmanager
def restoring(path: Path) -> Iterator[None]:
    """Name the checkpoint when restoring its state fails on what it holds.

    ``state.json`` is plain data, but not necessarily the data rlrf wrote (a string step, a
    missing key, another model's weights): what the restoring code raises on it becomes a
    :class:`CheckpointError` naming the file, never a traceback. rlrf's own errors pass.
    """
    try:
        yield
    except RLRFError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError,
            RuntimeError) as e:  # fmt: skip
        raise CheckpointError(
            f"checkpoint {Path(path) / PLAIN_FILE} holds a state this run cannot restore "
            f"({type(e).__name__}: {str(e)[:300]}); was it written for another model or "
            "config, or edited since? Resume from the run's own checkpoints, or start over "
            "with resume: false"
        ) from e


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
        except OldCheckpointError:
            raise  # falling back would only find more of them; the message says what to do
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
    path: Path,
    position: Mapping[str, int] | int | None = None,
    keep: Callable[[dict[str, Any]], bool] | None = None,
) -> int:
    """Cut a JSONL log back to what a checkpoint saw; return the number of lines dropped.

    ``position`` is where the log ended when the checkpoint was written
    (:func:`log_position`: its complete lines and its bytes). The first ``lines`` lines are
    kept and everything after them goes (the records of steps the killed run did not
    checkpoint, a line torn by the crash, even a torn UTF-8 character). Those lines are
    counted, not measured: when they no longer add up to the recorded bytes (a line before
    the checkpoint was edited since), every one of them is still kept, and a
    :class:`CheckpointWarning` says so and names the lines dropped after them. A bare byte
    length (checkpoints of rlrf before line counts) cuts at that byte when it falls at a line
    end. Without a usable position (none recorded, a log shorter than recorded, a byte
    length inside a line) records are kept by ``keep(record)``, with a warning. Either way
    every kept line is checked: a corrupted one is dropped with a :class:`CheckpointWarning`
    naming ``file:line``. The file is replaced atomically, so a crash here leaves the old one.
    """
    path = Path(path)
    if not path.exists():
        return 0
    data = path.read_bytes()
    lines = data.split(b"\n")
    tail = lines.pop()  # after the last newline: b"" or a torn line
    original = len(lines) + bool(tail)
    count, size = _position(position)
    by_step = count is None and size is None
    if count is not None and count > len(lines):
        warnings.warn(
            f"{path} has {len(lines)} complete lines but the checkpoint saw {count}; it lost "
            "data since, so records are kept by their step",
            CheckpointWarning,
            stacklevel=2,
        )
        by_step = True
    elif count is not None:
        seen = sum(len(raw) + 1 for raw in lines[:count])
        after = len(lines) - count + bool(tail)
        if size is not None and seen != size:
            dropping = f"; dropped lines {count + 1}-{count + after}" if after else ""
            warnings.warn(
                f"{path}: its first {count} lines are {seen} bytes but were {size} when the "
                f"checkpoint was written, so a line before the checkpoint was edited since; "
                f"kept those {count} lines (each checked){dropping}, written after the "
                "checkpoint",
                CheckpointWarning,
                stacklevel=2,
            )
        lines, tail = lines[:count], b""
    elif size is not None:
        if size > len(data):
            warnings.warn(
                f"{path} is {len(data)} bytes but the checkpoint saw {size}; it lost data "
                "since, so records are kept by their step",
                CheckpointWarning,
                stacklevel=2,
            )
            by_step = True
        elif size and data[size - 1 : size] != b"\n":
            warnings.warn(
                f"{path}: the checkpoint's byte position {size} is inside a line, so the log "
                "was edited before it since; records are kept by their step",
                CheckpointWarning,
                stacklevel=2,
            )
            by_step = True
        else:
            lines, tail = data[:size].split(b"\n")[:-1], b""
    dropped = original - len(lines)  # a torn last line included
    if tail:
        warnings.warn(
            f"{path}:{len(lines) + 1}: incomplete last line (the run was killed while "
            "writing it); dropped",
            CheckpointWarning,
            stacklevel=2,
        )
    kept: list[bytes] = []
    for lineno, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, ...
            dropped += 1
            warnings.warn(
                f"{path}:{lineno}: corrupted line dropped ({e})", CheckpointWarning, stacklevel=2
            )
            continue
        if by_step and keep is not None:
            try:
                wanted = keep(record)
            except (KeyError, TypeError, ValueError, IndexError, AttributeError,
                    OverflowError) as e:  # fmt: skip
                wanted = False
                warnings.warn(
                    f"{path}:{lineno}: line dropped, it has no usable step ({e!r})",
                    CheckpointWarning,
                    stacklevel=2,
                )
            if not wanted:
                dropped += 1
                continue
        kept.append(raw + b"\n")
    if b"".join(kept) != data:
        tmp = path.with_name(f".{path.name}.tmp")
        with tmp.open("wb") as f:
            f.writelines(kept)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    return dropped


def _position(position: Mapping[str, int] | int | None) -> tuple[int | None, int | None]:
    """(lines, bytes) of a recorded log position; None for what is missing or unusable."""
    if isinstance(position, Mapping):
        lines, size = position.get("lines"), position.get("bytes")
    else:
        lines, size = None, position

    def usable(n: Any) -> int | None:
        return n if type(n) is int and n >= 0 else None

    return usable(lines), usable(size)


def log_position(path: Path) -> dict[str, int] | None:
    """Flush ``path`` to disk (fsync); return its complete ``lines`` and its ``bytes``.

    None when it does not exist. What :func:`restore_log` cuts back to on resume.
    """
    path = Path(path)
    if not path.exists():
        return None
    _fsync(path)
    lines = size = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            lines += chunk.count(b"\n")
            size += len(chunk)
    return {"lines": lines, "bytes": size}


def _numpy_globals() -> list[Any]:
    """What a pickled NumPy array (NumPy's RNG state) needs, and nothing else."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # NumPy 1.x
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    dtypes = {type(np.dtype(c)) for c in "?bBhHiIlLqQefd"}
    return [_reconstruct, np.ndarray, np.dtype, *dtypes]


def _load_pickled(folder: Path) -> dict[str, Any]:
    """An old checkpoint's state, read with ``torch.load(weights_only=True)`` only."""
    import pickle

    from safetensors.torch import load_file

    where = folder / PICKLE_FILE
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            skeleton = torch.load(where, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).strip().splitlines()
        found = next((line for line in reason if "GLOBAL" in line), reason[-1] if reason else "")
        raise CheckpointError(
            f"refused to convert {where}: it holds more than tensors and plain data "
            f"({found.strip()}), so it may have been made to run code when loaded; nothing "
            f"of it was run. Delete {folder} unless you know what wrote it and why"
        ) from None
    except Exception as e:  # a torn or empty file: EOFError, RuntimeError, ...
        raise CheckpointError(
            f"checkpoint file {where} is unreadable ({type(e).__name__}: {e})"
        ) from e
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    for name in (MODEL_FILE, STATE_FILE):
        if (folder / name).exists():
            try:
                tensors[name] = load_file(str(folder / name))
            except Exception as e:
                raise CheckpointError(
                    f"checkpoint file {folder / name} is unreadable ({type(e).__name__}: {e})"
                ) from e

    def fill(obj: Any) -> Any:
        if isinstance(obj, dict):
            if set(obj) == {_TENSOR}:
                file, key = obj[_TENSOR]
                if key not in tensors.get(file, {}):
                    raise CheckpointError(f"checkpoint file {folder / file} lacks tensor {key!r}")
                return tensors[file][key]
            return {k: fill(v) for k, v in obj.items()}
        if type(obj) in (list, tuple):
            return type(obj)(fill(v) for v in obj)
        return obj

    if not isinstance(skeleton, dict):
        raise CheckpointError(f"checkpoint file {where} does not hold a state dict")
    return fill(skeleton)


def convert_checkpoints(path: Path) -> list[Path]:
    """Rewrite the older checkpoints (a pickled ``state.pt``) under ``path`` in this format.

    ``path`` is a run folder, its ``checkpoints/`` folder or one checkpoint folder. Each
    ``state.pt`` is read with ``torch.load(weights_only=True)`` (tensors, plain containers
    and numbers, NumPy's numeric arrays: nothing that runs code) and the checkpoint is
    rewritten atomically without it. Returns the converted folders (current ones are left
    as they are).

    Raises:
        CheckpointError: ``path`` holds no checkpoint folder, or a ``state.pt`` holds
            anything else (refused unloaded: it may have been crafted) or is unreadable.

    """
    path = Path(path)
    if (path / "checkpoints").is_dir():
        path = path / "checkpoints"
    if _PATTERN.match(path.name) and path.is_dir():
        folders = [path]
    elif path.is_dir():
        folders = [p for p in sorted(path.iterdir()) if _PATTERN.match(p.name) and p.is_dir()]
    else:
        folders = []
    if not folders:
        raise CheckpointError(
            f"{path} holds no checkpoint: pass a run folder (with checkpoints/step_N/), its "
            "checkpoints/ folder or one step_N/ folder"
        )
    converted = []
    for folder in folders:
        if not (folder / PICKLE_FILE).exists() or (folder / PLAIN_FILE).exists():
            continue
        if not (folder / "DONE").exists():
            continue  # an incomplete checkpoint stays incomplete (resume skips it)
        state = _load_pickled(folder)
        step = int(_PATTERN.match(folder.name).group(1))  # type: ignore[union-attr]
        final = save_checkpoint(folder.parent, step, state)
        if final != folder:  # a folder named step_3 rather than step_000003
            shutil.rmtree(folder)
        converted.append(final)
    return converted


_USAGE = """\
usage: python -m algorithms.engine.checkpoint convert PATH [PATH ...]

Rewrite the checkpoints of older rlrf versions (a pickled state.pt, which rlrf no longer
loads because unpickling can run code) as safetensors plus plain JSON. PATH is a run folder,
its checkpoints/ folder or one checkpoint folder. state.pt is read with
torch.load(weights_only=True) only: a file holding anything but tensors and plain data is
refused, unloaded."""


def main(argv: list[str] | None = None) -> int:
    """``python -m algorithms.engine.checkpoint convert PATH [PATH ...]``; return the status."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] in (["-h"], ["--help"]):
        print(_USAGE)
        return 0
    if len(args) < 2 or args[0] != "convert":
        print(_USAGE, file=sys.stderr)
        return 2
    status = 0
    for arg in args[1:]:
        try:
            converted = convert_checkpoints(Path(arg))
        except RLRFError as e:
            print(f"rlrf: error: {e}", file=sys.stderr)
            status = 1
            continue
        for folder in converted:
            print(f"converted {folder}")
        if not converted:
            print(f"{arg}: nothing to convert (its checkpoints are already in this format)")
    return status


if __name__ == "__main__":
    sys.exit(main())
