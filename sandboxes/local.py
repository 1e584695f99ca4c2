"""The local sandbox: a pool of pre-forked Python workers, a fresh child per run, no daemon.

:class:`LocalSandbox` starts ``workers`` interpreter processes (``sandboxes/_worker.py``, run
with ``python -I`` and an empty environment) that import the common standard-library modules
once, then fork a fresh child for every execution. A run costs a fork, not an interpreter
start, and no state can leak from one run to the next: every child starts from the same
pristine worker.

What is protected (when running as root on Linux >= 6.7, as in CI; each missing layer is
reported once with an :class:`~sandboxes.IsolationWarning` naming the protection lost):

* **Resources** — rlimits on address space (``Limits.memory_bytes`` beyond the pre-imported
  interpreter), CPU time, file size, open files, processes/threads (``RLIMIT_NPROC``, enforced
  because each worker slot runs its children under its own random non-root uid), no core
  dumps; the wall clock is enforced by the worker, which kills the whole process group.
  Memory held through a file descriptor, which ``RLIMIT_AS`` does not see, is refused where
  it could be large: no ``memfd_create`` or ``memfd_secret`` (50 memfds once held 800 MiB
  under a 32 MiB cap), a sealed stdin file, no growing of pipe (``F_SETPIPE_SZ``) or socket
  buffers (``SO_SNDBUF``/``SO_RCVBUF``); what remains is bounded and listed below.
* **Leftovers** — after every run the worker kills every process of the slot's uid
  (``kill(-1)`` as that uid), so double forks and ``setsid`` orphans die too; the working
  directory is a fresh size-capped tmpfs per run (``Limits.file_size_bytes``, 4096 inodes),
  so disk fills are bounded and no file survives a run (without root: the run's directory is
  moved out of reach and removed after the run, and only ``Limits.file_size_bytes`` per file
  caps what it holds).
* **File system** — Landlock: reads only the standard library, the system library
  directories and the time-zone database; every ``site-packages`` / ``dist-packages``
  directory, every other ``sys.path`` entry, this project's own packages and ``hidden_paths``
  stay unreadable (their names may be listed, no file read), whatever the install layout
  (editable, wheel, system or user site), so no installed package's data — this project's
  test files, HumanEval's reference solutions — can be read; only the packages named in
  ``preload`` are readable. Writes only in the run's own directory: a second Landlock layer,
  stacked per run, binds to that directory, so nothing can be written beside it for a later
  run to read. No ``execve`` at all. A directory such as ``/root`` above the interpreter is
  covered by an empty tmpfs in the worker's private mount namespace with only the Python
  directories bind-mounted back. ``/etc/passwd``, the caller's files and
  ``/proc/<pid>/environ`` are unreadable.
* **Network** — a private network namespace per worker (only a down loopback), plus
  Landlock's TCP bind/connect denial (ABI >= 4), plus a seccomp filter: sockets only of the
  families that namespace confines (IP, netlink). Unix sockets (a pathname socket on the host
  is a file no namespace hides), vsock (the hypervisor's host), packet and crypto sockets,
  datagram socketpairs (``sendto`` takes a pathname) and io_uring are refused with EACCES,
  as is every system call of a foreign ABI (i386, x32).
* **Shared state** — the same filter refuses System V IPC (shared memory, semaphores, message
  queues), POSIX message queues, the kernel key rings and ``bpf()``: their objects outlive a
  run and are no files, so a run could otherwise leave data for the next (a slot's uid keeps
  its key ring) or attach to the host's segments by id.
* **Other processes** — a different uid (no signals to root's processes), Landlock signal
  scoping (ABI >= 6), no-new-privileges, parent-death signal.
* **Environment** — workers start with an empty environment; the caller's is never seen.
* **Grading** — expected outputs never enter the sandbox; function-call results travel as
  strict JSON on a dedicated file descriptor (see :mod:`sandboxes.protocol`).

What is NOT protected:

* Same-kernel isolation is no defence against kernel exploits; the seccomp filter covers
  sockets, io_uring, IPC, key rings and ``bpf()`` only, so every other system call Landlock
  does not cover is reachable.
* Memory is capped per process (``RLIMIT_AS``), not per run: ``processes`` children can each
  use ``memory_bytes``. The Docker backend caps the whole container.
* Memory held through file descriptors is not counted against ``memory_bytes``; only these
  routes remain, each bounded: the run's working directory (a tmpfs of up to
  ``file_size_bytes``, host memory when root), pipe buffers at the kernel's default size
  (64 KiB each, ``open_files / 2`` pipes: 2 MiB at the default limits), unix socket buffers
  at the kernel's default size (``open_files / 2`` pairs of ``2 * net.core.wmem_default``:
  13 MiB at the default limits with the usual 208 KiB; 6 MiB measured), and the small kernel
  objects behind other descriptors (epoll, eventfd, inotify), at most ``open_files`` of them.
  Without root the pipe and socket buffers count against your own user's kernel limits.
  The Docker backend's container limit counts all of them.
* CPU time is counted for the main process only; a program's children are bounded by the
  wall clock.
* A program can write to its own result channel, so ``completed`` and ``return_json`` say only
  what the program chose to report: a return value is the program's answer, never a verdict,
  and graders compare it outside the sandbox. ``memory_limit`` is read from how the program
  ended (an uncaught ``MemoryError``), which a program can also bring about itself.
* Without root: no per-slot uid (``RLIMIT_NPROC`` then counts all your processes, ``setsid``
  orphans can survive, your own files are readable unless Landlock is on), no tmpfs cap.
"""

from __future__ import annotations

import os
import pickle
import queue
import secrets
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import warnings
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from sandboxes.errors import (
    IsolationWarning,
    SandboxClosedError,
    SandboxUnavailableError,
)
from sandboxes.protocol import (
    REPLY_GRACE_S,
    ExecutionResult,
    ExecutionStatus,
    FunctionCall,
    Limits,
    Sandbox,
    checked_workers,
    result_from_reply,
    worker_request,
)

__all__ = ["LocalSandbox"]

_WORKER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_worker.py")
# Random slot uids from a range no distribution allocates, so two sandboxes (or two test
# sessions) never share a uid and never kill each other's processes.
_UID_RANGE = (1_500_000_000, 2_000_000_000)


class _Worker:
    """The parent's handle on one worker process."""

    def __init__(self, python: str, cfg: dict[str, Any], start_timeout: float) -> None:
        self.cfg = cfg
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8"}
        debug = os.environ.get("RLRF_SANDBOX_DEBUG") == "1"
        self.proc = subprocess.Popen(
            [python, "-I", "-B", _WORKER_SCRIPT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None if debug else subprocess.DEVNULL,
            env=env,
            cwd="/",
            close_fds=True,
            start_new_session=True,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.w_fd = self.proc.stdin.fileno()
        self.r_fd = self.proc.stdout.fileno()
        self.start_timeout = start_timeout
        self.hello: dict[str, Any] | None = None
        self.send(cfg)

    def finish_start(self) -> dict[str, Any]:
        self.hello = self.recv(self.start_timeout)
        return self.hello

    def send(self, obj: object) -> None:
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        view = memoryview(struct.pack(">Q", len(data)) + data)
        while view:
            n = os.write(self.w_fd, view)
            view = view[n:]

    def _read_exact(self, n: int, deadline: float) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the worker did not answer in time")
            ready, _, _ = select.select([self.r_fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(self.r_fd, n - len(buf))
            if not chunk:
                raise EOFError("the worker closed its pipe")
            buf += chunk
        return bytes(buf)

    def recv(self, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        (n,) = struct.unpack(">Q", self._read_exact(8, deadline))
        # The worker is trusted code that no sandboxed child can reach (its control pipes are
        # closed in every child), so unpickling its replies is safe.
        return pickle.loads(self._read_exact(n, deadline))

    def stop(self, timeout: float = 5.0) -> None:
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _project_dirs() -> list[str]:
    """Where this project's packages live (hidden from programs wherever they are installed)."""
    import importlib.util

    out = []
    for name in ("rlrf", "envs", "sandboxes", "algorithms"):
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        if spec is not None:
            out.extend(spec.submodule_search_locations or ([spec.origin] if spec.origin else []))
    return out


def _close_pool(workers: list[_Worker], base_dir: str) -> None:
    for w in workers:
        w.stop()
    workers.clear()
    shutil.rmtree(base_dir, ignore_errors=True)


class LocalSandbox(Sandbox):
    r"""Runs programs in fresh children of pre-forked, pre-imported local workers.

    See the module docstring for what is and is not protected.

    Args:
        workers: parallel executions (worker processes); default: the CPUs available.
        python: interpreter for the workers; default: the current one (``sys.executable``).
        preload: extra modules each worker imports once (e.g. ``("numpy",)``).
        network_isolation: put workers in a private network namespace.
        landlock: confine file-system access (and TCP, signals) with Landlock.
        base_dir: where slot directories are created; default: the system temp dir.
        start_timeout: seconds a worker may take to start.
        hidden_paths: more paths programs must not read, should they lie inside the Python
            installation (every ``site-packages`` and this project's packages always are).

    Raises:
        SandboxUnavailableError: not on Linux, or the workers failed to start.

    Example:
        >>> with LocalSandbox(workers=1) as sb:  # doctest: +SKIP
        ...     sb.run("print(6 * 7)").stdout
        '42\n'

    """

    name = "local"

    def __init__(
        self,
        workers: int | None = None,
        *,
        python: str | None = None,
        preload: Sequence[str] = (),
        network_isolation: bool = True,
        landlock: bool = True,
        base_dir: str | None = None,
        start_timeout: float = 60.0,
        hidden_paths: Sequence[str] = (),
    ) -> None:
        if not sys.platform.startswith("linux"):
            raise SandboxUnavailableError(
                f"LocalSandbox needs Linux (namespaces, Landlock, pidfd); this is "
                f"{sys.platform}. Use sandboxes.get('docker') instead."
            )
        workers = checked_workers(workers)
        self.max_workers = workers
        self._python = python or sys.executable
        self._base_dir = tempfile.mkdtemp(prefix="rlrf-sandbox-", dir=base_dir)
        os.chmod(self._base_dir, 0o711)
        self._cfg_common = {
            "network_isolation": bool(network_isolation),
            "landlock": bool(landlock),
            "preload": tuple(preload),
            "tmp_bytes": Limits().file_size_bytes,
            "hidden_paths": [*_project_dirs(), *map(os.fspath, hidden_paths)],
        }
        self._start_timeout = start_timeout
        self._lock = threading.Lock()
        self._closed = False
        self._workers: list[_Worker] = []
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self._warned: set[str] = set()
        self.layers: dict[str, bool] = {}
        """Isolation layers in force (from the first worker), e.g. ``{"landlock_fs": True}``."""
        self._finalizer = weakref.finalize(self, _close_pool, self._workers, self._base_dir)
        try:
            started = [self._spawn(i) for i in range(workers)]
            for w in started:
                self._adopt(w)
        except BaseException:
            self.close()
            raise

    @property
    def slot_uids(self) -> tuple[int, ...]:
        """The uids the workers run programs under (one per slot; empty when not root)."""
        if not self.layers.get("slot_uid"):
            return ()
        return tuple(sorted({w.cfg["uid"] for w in list(self._workers)}))

    # ------------------------------------------------------------------ workers

    def _spawn(self, slot: int, uid: int | None = None) -> _Worker:
        slotdir = os.path.join(self._base_dir, f"slot{slot}")
        os.makedirs(slotdir, mode=0o711, exist_ok=True)
        cfg = dict(self._cfg_common)
        cfg["slot"] = slot
        cfg["slotdir"] = slotdir
        cfg["uid"] = uid if uid is not None else secrets.randbelow(_UID_RANGE[1] - _UID_RANGE[0])
        if uid is None:
            cfg["uid"] += _UID_RANGE[0]
        w = _Worker(self._python, cfg, self._start_timeout)
        self._workers.append(w)
        return w

    def _adopt(self, w: _Worker) -> None:
        try:
            hello = w.finish_start()
        except (EOFError, TimeoutError, OSError) as e:
            raise SandboxUnavailableError(
                f"a sandbox worker ({self._python} {_WORKER_SCRIPT}) failed to start: {e}. "
                "Run with RLRF_SANDBOX_DEBUG=1 to see its stderr."
            ) from e
        if not self.layers:
            self.layers = dict(hello["layers"])
        for msg in hello["warnings"]:
            if msg not in self._warned:
                self._warned.add(msg)
                warnings.warn(f"LocalSandbox: {msg}", IsolationWarning, stacklevel=4)
        self._idle.put(w)

    def _replace(self, w: _Worker) -> None:
        """Stop a broken worker and start a new one in its slot (same uid: it kills leftovers)."""
        w.stop(timeout=1.0)
        with self._lock:
            if w in self._workers:
                self._workers.remove(w)
            if self._closed:
                return
            new = self._spawn(w.cfg["slot"], uid=w.cfg["uid"])
        self._adopt(new)

    # ------------------------------------------------------------------ protocol

    def run(
        self,
        code: str,
        stdin: str | bytes = b"",
        limits: Limits | None = None,
        files: Mapping[str, bytes] | None = None,
        *,
        call: FunctionCall | None = None,
    ) -> ExecutionResult:
        """Execute ``code`` in a fresh sandboxed child; see :meth:`Sandbox.run`."""
        req, lim = worker_request(code, stdin, limits, files, call)
        if self._closed:
            raise SandboxClosedError("this LocalSandbox is closed; create a new one")
        w = self._idle.get()
        if self._closed:
            self._idle.put(w)
            raise SandboxClosedError("this LocalSandbox was closed while waiting for a worker")
        t0 = time.monotonic()
        try:
            w.send(req)
            reply = w.recv(lim.wall_time_s + REPLY_GRACE_S)
        except (EOFError, TimeoutError, OSError) as e:
            wall = time.monotonic() - t0
            rc = w.proc.poll()
            self._replace(w)
            return ExecutionResult(
                ExecutionStatus.SANDBOX_ERROR,
                wall_time_s=wall,
                message=f"sandbox worker failed ({e}; worker exit code {rc}); it was restarted",
            )
        self._idle.put(w)
        details = {"backend": "local", "worker_pid": w.proc.pid, "slot": w.cfg["slot"]}
        return result_from_reply(reply, details)

    def close(self) -> None:
        """Stop every worker and remove the slot directories; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._finalizer()
