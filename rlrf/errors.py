"""The one exception tree of rlrf.

Every error rlrf raises on purpose derives from :class:`RLRFError`, so callers can catch the
whole family at once. Messages say what was wrong, where, and how to fix it.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "EntryPointError",
    "EnvCheckError",
    "EnvError",
    "EnvNotFoundError",
    "GroupMismatchError",
    "InvalidEnvIdError",
    "MissingExtraError",
    "PluginError",
    "RLRFError",
    "RLRFWarning",
    "RegistrationError",
    "RemoteEnvError",
    "TrajectoryFormatError",
]


class RLRFError(Exception):
    """Base class of every error raised by rlrf."""


class RLRFWarning(UserWarning):
    """Base class of every warning emitted by rlrf (lost protection, skipped data, ...)."""


class ConfigError(RLRFError, ValueError):
    """A configuration value or field is invalid (unknown field, out-of-range value)."""


class RegistrationError(RLRFError):
    """An environment could not be registered (duplicate id, bad entry point string)."""


class InvalidEnvIdError(RegistrationError, ValueError):
    """An environment id does not match ``namespace/Name-vN``."""


class EnvNotFoundError(RLRFError, KeyError):
    """No environment is registered under the requested id."""

    def __str__(self) -> str:  # KeyError would repr() the message; show it as written.
        return str(self.args[0]) if self.args else ""


class EntryPointError(RLRFError, ImportError):
    """A registered entry point (``"module:attr"``) could not be imported or resolved."""


class PluginError(RLRFError):
    """A third-party package's ``rlrf.envs`` entry point failed to load."""


class EnvError(RLRFError):
    """An environment broke its contract at run time (wrong return type, NaN reward, ...)."""


class EnvCheckError(EnvError):
    """:func:`rlrf.check_env` found a problem; the message says which check and how to fix it."""


class GroupMismatchError(EnvError):
    """The rollouts of one group got different tasks or prompts from the same ``reset`` seed."""


class RemoteEnvError(EnvError):
    """An env server could not be reached, answered something else, or reported an error."""


class MissingExtraError(RLRFError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class TrajectoryFormatError(RLRFError, ValueError):
    """A trajectory file or record is malformed or from an unsupported schema version."""
