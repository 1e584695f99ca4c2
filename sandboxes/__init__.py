"""Isolated, fast execution of untrusted Python code.

One small protocol (:class:`Sandbox`: ``run``, ``run_function``, ``run_many``, ``close``) with
typed results (:class:`ExecutionResult`, :class:`ExecutionStatus`) and two backends:

* ``"local"`` — :class:`~sandboxes.local.LocalSandbox`, the default: a pool of pre-forked,
  pre-imported workers, a fresh child per run, rlimits, namespaces, Landlock (the standard
  library readable, no installed package; writes only in the run's own directory), a seccomp
  socket filter; no daemon.
* ``"docker"`` — :class:`~sandboxes.docker.DockerSandbox`: warm containers through the
  ``docker`` SDK (needs an engine and the locally built image).

Grading happens in the trusted parent with :mod:`sandboxes.compare`: what a program sends back
(stdout, a return value) is its answer, never a verdict. Each backend's module
docstring lists what it protects against and what it does not.

Memory: ``Limits.memory_bytes`` caps each process's address space locally, the whole
container in Docker. Locally, memory a program could hold through file descriptors instead
(``memfd_create``, ``memfd_secret``, grown pipe or socket buffers, a grown stdin) is refused;
what is **not** counted against ``memory_bytes`` there is the working directory's tmpfs (up to
``Limits.file_size_bytes``), pipe and unix socket buffers at the kernel's default sizes (about
2 and 13 MiB at the default limits) and small per-descriptor kernel objects, all bounded by
``Limits.open_files`` (details in :mod:`sandboxes.local`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from sandboxes.errors import (
    IsolationWarning,
    SandboxClosedError,
    SandboxConfigError,
    SandboxError,
    SandboxUnavailableError,
)
from sandboxes.protocol import (
    ExecutionResult,
    ExecutionStatus,
    FunctionCall,
    Job,
    Limits,
    Sandbox,
)

if TYPE_CHECKING:
    from sandboxes.docker import DockerSandbox
    from sandboxes.local import LocalSandbox

__all__ = [
    "BACKENDS",
    "DockerSandbox",
    "ExecutionResult",
    "ExecutionStatus",
    "FunctionCall",
    "IsolationWarning",
    "Job",
    "Limits",
    "LocalSandbox",
    "Sandbox",
    "SandboxClosedError",
    "SandboxConfigError",
    "SandboxError",
    "SandboxUnavailableError",
    "get",
]

BACKENDS: tuple[str, ...] = ("local", "docker")
"""Names accepted by :func:`get`."""


def get(backend: Literal["local", "docker"] = "local", **kwargs: Any) -> Sandbox:
    """Build a sandbox backend by name; ``kwargs`` go to its constructor.

    Args:
        backend: ``"local"`` (no daemon, the default) or ``"docker"``.
        **kwargs: backend options, e.g. ``workers=4`` (see each backend's class).

    Returns:
        A started sandbox; use it as a context manager so that it is closed.

    Raises:
        SandboxConfigError: ``backend`` is not a known name.
        SandboxUnavailableError: the backend cannot run on this machine.

    """
    if backend == "local":
        from sandboxes.local import LocalSandbox

        return LocalSandbox(**kwargs)
    if backend == "docker":
        from sandboxes.docker import DockerSandbox

        return DockerSandbox(**kwargs)
    import difflib

    hint = difflib.get_close_matches(str(backend), BACKENDS, n=1)
    suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
    raise SandboxConfigError(
        f"unknown sandbox backend {backend!r}: choose one of {', '.join(BACKENDS)}{suggestion}"
    )


def __getattr__(name: str) -> Any:
    # Backends import lazily so that `import sandboxes` stays cheap and docker-free.
    if name == "LocalSandbox":
        from sandboxes.local import LocalSandbox

        return LocalSandbox
    if name == "DockerSandbox":
        from sandboxes.docker import DockerSandbox

        return DockerSandbox
    raise AttributeError(f"module 'sandboxes' has no attribute {name!r}")
