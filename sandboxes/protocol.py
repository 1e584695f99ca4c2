r"""The sandbox protocol: limits, results and the :class:`Sandbox` base class of every backend.

A sandbox runs one untrusted Python program per call, in a fresh process, and returns a typed
:class:`ExecutionResult`; nothing about the program's behaviour (timeouts, crashes, exit tricks)
ever raises. Two ways to run code:

* **Script mode** — ``sandbox.run(code, stdin=..., limits=..., files=...)``: the program reads
  ``stdin`` and writes ``stdout``; the *parent* compares the output (see :mod:`sandboxes.compare`).
  ``result.completed`` is True when the program ran to its last line without an exception (a
  cheap signal against ``sys.exit(0)`` at the top of a file; a determined program can still
  forge it, so never grade assert-style tests on it alone).
* **Function-call mode** — ``sandbox.run_function(code, entry_point, args_json, ...)`` (or
  ``run(..., call=FunctionCall(entry_point, args_json))``): the program is executed as a module,
  then ``entry_point(*json.loads(args_json))`` is called and its return value is sent back as
  strict JSON (``allow_nan=False``) on a dedicated channel, never through stdout. It arrives in
  ``result.return_json`` (``result.return_value`` parses it). An always-equal object, a ``str``
  subclass with a lying ``__eq__``, anything not JSON-serializable cannot survive the trip; the
  expected value never enters the sandbox, so frame or ``gc`` inspection finds nothing. If the
  program exits before returning (``sys.exit(0)``, ``os._exit(0)``), the status is
  ``runtime_error`` and ``return_json`` is None: an exit code never implies a pass. The
  channel is the program's own file descriptor, so a program can write a return value itself:
  ``return_json`` is always the program's *answer*, never a verdict. Compare it in the parent;
  never run a check, whose outcome the program could forge, inside the sandbox.

``run_many(jobs)`` runs a batch of :class:`Job` on every core and returns the results in order.

Example:
    >>> import sandboxes
    >>> with sandboxes.get("local") as sb:  # doctest: +SKIP
    ...     r = sb.run("print(int(input()) * 2)", stdin="21")
    ...     r.status, r.stdout
    (<ExecutionStatus.OK: 'ok'>, '42\n')

"""

from __future__ import annotations

import abc
import dataclasses
import enum
import json
import math
import os
import signal as _signal
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from sandboxes.compare import loads_bounded
from sandboxes.errors import SandboxConfigError

__all__ = [
    "ExecutionResult",
    "ExecutionStatus",
    "FunctionCall",
    "Job",
    "Limits",
    "Sandbox",
]

_MIB = 1 << 20

# Bounds above which a limit is a typo rather than an intention.
_MAX_TIME_S = 24 * 3600.0
_MAX_BYTES = 1 << 40
_MAX_PROCESSES = 4096


class ExecutionStatus(str, enum.Enum):
    """How an execution ended. ``OK`` means the program exited cleanly, never that it passed."""

    OK = "ok"
    RUNTIME_ERROR = "runtime_error"
    TIMEOUT = "timeout"
    MEMORY_LIMIT = "memory_limit"
    OUTPUT_LIMIT = "output_limit"
    SANDBOX_ERROR = "sandbox_error"


@dataclass(frozen=True)
class Limits:
    """Resource limits for one execution. Every field is checked when the object is built."""

    wall_time_s: float = 10.0
    """Wall-clock seconds before the whole process group is killed (status ``timeout``)."""
    cpu_time_s: float = 10.0
    """CPU seconds (RLIMIT_CPU locally, a CPU quota in Docker) before the program is killed."""
    memory_bytes: int = 512 * _MIB
    """Memory the program may allocate (address space beyond the pre-imported interpreter
    locally; memory+swap in Docker). Exceeding it gives status ``memory_limit``."""
    output_bytes: int = 1 * _MIB
    """Bytes kept per stream (stdout, stderr); more kills the program (status ``output_limit``)."""
    processes: int = 16
    """Processes and threads the program may have at once (fork bombs stop here)."""
    file_size_bytes: int = 16 * _MIB
    """Largest file the program may write, and the size of its writable temporary directory."""
    open_files: int = 64
    """Open file descriptors (RLIMIT_NOFILE)."""

    def __post_init__(self) -> None:
        """Reject negative, zero, non-finite and absurdly large limits with a clear message."""
        for name, value, low, high in (
            ("wall_time_s", self.wall_time_s, 0.0, _MAX_TIME_S),
            ("cpu_time_s", self.cpu_time_s, 0.0, _MAX_TIME_S),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise SandboxConfigError(f"Limits.{name} must be a number, got {value!r}")
            if not math.isfinite(value) or not low < value <= high:
                raise SandboxConfigError(
                    f"Limits.{name}={value!r} is out of range; use a value in ({low}, {high}]"
                )
        for name, ivalue, ilow, ihigh in (
            ("memory_bytes", self.memory_bytes, 16 * _MIB, _MAX_BYTES),
            ("output_bytes", self.output_bytes, 1, _MAX_BYTES),
            ("processes", self.processes, 1, _MAX_PROCESSES),
            ("file_size_bytes", self.file_size_bytes, 1, _MAX_BYTES),
            ("open_files", self.open_files, 8, 65536),
        ):
            if isinstance(ivalue, bool) or not isinstance(ivalue, int):
                raise SandboxConfigError(f"Limits.{name} must be an int, got {ivalue!r}")
            if not ilow <= ivalue <= ihigh:
                raise SandboxConfigError(
                    f"Limits.{name}={ivalue!r} is out of range; use a value in [{ilow}, {ihigh}]"
                )


@dataclass(frozen=True)
class FunctionCall:
    """Call ``entry_point(*args)`` after executing the program; ``args_json`` is a JSON array."""

    entry_point: str
    args_json: str = "[]"

    def __post_init__(self) -> None:
        """Check that the entry point is an identifier and the arguments a JSON array."""
        if not isinstance(self.entry_point, str) or not self.entry_point.isidentifier():
            raise SandboxConfigError(
                f"FunctionCall.entry_point must be a Python identifier, got {self.entry_point!r}"
            )
        try:
            args = json.loads(self.args_json)
        except (TypeError, ValueError) as e:
            raise SandboxConfigError(
                f"FunctionCall.args_json must be a JSON array of positional arguments, "
                f"got {self.args_json!r}: {e}"
            ) from e
        if not isinstance(args, list):
            raise SandboxConfigError(
                f"FunctionCall.args_json must be a JSON array (e.g. '[1, \"a\"]'), "
                f"got {type(args).__name__}: {self.args_json!r}"
            )


@dataclass(frozen=True)
class Job:
    """One execution request for :meth:`Sandbox.run_many`; fields mirror :meth:`Sandbox.run`."""

    code: str
    stdin: str | bytes = b""
    limits: Limits | None = None
    files: Mapping[str, bytes] | None = None
    call: FunctionCall | None = None


@dataclass(frozen=True)
class ExecutionResult:
    """What one execution did. Output is decoded as UTF-8 with invalid bytes replaced."""

    status: ExecutionStatus
    exit_code: int | None = None
    """Exit status when the process exited; None when a signal ended it."""
    signal: int | None = None
    """Number of the signal that ended the process, if one did."""
    stdout: str = ""
    stderr: str = ""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    result_truncated: bool = False
    """Function-call mode: the return value overflowed the result channel (status
    ``output_limit``); ``return_json`` is then None."""
    wall_time_s: float = 0.0
    cpu_time_s: float = 0.0
    return_json: str | None = None
    """Function-call mode: the entry point's return value as strict JSON text."""
    completed: bool = False
    """The program (and the call, in function mode) ran to its end without raising."""
    message: str = ""
    """A short explanation from the sandbox (which limit was hit, which signal, what failed)."""
    details: Mapping[str, Any] = field(default_factory=dict)
    """Backend-specific extras (worker id, container id, isolation layers in force)."""

    @property
    def ok(self) -> bool:
        """True when the status is ``ok`` (the program exited cleanly; not a verdict)."""
        return self.status is ExecutionStatus.OK

    @property
    def truncated(self) -> bool:
        """True when stdout or stderr was cut at ``Limits.output_bytes``."""
        return self.stdout_truncated or self.stderr_truncated

    @property
    def signal_name(self) -> str | None:
        """The name of :attr:`signal` (``"SIGSEGV"``), or None."""
        if self.signal is None:
            return None
        try:
            return _signal.Signals(self.signal).name
        except ValueError:
            return f"signal {self.signal}"

    @property
    def return_value(self) -> Any:
        """The parsed return value of a function call.

        Raises:
            ValueError: there is none, or it cannot be decoded
                (:class:`~sandboxes.compare.ReturnValueError`: malformed, too deeply nested).

        """
        if self.return_json is None:
            raise ValueError(
                f"no return value: status={self.status.value}, message={self.message!r}"
            )
        return loads_bounded(self.return_json)


def _check_files(files: Mapping[str, bytes] | None) -> dict[str, bytes]:
    """Validate ``files`` (relative paths without ``..``, bytes contents) and copy them."""
    if files is None:
        return {}
    out: dict[str, bytes] = {}
    for name, data in files.items():
        parts = name.replace("\\", "/").split("/") if isinstance(name, str) else []
        if (
            not parts
            or name.startswith("/")
            or any(p in ("", ".", "..") for p in parts)
            or "\x00" in name
        ):
            raise SandboxConfigError(
                f"files key {name!r} must be a relative path without '..' or empty parts, "
                "e.g. 'data/input.txt'"
            )
        if isinstance(data, str):
            data = data.encode()
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise SandboxConfigError(f"files[{name!r}] must be bytes, got {type(data).__name__}")
        out[name] = bytes(data)
    return out


def _as_bytes(stdin: str | bytes | None) -> bytes:
    """Turn ``stdin`` into bytes (str is encoded as UTF-8)."""
    if stdin is None:
        return b""
    if isinstance(stdin, str):
        return stdin.encode("utf-8", "surrogateescape")
    if isinstance(stdin, (bytes, bytearray, memoryview)):
        return bytes(stdin)
    raise SandboxConfigError(f"stdin must be str or bytes, got {type(stdin).__name__}")


class Sandbox(abc.ABC):
    """Runs untrusted Python programs in isolation. Use as a context manager, or call close().

    Subclasses implement :meth:`run` and :meth:`close`; :meth:`run` must be safe to call from
    several threads at once (``run_many`` does), and must return, never raise, for anything
    the program does.
    """

    name: str = "abstract"
    """The backend name accepted by :func:`sandboxes.get`."""

    max_workers: int = 1
    """How many executions this sandbox runs at once; ``run_many`` uses that many threads."""

    @abc.abstractmethod
    def run(
        self,
        code: str,
        stdin: str | bytes = b"",
        limits: Limits | None = None,
        files: Mapping[str, bytes] | None = None,
        *,
        call: FunctionCall | None = None,
    ) -> ExecutionResult:
        """Execute ``code`` once in a fresh process and report what happened.

        Args:
            code: the Python program (source text).
            stdin: bytes fed to the program's standard input (str is encoded as UTF-8).
            limits: resource limits; None means ``Limits()``.
            files: extra files written into the program's temporary working directory.
            call: function-call mode (see the module docstring); None for script mode.

        Returns:
            The typed result; a timeout, crash or limit is a status, not an exception.

        """

    def run_function(
        self,
        code: str,
        entry_point: str,
        args_json: str = "[]",
        limits: Limits | None = None,
        files: Mapping[str, bytes] | None = None,
        stdin: str | bytes = b"",
    ) -> ExecutionResult:
        """Execute ``code``, call ``entry_point(*json.loads(args_json))``, return it as JSON.

        The return value arrives in ``result.return_json`` (strict JSON text); compare it in
        the parent, e.g. with :func:`sandboxes.compare.json_match`.
        """
        return self.run(code, stdin, limits, files, call=FunctionCall(entry_point, args_json))

    def run_many(self, jobs: Iterable[Job]) -> list[ExecutionResult]:
        """Run every job, keeping all workers busy, and return the results in job order."""
        job_list = list(jobs)
        for i, job in enumerate(job_list):
            if not isinstance(job, Job):
                raise SandboxConfigError(
                    f"run_many expects sandboxes.Job items; item {i} is {type(job).__name__}"
                )
        if not job_list:
            return []

        def one(job: Job) -> ExecutionResult:
            return self.run(job.code, job.stdin, job.limits, job.files, call=job.call)

        workers = max(1, min(self.max_workers, len(job_list)))
        if workers == 1:
            return [one(j) for j in job_list]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox") as ex:
            return list(ex.map(one, job_list))

    @abc.abstractmethod
    def close(self) -> None:
        """Stop every worker and remove every temporary file; idempotent."""

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def default_workers() -> int:
    """Return the number of CPUs this process may use (at least 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


REPLY_GRACE_S = 10.0
"""Seconds a backend waits for a worker's reply beyond the run's wall-time limit."""


def checked_workers(workers: int | None) -> int:
    """Validate a backend's ``workers`` argument (None: one per usable CPU)."""
    if workers is None:
        return default_workers()
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= 256:
        raise SandboxConfigError(f"workers must be an int in [1, 256], got {workers!r}")
    return workers


def result_from_reply(
    reply: Mapping[str, Any],
    details: dict[str, Any],
    *,
    status: ExecutionStatus | None = None,
    message: str | None = None,
) -> ExecutionResult:
    """Turn a worker's reply into an :class:`ExecutionResult`.

    A backend may override the status and message (after an out-of-memory kill it saw
    from outside the worker, say).
    """

    def text(b: bytes) -> str:
        return b.decode("utf-8", "replace")

    return ExecutionResult(
        status=status or ExecutionStatus(reply["status"]),
        exit_code=reply.get("exit_code"),
        signal=reply.get("signal"),
        stdout=text(reply.get("stdout", b"")),
        stderr=text(reply.get("stderr", b"")),
        stdout_truncated=bool(reply.get("stdout_truncated", False)),
        stderr_truncated=bool(reply.get("stderr_truncated", False)),
        result_truncated=bool(reply.get("result_truncated", False)),
        wall_time_s=float(reply.get("wall_time_s", 0.0)),
        cpu_time_s=float(reply.get("cpu_time_s", 0.0)),
        return_json=reply.get("return_json"),
        completed=bool(reply.get("completed", False)),
        message=str(reply.get("message", "")) if message is None else message,
        details=details,
    )


def worker_request(
    code: str,
    stdin: str | bytes | None,
    limits: Limits | None,
    files: Mapping[str, bytes] | None,
    call: FunctionCall | None,
) -> tuple[dict[str, Any], Limits]:
    """Validate :meth:`Sandbox.run`'s arguments; return the worker request and the limits.

    Shared by the backends, which all speak the same worker protocol.
    """
    if not isinstance(code, str):
        raise SandboxConfigError(f"code must be str, got {type(code).__name__}")
    if call is not None and not isinstance(call, FunctionCall):
        raise SandboxConfigError(f"call must be a FunctionCall, got {type(call).__name__}")
    if limits is None:
        limits = Limits()
    elif not isinstance(limits, Limits):
        raise SandboxConfigError(f"limits must be a sandboxes.Limits, got {type(limits).__name__}")
    request = {
        "code": code,
        "stdin": _as_bytes(stdin),
        "files": _check_files(files),
        "limits": dataclasses.asdict(limits),
        "call": (call.entry_point, call.args_json) if call is not None else None,
    }
    return request, limits
