"""Serve any registered rlrf env over OpenEnv's wire protocol (HTTP + WebSocket).

Built on the ``openenv`` package's server: an rlrf env becomes an OpenEnv ``Environment``
(:class:`ServedEnvironment`) and openenv's ``HTTPEnvServer`` provides the routes (``/ws``
sessions, ``/reset``, ``/step``, ``/schema``, ``/health``, ``/metadata``, ``/state``), one
env instance per WebSocket session and the capacity error when ``max_sessions`` are open. The
observation layout is :mod:`rlrf.remote.wire`'s.

What rlrf adds around it, and why:

* :class:`Guard`, an ASGI layer in front of openenv's app: a bearer token (openenv has no
  authentication), a cap on HTTP request bodies (uvicorn has none; WebSocket messages are
  capped by uvicorn's ``ws_max_size``) and the idle timeout of WebSocket sessions. openenv's
  own idle reaper is left off: it closes an idle session's env but leaves its WebSocket open
  and still stepping the closed env, while closing the socket (as the guard does) ends the
  session through openenv's normal path and frees its slot.
* ``GET /rlrf``: the served env's id, ``max_turns``, splits and feedback cap, and the open
  sessions, so that a client knows them before its first reset.
* one lock shared by all sessions when the env says ``thread_safe = False`` (openenv steps
  every session in its own thread).

A served env that raises answers that request with an error (the session stays open and can
be reset); the server goes on.

>>> server = EnvServer("rlrf/Arithmetic-v0", port=0).start()  # doctest: +SKIP
>>> server.url  # doctest: +SKIP
'http://127.0.0.1:45123'
>>> server.stop()  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from rlrf.remote._deps import require_openenv

require_openenv("rlrf serve")

import uvicorn  # noqa: E402  (after the friendly check above)
from fastapi import FastAPI  # noqa: E402
from openenv.core.env_server.http_server import HTTPEnvServer  # noqa: E402
from openenv.core.env_server.interfaces import Environment  # noqa: E402
from openenv.core.env_server.types import (  # noqa: E402
    Action,
    ConcurrencyConfig,
    EnvironmentMetadata,
    Observation,
    State,
)
from pydantic import Field  # noqa: E402

import rlrf  # noqa: E402
from rlrf.env import (  # noqa: E402
    Message,
    RLRFEnv,
    appended_messages,
    validate_reset,
    validate_step,
)
from rlrf.errors import ConfigError, EnvError, RLRFError  # noqa: E402
from rlrf.feedback import render_feedback  # noqa: E402
from rlrf.remote.wire import (  # noqa: E402
    ACTION_FIELD,
    INFO_PATH,
    WIRE_VERSION,
    feedback_to_wire,
    json_safe,
    messages_text,
    wire_text,
)

__all__ = [
    "EnvServer",
    "Guard",
    "RLRFAction",
    "RLRFObservation",
    "RLRFState",
    "ServedEnvironment",
    "build_app",
]

log = logging.getLogger("rlrf.remote")

#: Steps' ``info`` keys that have their own observation field.
_OWN_FIELDS = ("feedback", "success", "reward_missing", "task_id", "split", "turn")


class RLRFAction(Action):
    """One turn of the policy: its response as text."""

    response: str = Field(..., description="The policy's response (one assistant turn)")


class RLRFObservation(Observation):
    """An rlrf env's reset or step result (see :mod:`rlrf.remote.wire`)."""

    messages: list[dict[str, str]] = Field(
        default_factory=list, description="The chat to continue from"
    )
    new_messages: list[dict[str, str]] | None = Field(
        default=None,
        description="The messages the env added this time (null: the env did not continue "
        "the chat; use messages)",
    )
    text: str = Field(default="", description="new_messages as plain text")
    feedback: list[dict[str, Any]] = Field(
        default_factory=list, description="Typed feedback (rlrf.Feedback.to_dict records)"
    )
    feedback_text: str = Field(default="", description="The feedback as plain text")
    terminated: bool = Field(default=False, description="The episode ended")
    truncated: bool = Field(default=False, description="The episode was cut (max_turns)")
    success: bool = Field(default=False, description="The task was solved")
    reward_missing: bool = Field(
        default=False, description="The reward could not be computed (reward is null)"
    )
    task_id: str | None = Field(default=None, description="The episode's task")
    split: str | None = Field(default=None, description="The task's split")
    turn: int = Field(default=0, description="Turns played in this episode")
    info: dict[str, Any] = Field(default_factory=dict, description="The rest of the env's info")


class RLRFState(State):
    """A session's state: the env, its task and turn."""

    env_id: str = ""
    task_id: str | None = None
    turn: int = 0


def _wire_messages(messages: Any) -> list[dict[str, str]]:
    return [{"role": m["role"], "content": wire_text(m["content"])} for m in messages]


class ServedEnvironment(Environment):
    """One session's env: an :class:`~rlrf.RLRFEnv` behind OpenEnv's ``Environment`` API.

    ``reset(seed=, options=)`` (``task_id=`` and ``split=`` may also be given directly)
    and ``step(RLRFAction)`` return :class:`RLRFObservation`. What the env returns is checked
    with :func:`rlrf.env.validate_reset` / :func:`~rlrf.env.validate_step`; an exception
    becomes an :class:`~rlrf.EnvError` naming the env and the call.
    """

    SUPPORTS_CONCURRENT_SESSIONS = True  # every session gets its own instance

    def __init__(self, env: RLRFEnv, lock: threading.Lock | None = None) -> None:
        super().__init__()
        self._env = env
        self._lock = lock if lock is not None else contextlib.nullcontext()
        self._chat: list[Message] = []
        self._task_id: str | None = None
        self._turn = 0
        self._episode_id: str | None = None
        self._steps = 0

    @property
    def env(self) -> RLRFEnv:
        """The rlrf env this session steps."""
        return self._env

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            with self._lock:
                return fn()
        except RLRFError:
            log.warning("%s.%s failed", self._env.env_id, what, exc_info=True)
            raise
        except Exception as e:
            log.warning("%s.%s raised", self._env.env_id, what, exc_info=True)
            raise EnvError(f"{self._env.env_id}.{what} raised {type(e).__name__}: {e}") from e

    def reset(  # type: ignore[override]
        self,
        seed: int | None = None,
        episode_id: str | None = None,
        options: dict[str, Any] | None = None,
        task_id: str | None = None,
        split: str | None = None,
    ) -> RLRFObservation:
        """Start an episode; the same seed picks the same task, as in-process."""
        name = self._env.env_id
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise EnvError(f"{name}.reset: seed must be a non-negative integer, got {seed!r}")
        if options is not None and not isinstance(options, dict):
            raise EnvError(f"{name}.reset: options must be an object, got {options!r:.80}")
        opts = dict(options or {})
        if task_id is not None:
            opts["task_id"] = task_id
        if split is not None:
            opts["split"] = split
        shown = f"reset(seed={seed}" + (f", options={opts}" if opts else "") + ")"
        result = self._call(shown, lambda: self._env.reset(seed=seed, options=opts or None))
        chat, info = validate_reset(result, f"{name}.{shown}")
        self._chat, self._turn, self._steps = list(chat), 0, 0
        self._episode_id = episode_id
        task = info.get("task_id")
        self._task_id = None if task is None else str(task)
        rest = {k: v for k, v in info.items() if k not in _OWN_FIELDS}
        return RLRFObservation(
            messages=_wire_messages(chat),
            new_messages=_wire_messages(chat),
            text=wire_text(messages_text(chat)),
            task_id=self._task_id,
            split=json_safe(info.get("split")),
            info=json_safe(rest),
            metadata={"rlrf_wire": WIRE_VERSION, "env_id": name},
        )

    def step(  # type: ignore[override]
        self, action: RLRFAction, timeout_s: float | None = None, **kwargs: Any
    ) -> RLRFObservation:
        """Submit a response; the reward is ``None`` when missing, never a made-up 0."""
        name = self._env.env_id
        response = action.response
        where = f"step (turn {self._turn + 1})"
        started = time.perf_counter()
        result = self._call(where, lambda: self._env.step(response))
        env_s = time.perf_counter() - started
        r = validate_step(result, f"{name}.{where}")
        added = appended_messages(self._chat, response, r.observation)
        self._chat = list(r.observation)
        self._turn += 1
        self._steps += 1
        rest = {k: v for k, v in r.info.items() if k not in _OWN_FIELDS}
        return RLRFObservation(
            done=r.terminated or r.truncated,
            reward=None if r.reward_missing else r.reward,
            messages=_wire_messages(r.observation),
            new_messages=None if added is None else _wire_messages(added),
            text=wire_text(messages_text(added or ())),
            feedback=feedback_to_wire(r.feedback),
            feedback_text=wire_text(render_feedback(r.feedback, max_chars=None)),
            terminated=r.terminated,
            truncated=r.truncated,
            success=r.success,
            reward_missing=r.reward_missing,
            task_id=self._task_id,
            turn=self._turn,
            info=json_safe(rest),
            # how long env.step took here, so a client can split its round trip (benchmarks)
            metadata={"rlrf_wire": WIRE_VERSION, "env_id": name, "env_step_s": env_s},
        )

    @property
    def state(self) -> RLRFState:
        """The session's episode id, step count, task and turn."""
        return RLRFState(
            episode_id=self._episode_id,
            step_count=self._steps,
            env_id=self._env.env_id,
            task_id=self._task_id,
            turn=self._turn,
        )

    def get_metadata(self) -> EnvironmentMetadata:
        """The env's id and what it is (its registered description, else its docstring)."""
        description = ""
        with contextlib.suppress(RLRFError):
            description = rlrf.spec(self._env.env_id).description
        if not description:
            doc = (type(self._env).__doc__ or "").strip()
            description = doc.splitlines()[0] if doc else ""
        return EnvironmentMetadata(
            name=self._env.env_id, description=description, version=rlrf.__version__
        )

    def close(self) -> None:
        """Close the rlrf env (its sandbox, its clients)."""
        self._env.close()


# ---- the guard: auth, body size, idle WebSocket sessions -----------------------------------

_Scope = MutableMapping[str, Any]
_Message = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[_Message]]
_Send = Callable[[_Message], Awaitable[None]]


class Guard:
    """ASGI layer in front of openenv's app: bearer token, body cap, WebSocket idle timeout.

    Args:
        app: The ASGI app to protect.
        token: When set, every request but ``GET /health`` needs ``Authorization: Bearer
            TOKEN`` (HTTP: 401 otherwise; WebSocket: the handshake is refused, HTTP 403).
        max_body_bytes: HTTP request bodies above this get 413 without reaching the app.
        idle_timeout_s: A WebSocket whose client sends nothing for this long is closed (code
            1001), which ends its session and frees its env.

    """

    def __init__(
        self,
        app: Callable[[_Scope, _Receive, _Send], Awaitable[None]],
        *,
        token: str | None,
        max_body_bytes: int,
        idle_timeout_s: float | None,
    ) -> None:
        self.app = app
        self.token = token
        self.max_body_bytes = max_body_bytes
        self.idle_timeout_s = idle_timeout_s

    def _authorized(self, scope: _Scope) -> bool:
        if not self.token:
            return True
        if scope["type"] == "http" and scope.get("path") == "/health":
            return True  # a load balancer may probe it; it says nothing but "healthy"
        for name, value in scope.get("headers") or ():
            if name.lower() == b"authorization":
                scheme, _, given = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer":
                    return hmac.compare_digest(given.strip().encode(), self.token.encode())
        return False

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        """Dispatch one ASGI connection."""
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _reply(self, send: _Send, status: int, detail: str, headers: list[Any]) -> None:
        body = json.dumps({"detail": detail}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    *headers,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _http(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if not self._authorized(scope):
            await self._reply(
                send,
                401,
                "this server requires a bearer token: send 'Authorization: Bearer <token>' "
                "(rlrf clients read it from the RLRF_SERVE_TOKEN environment variable)",
                [(b"www-authenticate", b"Bearer")],
            )
            return
        too_big = (
            f"request body over the server's limit of {self.max_body_bytes} bytes "
            "(rlrf serve --max-message-bytes)"
        )
        for name, value in scope.get("headers") or ():
            if name.lower() == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_body_bytes:
                    await self._reply(send, 413, too_big, [(b"connection", b"close")])
                    return
        # Read the body under the cap before the app sees it (chunked bodies declare no size).
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await self._reply(send, 413, too_big, [(b"connection", b"close")])
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> _Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _websocket(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if not self._authorized(scope):
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008, "reason": "bearer token required"})
            return
        closed = False

        async def guarded_send(message: _Message) -> None:
            if closed:
                return  # the guard closed the socket already; the app's own close is moot
            await send(message)

        async def guarded_receive() -> _Message:
            nonlocal closed
            if self.idle_timeout_s is None or closed:
                return await receive()
            try:
                return await asyncio.wait_for(receive(), self.idle_timeout_s)
            except asyncio.TimeoutError:
                closed = True
                with contextlib.suppress(Exception):
                    await send({"type": "websocket.close", "code": 1001, "reason": "idle"})
                return {"type": "websocket.disconnect", "code": 1001}

        await self.app(scope, guarded_receive, guarded_send)


# ---- the app and the server -----------------------------------------------------------------


def build_app(
    env_id: str,
    env_kwargs: Mapping[str, Any] | None = None,
    *,
    max_sessions: int = 64,
    idle_timeout_s: float | None = 300.0,
    max_message_bytes: int = 4 * 2**20,
    token: str | None = None,
) -> tuple[Guard, HTTPEnvServer]:
    """The ASGI app serving ``rlrf.make(env_id, **env_kwargs)``, and openenv's server in it.

    The env is made once here (bad ids or kwargs fail now, not at the first session); each
    session gets its own :meth:`~rlrf.RLRFEnv.spawn` of it.
    """
    if not isinstance(max_sessions, int) or max_sessions < 1:
        raise ConfigError(f"max_sessions must be a positive integer, got {max_sessions!r}")
    if idle_timeout_s is not None and not (idle_timeout_s > 0 and math.isfinite(idle_timeout_s)):
        raise ConfigError(f"idle_timeout_s must be a positive number, got {idle_timeout_s!r}")
    if max_message_bytes < 1024:
        raise ConfigError(f"max_message_bytes must be at least 1024, got {max_message_bytes!r}")
    prototype = rlrf.make(env_id, **dict(env_kwargs or {}))
    lock = None if getattr(prototype, "thread_safe", True) else threading.Lock()

    def new_session() -> ServedEnvironment:
        return ServedEnvironment(prototype.spawn(), lock)

    app = FastAPI(
        title=f"rlrf: {prototype.env_id}",
        description="An rlrf environment on OpenEnv's wire protocol (rlrf serve).",
        version=rlrf.__version__,
    )
    http = HTTPEnvServer(
        new_session,
        RLRFAction,
        RLRFObservation,
        concurrency_config=ConcurrencyConfig(max_concurrent_envs=max_sessions),
        env_name=prototype.env_id.replace("/", "_"),
        state_cls=RLRFState,
    )
    http.register_routes(app, mode="simulation")
    info = {
        "rlrf": rlrf.__version__,
        "wire_version": WIRE_VERSION,
        "env_id": prototype.env_id,
        "max_turns": int(prototype.max_turns),
        "splits": list(getattr(prototype, "splits", ())),
        "feedback_max_chars": int(prototype.feedback_max_chars),
        "action_field": ACTION_FIELD,
        "max_sessions": max_sessions,
        "idle_timeout_s": idle_timeout_s,
        "max_message_bytes": max_message_bytes,
    }

    @app.get(INFO_PATH, tags=["rlrf"], summary="The served rlrf env and the open sessions")
    def rlrf_info() -> dict[str, Any]:
        return {**info, "active_sessions": http.active_sessions}

    guard = Guard(app, token=token, max_body_bytes=max_message_bytes, idle_timeout_s=idle_timeout_s)
    return guard, http


def _bind(host: str, port: int) -> socket.socket:
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        # Listening now queues early clients until uvicorn accepts (the URL is printed first).
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise ConfigError(
            f"rlrf serve: cannot listen on {host}:{port} ({e}); pick another --port "
            "(0 picks a free one)"
        ) from e
    return sock


class EnvServer:
    """``rlrf serve`` as an object: serve a registered env in this process.

    Args:
        env_id: A registered id (built-in or plugin).
        env_kwargs: Keyword arguments for ``rlrf.make``.
        host: The address to listen on (default loopback only).
        port: The port; 0 picks a free one (see :attr:`url`).
        max_sessions: Sessions (WebSocket connections, one env each) open at once; one more
            is refused with openenv's ``CAPACITY_REACHED`` error.
        idle_timeout_s: Close a session whose client sent nothing for this long.
        max_message_bytes: The largest WebSocket message or HTTP body accepted.
        token: Require ``Authorization: Bearer TOKEN`` (``rlrf serve`` reads it from the
            ``RLRF_SERVE_TOKEN`` environment variable, never from a flag).
        ping_interval_s: WebSocket keepalive: a client that answers no ping within this
            long (one that stopped reading) is disconnected.
        log_level: uvicorn's log level.

    Use :meth:`start` (a background thread; :meth:`stop` ends it) or :meth:`serve_forever`.

    """

    def __init__(
        self,
        env_id: str,
        env_kwargs: Mapping[str, Any] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        max_sessions: int = 64,
        idle_timeout_s: float | None = 300.0,
        max_message_bytes: int = 4 * 2**20,
        token: str | None = None,
        ping_interval_s: float = 20.0,
        log_level: str = "warning",
    ) -> None:
        self.app, self._http = build_app(
            env_id,
            env_kwargs,
            max_sessions=max_sessions,
            idle_timeout_s=idle_timeout_s,
            max_message_bytes=max_message_bytes,
            token=token,
        )
        self.env_id = env_id
        self.max_sessions = max_sessions
        self._socket = _bind(host, port)
        self._host = host
        self._port = int(self._socket.getsockname()[1])  # still known after stop()
        config = uvicorn.Config(
            self.app,
            log_level=log_level,
            ws_max_size=max_message_bytes,
            ws_ping_interval=ping_interval_s,
            ws_ping_timeout=ping_interval_s,
            # Connections beyond the sessions (health probes, refused sessions) get some
            # room; past it uvicorn answers 503 instead of holding more sockets open.
            limit_concurrency=2 * max_sessions + 32,
            timeout_keep_alive=5,
            lifespan="on",
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port listened on."""
        return self._port

    @property
    def url(self) -> str:
        """``http://host:port`` (the WebSocket sessions are at ``ws://host:port/ws``)."""
        host = self._host if ":" not in self._host else f"[{self._host}]"
        return f"http://{host}:{self.port}"

    @property
    def active_sessions(self) -> int:
        """Sessions open now."""
        return self._http.active_sessions

    def serve_forever(self) -> None:
        """Serve in this thread until interrupted (Ctrl-C stops it cleanly)."""
        self._server.run(sockets=[self._socket])

    def start(self, timeout_s: float = 30.0) -> EnvServer:
        """Serve in a background thread; return once it accepts connections."""
        if self._thread is not None:
            raise RuntimeError(f"the server of {self.env_id} was started already")
        self._thread = threading.Thread(
            target=self.serve_forever, name=f"rlrf-serve:{self.env_id}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise EnvError(f"rlrf serve {self.env_id}: the server did not start on {self.url}")
            time.sleep(0.01)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop serving (open sessions are closed) and release the port."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                self._server.force_exit = True
                self._thread.join(timeout_s)
        with contextlib.suppress(OSError):
            self._socket.close()

    def __enter__(self) -> EnvServer:
        return self if self._thread is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
