"""The Docker sandbox: warm, locked-down containers driven through the ``docker`` SDK.

:class:`DockerSandbox` keeps ``workers`` containers running, each with the same pre-forked
worker as :mod:`sandboxes.local` (``_worker.py``, bind-mounted read-only) as its only
process; every execution is a fresh child of that worker, so a run costs a fork plus a round
trip over the container's attached stdin/stdout, not a container start. The image is built
locally from the host's Python (:mod:`sandboxes.docker_engine`); no registry is needed.

What is protected, per container: no network (``network_mode="none"``); read-only root file
system; ``/tmp`` a size-capped tmpfs in which each run gets a fresh directory, the only place
it can write (a per-run Landlock layer), moved out of reach and removed when the run ends (a
container whose leftovers cannot be removed is recycled), so no run sees or fills what
another left; memory limit equal to
memory+swap (the kernel's OOM killer ends a run that exceeds it: status ``memory_limit``, and
the container is recycled); pids limit (fork bombs); CPU quota; user ``nobody`` (65534); all
capabilities dropped; ``no-new-privileges``; a random non-root uid per container (so
``RLIMIT_NPROC`` counts that container only); Landlock inside (no ``execve``, no TCP, no
signals to the worker); the worker's seccomp filter (no unix, vsock, packet sockets, no
io_uring, no System V IPC, message queues or key rings between runs); the image holds
nothing but the interpreter, its libraries and the standard library, so there is nothing of
the host to read. Inside, the
worker adds per-run rlimits (address space, CPU, file size, open files), wall-clock kills of
the process group, and kills every leftover process (it is a child subreaper). Containers are
recycled after an OOM, a timeout, a dead worker, or ``recycle_after`` runs.

What is NOT protected: the kernel is shared with the host (a kernel exploit escapes; Docker's
default seccomp profile narrows the attack surface but is no VM); the container's
``/tmp`` tmpfs (``tmpfs_bytes``) caps the disk one run can fill, not ``Limits.file_size_bytes``
(which still caps each file); memory/pids limits are per container (runs in one container are
sequential and leftovers are killed after every run).
"""

from __future__ import annotations

import os
import queue
import secrets
import select
import socket
import struct
import threading
import time
import uuid
import weakref
from collections.abc import Mapping
from typing import Any

from sandboxes.docker_engine import DEFAULT_IMAGE, SYSTEM_SOCKET_URL, private_url
from sandboxes.errors import SandboxClosedError, SandboxConfigError, SandboxUnavailableError
from sandboxes.local import _UID_RANGE, _WORKER_SCRIPT
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

__all__ = ["DockerSandbox"]

_LABEL = "rlrf.sandbox"
_WORKER_IN_CONTAINER = "/opt/rlrf/_worker.py"


def _default_url() -> str:
    """The system engine's socket, else the private one of scripts/start-dockerd.sh."""
    private = private_url()
    if not os.path.exists("/var/run/docker.sock") and os.path.exists(private[len("unix://") :]):
        return private
    return SYSTEM_SOCKET_URL


class _ContainerWorker:
    """One warm container whose main process is a sandbox worker, attached over a socket."""

    def __init__(self, owner: DockerSandbox, slot: int) -> None:
        import pickle

        self._pickle = pickle
        self.slot = slot
        self.runs = 0
        # A random uid per container makes RLIMIT_NPROC count this container's processes only.
        self.uid = _UID_RANGE[0] + secrets.randbelow(_UID_RANGE[1] - _UID_RANGE[0])
        client = owner._client
        self.container = client.containers.create(
            owner.image,
            command=[owner.python, "-I", "-B", _WORKER_IN_CONTAINER],
            user=f"{self.uid}:{self.uid}",
            network_mode="none",
            read_only=True,
            tmpfs={"/tmp": f"rw,nosuid,nodev,size={owner.tmpfs_bytes},mode=1777"},
            mem_limit=owner.mem_limit,
            memswap_limit=owner.mem_limit,
            pids_limit=owner.pids_limit,
            nano_cpus=int(owner.cpus * 1e9),
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            volumes={_WORKER_SCRIPT: {"bind": _WORKER_IN_CONTAINER, "mode": "ro"}},
            environment={"LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8"},
            working_dir="/tmp",
            stdin_open=True,
            detach=True,
            labels={_LABEL: owner.session},
        )
        try:
            raw = client.api.attach_socket(
                self.container.id, params={"stdin": 1, "stdout": 1, "stream": 1}
            )
            self.sock: socket.socket = getattr(raw, "_sock", raw)
            self.container.start()
            self._buf = bytearray()
            self.send(
                {
                    "slotdir": "/tmp/slot",
                    "uid": None,
                    "network_isolation": False,  # network_mode="none" does it
                    "landlock": True,  # writes only in the run's dir; no signals to the worker
                    "nproc_offset": 1,
                    "preload": owner.preload,
                    "tmp_bytes": Limits().file_size_bytes,
                }
            )
            self.hello = self.recv(owner.start_timeout)
        except BaseException:
            self.remove()
            raise

    def send(self, obj: object) -> None:
        data = self._pickle.dumps(obj, protocol=self._pickle.HIGHEST_PROTOCOL)
        self.sock.sendall(struct.pack(">Q", len(data)) + data)

    def _fill(self, deadline: float) -> None:
        """Read one multiplexed frame of the attach stream and keep its stdout payload."""
        header = self._raw(8, deadline)
        stream, size = header[0], struct.unpack(">I", header[4:])[0]
        payload = self._raw(size, deadline)
        if stream == 1:
            self._buf += payload

    def _raw(self, n: int, deadline: float) -> bytes:
        out = bytearray()
        while len(out) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the container's worker did not answer in time")
            ready, _, _ = select.select([self.sock], [], [], remaining)
            if not ready:
                continue
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise EOFError("the container's worker closed its stream")
            out += chunk
        return bytes(out)

    def _read(self, n: int, deadline: float) -> bytes:
        while len(self._buf) < n:
            self._fill(deadline)
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def recv(self, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        (n,) = struct.unpack(">Q", self._read(8, deadline))
        # The worker is trusted; sandboxed children cannot reach its stdout (fds closed).
        return self._pickle.loads(self._read(n, deadline))

    def oom_kills(self) -> int:
        """OOM kills so far in this container's memory cgroup (v1 or v2), or -1 if unknown."""
        cid = self.container.id
        for path, key in (
            (f"/sys/fs/cgroup/memory/docker/{cid}/memory.oom_control", "oom_kill"),
            (f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/memory.events", "oom_kill"),
            (f"/sys/fs/cgroup/docker/{cid}/memory.events", "oom_kill"),
        ):
            try:
                with open(path) as f:
                    for line in f:
                        k, _, v = line.partition(" ")
                        if k == key:
                            return int(v)
            except OSError:
                continue
        return -1

    def remove(self) -> None:
        try:
            self.sock.close()
        except Exception:
            pass
        try:
            self.container.remove(force=True)
        except Exception:
            pass


def _remove_workers(workers: list[_ContainerWorker]) -> None:
    for w in list(workers):
        w.remove()
    workers.clear()


class DockerSandbox(Sandbox):
    """Runs programs in warm, locked-down Docker containers (see the module docstring).

    Args:
        workers: containers (parallel executions); default: the CPUs available.
        image: the sandbox image (build it with ``scripts/build-sandbox-image.sh``).
        base_url: the engine, e.g. ``unix:///tmp/rlrf-dockerd/docker.sock``; default:
            ``DOCKER_HOST``, the system socket, or the private engine's socket.
        mem_limit: container memory limit in bytes (memory+swap).
        pids_limit: processes and threads per container.
        cpus: CPU quota per container.
        tmpfs_bytes: size of the container's writable ``/tmp``.
        recycle_after: replace a container after this many runs.
        preload: extra modules the worker imports once.
        start_timeout: seconds a container may take to start.

    Raises:
        SandboxUnavailableError: no engine answers, or the image is missing.

    """

    name = "docker"

    def __init__(
        self,
        workers: int | None = None,
        *,
        image: str = DEFAULT_IMAGE,
        base_url: str | None = None,
        mem_limit: int = 1 << 30,
        pids_limit: int = 64,
        cpus: float = 1.0,
        tmpfs_bytes: int = 64 << 20,
        recycle_after: int = 500,
        preload: tuple[str, ...] = (),
        start_timeout: float = 60.0,
    ) -> None:
        workers = checked_workers(workers)
        for name, value in (
            ("mem_limit", mem_limit),
            ("pids_limit", pids_limit),
            ("tmpfs_bytes", tmpfs_bytes),
            ("recycle_after", recycle_after),
        ):
            if not isinstance(value, int) or value <= 0:
                raise SandboxConfigError(f"{name} must be a positive int, got {value!r}")
        try:
            import docker
        except ImportError as e:  # pragma: no cover - docker is a dependency
            raise SandboxUnavailableError("the 'docker' package is not installed") from e
        url = base_url or os.environ.get("DOCKER_HOST") or _default_url()
        try:
            self._client = docker.DockerClient(base_url=url, timeout=120)
            self._client.ping()
        except Exception as e:
            raise SandboxUnavailableError(
                f"no Docker engine answers at {url}: {e}. Start one with "
                "scripts/start-dockerd.sh and pass base_url= (or set DOCKER_HOST)."
            ) from e
        try:
            self._client.images.get(image)
        except Exception as e:
            raise SandboxUnavailableError(
                f"the sandbox image {image!r} is not on the engine at {url}; build it with "
                f"scripts/build-sandbox-image.sh"
            ) from e
        self.image = image
        self.python = "/usr/bin/python3"
        self.mem_limit = mem_limit
        self.pids_limit = pids_limit
        self.cpus = float(cpus)
        self.tmpfs_bytes = tmpfs_bytes
        self.recycle_after = recycle_after
        self.preload = tuple(preload)
        self.start_timeout = start_timeout
        self.max_workers = workers
        self.session = uuid.uuid4().hex
        self._closed = False
        self._lock = threading.Lock()
        self._idle: queue.SimpleQueue[_ContainerWorker] = queue.SimpleQueue()
        self._all: list[_ContainerWorker] = []
        # containers of a sandbox dropped without close() are removed when it is collected
        self._finalizer = weakref.finalize(self, _remove_workers, self._all)
        try:
            for slot in range(workers):
                self._idle.put(self._new(slot))
        except BaseException as e:
            self.close()
            if isinstance(e, Exception) and not isinstance(e, SandboxUnavailableError):
                raise SandboxUnavailableError(f"could not start a sandbox container: {e}") from e
            raise

    def _new(self, slot: int) -> _ContainerWorker:
        w = _ContainerWorker(self, slot)
        with self._lock:
            self._all.append(w)
        return w

    def _recycle(self, w: _ContainerWorker) -> _ContainerWorker | None:
        w.remove()
        with self._lock:
            if w in self._all:
                self._all.remove(w)
            if self._closed:
                return None
        return self._new(w.slot)

    def run(
        self,
        code: str,
        stdin: str | bytes = b"",
        limits: Limits | None = None,
        files: Mapping[str, bytes] | None = None,
        *,
        call: FunctionCall | None = None,
    ) -> ExecutionResult:
        """Execute ``code`` in a fresh child inside a warm container; see :meth:`Sandbox.run`."""
        req, lim = worker_request(code, stdin, limits, files, call)
        if self._closed:
            raise SandboxClosedError("this DockerSandbox is closed; create a new one")
        w = self._idle.get()
        if self._closed:
            self._idle.put(w)
            raise SandboxClosedError("this DockerSandbox was closed while waiting for a container")
        t0 = time.monotonic()
        oom_before = w.oom_kills()
        try:
            w.send(req)
            reply = w.recv(lim.wall_time_s + REPLY_GRACE_S)
        except (EOFError, TimeoutError, OSError) as e:
            wall = time.monotonic() - t0
            oom = w.oom_kills() > oom_before >= 0
            replacement = self._recycle(w)
            if replacement is not None:
                self._idle.put(replacement)
            if oom:
                return ExecutionResult(
                    ExecutionStatus.MEMORY_LIMIT, wall_time_s=wall,
                    message=f"the container's memory limit ({self.mem_limit} bytes) was exceeded",
                )  # fmt: skip
            return ExecutionResult(
                ExecutionStatus.SANDBOX_ERROR, wall_time_s=wall,
                message=f"sandbox container failed ({e}); it was replaced",
            )  # fmt: skip
        w.runs += 1
        status = ExecutionStatus(reply["status"])
        message = str(reply.get("message", ""))
        oom = w.oom_kills() > oom_before >= 0
        if oom and status in (ExecutionStatus.RUNTIME_ERROR, ExecutionStatus.SANDBOX_ERROR):
            status = ExecutionStatus.MEMORY_LIMIT
            message = f"killed by the OOM killer: container memory limit {self.mem_limit} bytes"
        recycle = (
            oom
            or status in (ExecutionStatus.TIMEOUT, ExecutionStatus.MEMORY_LIMIT)
            or w.runs >= self.recycle_after
            or bool(reply.get("recycle"))  # the worker could not wipe a run's directory
        )
        if recycle:
            replacement = self._recycle(w)
            if replacement is not None:
                self._idle.put(replacement)
        else:
            self._idle.put(w)
        details = {"backend": "docker", "container": w.container.short_id, "slot": w.slot}
        return result_from_reply(reply, details, status=status, message=message)

    def leftover_containers(self) -> list[str]:
        """Ids of this sandbox's containers still on the engine (empty after :meth:`close`)."""
        try:
            found = self._client.containers.list(
                all=True, filters={"label": f"{_LABEL}={self.session}"}
            )
        except Exception:
            return []
        return [c.short_id for c in found]

    def close(self) -> None:
        """Remove every container of this sandbox; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            workers = list(self._all)
            self._all.clear()
        for w in workers:
            w.remove()
        for c in self.leftover_containers():
            try:
                self._client.containers.get(c).remove(force=True)
            except Exception:
                pass
