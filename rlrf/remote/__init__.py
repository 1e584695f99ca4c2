"""rlrf envs over the network, on OpenEnv's wire protocol (HTTP + WebSocket).

* ``rlrf serve ID`` (:class:`~rlrf.remote.server.EnvServer`) serves any registered env, one
  env instance per session;
* :class:`OpenEnvEnv` (``rlrf.make("openenv:http://host:port")``) is an
  :class:`~rlrf.RLRFEnv` over any OpenEnv server, ``rlrf serve`` or another.

The observation layout and how feedback crosses are in :mod:`rlrf.remote.wire`. Importing
this package imports neither ``openenv`` nor the server: ``openenv`` (the ``serve`` extra,
``pip install 'rlrf[serve]'``) is imported when a server starts or a session opens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rlrf.remote.client import OpenEnvEnv, ServerInfo, make_remote, parse_urls
from rlrf.remote.wire import TOKEN_ENV, feedback_from_wire, feedback_to_wire

if TYPE_CHECKING:
    from rlrf.remote.server import EnvServer, build_app

__all__ = [
    "TOKEN_ENV",
    "EnvServer",
    "OpenEnvEnv",
    "ServerInfo",
    "build_app",
    "feedback_from_wire",
    "feedback_to_wire",
    "make_remote",
    "parse_urls",
]


def __getattr__(name: str) -> Any:
    # The server module imports openenv and uvicorn: only when asked for.
    if name in ("EnvServer", "build_app"):
        from rlrf.remote import server

        return getattr(server, name)
    raise AttributeError(f"module 'rlrf.remote' has no attribute {name!r}")
