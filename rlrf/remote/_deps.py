"""The optional ``openenv`` dependency, imported only when serving or connecting."""

from __future__ import annotations

import importlib
from types import ModuleType

from rlrf.errors import MissingExtraError

__all__ = ["require_openenv"]


def require_openenv(what: str) -> ModuleType:
    """Import ``openenv`` or raise :class:`MissingExtraError` saying how to install it."""
    try:
        return importlib.import_module("openenv")
    except ImportError as e:
        raise MissingExtraError(
            f"{what} needs the 'openenv' package, which is not installed ({e}); "
            "install it with: pip install 'rlrf[serve]'"
        ) from e
