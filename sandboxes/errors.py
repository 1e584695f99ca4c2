"""Exceptions and warnings raised by :mod:`sandboxes`.

A *result* (timeout, memory limit, crash of the submitted program, even a dead worker) is never
an exception: it comes back as an :class:`~sandboxes.ExecutionResult`. Exceptions are reserved
for mistakes of the caller (bad limits, unknown backend, use after ``close()``) and for a
backend that cannot start at all.
"""

from __future__ import annotations

from rlrf.errors import ConfigError, RLRFError, RLRFWarning

__all__ = [
    "IsolationWarning",
    "SandboxClosedError",
    "SandboxConfigError",
    "SandboxError",
    "SandboxUnavailableError",
]


class SandboxError(RLRFError):
    """Base class of every error raised by :mod:`sandboxes`."""


class SandboxConfigError(SandboxError, ConfigError):
    """A limit, a backend name or a backend option is invalid; the message says which."""


class SandboxUnavailableError(SandboxError):
    """The backend cannot run here (no Docker engine, no image, unsupported platform)."""


class SandboxClosedError(SandboxError, RuntimeError):
    """The sandbox was used after :meth:`~sandboxes.Sandbox.close`."""


class IsolationWarning(RLRFWarning):
    """An isolation layer is missing on this machine; the message names the protection lost."""
