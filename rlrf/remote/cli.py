"""``rlrf serve ID``: serve a registered env over OpenEnv's wire protocol (HTTP + WebSocket).

Each WebSocket session at ``/ws`` gets its own env instance; ``GET /health`` answers without a
token, ``GET /schema`` publishes the action and observation, ``GET /rlrf`` the env. The
bearer token is read from the ``RLRF_SERVE_TOKEN`` environment variable (never from a flag:
flags show in ``ps``); when it is set, every other request must send it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from rlrf.errors import RLRFError
from rlrf.options import add_env_options, merge_env_kwargs, new_parser, parse_args
from rlrf.remote.wire import TOKEN_ENV

__all__ = ["COMMAND_HELP", "build_parser", "main"]

COMMAND_HELP = "serve a registered env over OpenEnv's protocol (HTTP + WebSocket sessions)"


def build_parser(prog: str = "rlrf serve") -> argparse.ArgumentParser:
    """The ``rlrf serve`` argument parser."""
    parser = new_parser(
        prog,
        (__doc__ or "").split("\n\n")[0],
        epilog=f"Set {TOKEN_ENV} to require 'Authorization: Bearer <token>' on every request "
        "but /health; rlrf clients read the same variable.",
    )
    add_env_options(parser, positional=True)
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: a free one)")
    parser.add_argument(
        "--max-sessions",
        type=int,
        default=64,
        help="sessions open at once, one env each; more are refused (default 64)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="close a session whose client sent nothing for this long (default 300)",
    )
    parser.add_argument(
        "--max-message-bytes",
        type=int,
        default=4 * 2**20,
        help="largest WebSocket message or HTTP body accepted (default 4 MiB)",
    )
    parser.add_argument("--log-level", default="warning", help="uvicorn's log level")
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "rlrf serve") -> int:
    """Run ``rlrf serve``; return the exit status."""
    args = parse_args(build_parser(prog), argv)
    try:
        from rlrf.remote.server import EnvServer

        token = os.environ.get(TOKEN_ENV) or None
        server = EnvServer(
            args.env,
            merge_env_kwargs(args.env_kwargs),
            host=args.host,
            port=args.port,
            max_sessions=args.max_sessions,
            idle_timeout_s=args.idle_timeout,
            max_message_bytes=args.max_message_bytes,
            token=token,
            log_level=args.log_level,
        )
    except RLRFError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    if token is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"{prog}: warning: listening on {args.host} without a token; anyone who reaches it "
            f"can run episodes (set {TOKEN_ENV})",
            file=sys.stderr,
        )
    auth = "bearer token required" if token else "no token"
    print(
        f"{prog}: serving {args.env} at {server.url} (sessions at "
        f"ws{server.url[4:]}/ws, at most "
        f"{args.max_sessions}; {auth})",
        flush=True,
    )
    server.serve_forever()
    return 0
