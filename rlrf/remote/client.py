"""An :class:`~rlrf.RLRFEnv` over any OpenEnv server: ``rlrf.make("openenv:http://host:port")``.

:class:`OpenEnvEnv` is a Gymnasium-style env; each instance holds one session (a WebSocket of
openenv's ``GenericEnvClient``), opened at its first ``reset`` and kept for later ones, so the
rollout loop's ``spawn()`` gives every running rollout its own session on the server.

* ``reset(seed=...)`` forwards the seed (and ``options`` as reset parameters); the same seed
  gives the same task where the server honours it, and :func:`rlrf.check_env` says when it
  does not.
* ``step(text)`` fills the server's action from its published schema (``GET /schema``): a
  server of ``rlrf serve`` takes the response as is; otherwise a single text field is filled
  automatically, and anything else needs ``action=`` (the field's name, or a function from the
  response to the action) plus ``action_extra=`` for the other fields.
* The observation becomes the chat: an ``rlrf serve`` server's chat as the env returned it
  (see :mod:`rlrf.remote.wire`); another server's observation text as a user message.
* Feedback: the typed feedback of an ``rlrf serve`` server, unchanged; otherwise the
  observation's ``metadata["feedback"]`` (or ``feedback`` field), else the observation's text.
* A ``null``, NaN or non-numeric reward is a missing reward: ``info["reward_missing"]`` is set
  (and the reason in ``info["reward_missing_reason"]``), never a made-up 0 to train on.

Several servers for one env: ``OpenEnvEnv(["http://a:8000", "http://b:8000"])`` (or
``rlrf.make("openenv:http://a:8000,http://b:8000")``); each instance opens its session on the
server where this process has the fewest open, so spawned rollouts spread over them.

The bearer token of a server started with ``RLRF_SERVE_TOKEN`` is read from the same
environment variable (or given as ``token=``).
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import math
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from rlrf.env import Message, RLRFEnv
from rlrf.errors import ConfigError, RemoteEnvError
from rlrf.feedback import Feedback, FeedbackKind, truncate_text
from rlrf.registration import REMOTE_PREFIX
from rlrf.remote._deps import require_openenv
from rlrf.remote.wire import (
    ACTION_FIELD,
    INFO_PATH,
    TOKEN_ENV,
    feedback_from_wire,
    json_safe,
    wire_text,
)

__all__ = ["PREFIX", "OpenEnvEnv", "ServerInfo", "StepTiming", "make_remote", "parse_urls"]

#: The ``rlrf.make`` prefix naming OpenEnv servers instead of a registered id.
PREFIX = REMOTE_PREFIX  # one definition, the registry's

_DEFAULT_MAX_TURNS = 16

# Sessions this process holds open, by server URL: a new session goes to the least loaded.
_open_sessions: Counter[str] = Counter()
_open_lock = threading.Lock()


def parse_urls(urls: str | Sequence[str]) -> tuple[str, ...]:
    """Normalize one URL, a comma-separated list, or a sequence of them to ``http(s)://`` bases.

    ``ws://`` and ``wss://`` are accepted and mapped to ``http://`` / ``https://``.
    """
    items = urls.split(",") if isinstance(urls, str) else list(urls)
    out: list[str] = []
    for raw in items:
        if not isinstance(raw, str) or not raw.strip():
            raise ConfigError(
                f"OpenEnvEnv: bad server URL {raw!r}; give 'http://host:port' (several "
                "separated by commas)"
            )
        url = raw.strip().rstrip("/")
        for old, new in (("ws://", "http://"), ("wss://", "https://")):
            if url.startswith(old):
                url = new + url[len(old) :]
        if url.endswith("/ws"):
            url = url[: -len("/ws")]
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"OpenEnvEnv: {raw.strip()!r} is not a server URL; expected "
                "'http://host:port' (or ws://, https://, wss://)"
            )
        out.append(url)
    if not out:
        raise ConfigError("OpenEnvEnv: no server URL given; expected 'http://host:port'")
    return tuple(out)


@dataclass(frozen=True)
class ServerInfo:
    """What a server published: its action and observation schemas, and rlrf's ``/rlrf``."""

    url: str
    action_schema: dict[str, Any]
    observation_schema: dict[str, Any]
    rlrf: dict[str, Any] | None = field(default=None)

    @property
    def is_rlrf(self) -> bool:
        """Whether ``rlrf serve`` runs there (the wire of :mod:`rlrf.remote.wire`)."""
        return self.rlrf is not None


def _is_loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _get_json(url: str, path: str, headers: Mapping[str, str], timeout: float) -> Any:
    """``GET url+path`` as JSON; a one-line :class:`RemoteEnvError` when that is not what comes."""
    expected = "an OpenEnv server (GET /schema answering its action and observation schemas)"
    request = urllib.request.Request(url + path, headers={"Accept": "application/json", **headers})
    handlers = [urllib.request.ProxyHandler({})] if _is_loopback(url) else []
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(request, timeout=timeout) as reply:
            body = reply.read(16 * 2**20)
            kind = reply.headers.get("content-type", "")
    except urllib.error.HTTPError as e:
        if e.code == 401:
            raise RemoteEnvError(
                f"{url}: the server requires a bearer token (HTTP 401 on GET {path}); set "
                f"{TOKEN_ENV} to its token, or pass token="
            ) from None
        if e.code == 404 and path == INFO_PATH:
            return None  # not rlrf serve: a plain OpenEnv server
        raise RemoteEnvError(
            f"{url}: GET {path} answered HTTP {e.code} {e.reason}; expected {expected}"
        ) from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        reason = getattr(e, "reason", e)
        raise RemoteEnvError(
            f"{url}: nothing answered GET {path} ({type(reason).__name__}: {reason}); expected "
            f"{expected}; is the server running (rlrf serve ID --port N)?"
        ) from None
    try:
        return json.loads(body)
    except ValueError:
        shown = body[:60].decode("utf-8", "replace").replace("\n", " ")
        raise RemoteEnvError(
            f"{url}: GET {path} answered {kind or 'no content type'} ({shown!r}), not JSON; "
            f"expected {expected}"
        ) from None


def probe(url: str, headers: Mapping[str, str], timeout: float) -> ServerInfo:
    """Ask ``url`` for its schemas (and ``/rlrf``); :class:`RemoteEnvError` if no OpenEnv server."""
    schemas = _get_json(url, "/schema", headers, timeout)
    if not (
        isinstance(schemas, dict)
        and isinstance(schemas.get("action"), dict)
        and isinstance(schemas.get("observation"), dict)
    ):
        shown = json.dumps(schemas)[:80]
        raise RemoteEnvError(
            f"{url}: GET /schema answered {shown}, which has no 'action' and 'observation' "
            "schemas; expected an OpenEnv server"
        )
    info = _get_json(url, INFO_PATH, headers, timeout)
    rlrf_info = info if isinstance(info, dict) and "wire_version" in info else None
    return ServerInfo(url, schemas["action"], schemas["observation"], rlrf_info)


def _is_text(prop: Any) -> bool:
    if not isinstance(prop, dict):
        return False
    if prop.get("type") == "string":
        return True
    return any(_is_text(p) for p in prop.get("anyOf", ()) + prop.get("oneOf", ()))


def _describe_schema(schema: Mapping[str, Any]) -> str:
    props = schema.get("properties", {})
    required = set(schema.get("required", ()))
    fields = []
    for name, prop in props.items():
        if name == "metadata":
            continue
        kind = prop.get("type") or "/".join(
            str(p.get("type", "?")) for p in prop.get("anyOf", ()) if isinstance(p, dict)
        )
        fields.append(f"{name}: {kind or '?'}" + (" (required)" if name in required else ""))
    return f"{schema.get('title', 'Action')} {{{', '.join(fields) or 'no fields'}}}"


def _action_builder(
    info: ServerInfo,
    action: str | Callable[[str], Mapping[str, Any]] | None,
    extra: Mapping[str, Any],
) -> Callable[[str], dict[str, Any]]:
    """How a response becomes the server's action, decided once from its schema."""
    if callable(action):
        return lambda response: {**extra, **dict(action(response))}
    schema = info.action_schema
    props = {k: v for k, v in schema.get("properties", {}).items() if k != "metadata"}
    hint = (
        "pass action='<field>' (and action_extra={...} for the other required fields) or "
        "action=<a function from the response to the action dict>"
    )
    if action is None:
        if info.is_rlrf:
            action = ACTION_FIELD
        else:
            text = [k for k, v in props.items() if _is_text(v) and k not in extra]
            if len(text) != 1:
                which = "no text field" if not text else f"several text fields ({', '.join(text)})"
                raise ConfigError(
                    f"OpenEnvEnv({info.url}): the server's action has {which}, so the response "
                    f"has no obvious place; its schema: {_describe_schema(schema)}; {hint}"
                )
            action = text[0]
    if not isinstance(action, str):
        raise ConfigError(
            f"OpenEnvEnv({info.url}): action must be a field name or a callable, got "
            f"{type(action).__name__}"
        )
    if action not in props:
        raise ConfigError(
            f"OpenEnvEnv({info.url}): the server's action has no field {action!r}; its schema: "
            f"{_describe_schema(schema)}; {hint}"
        )
    missing = [
        k for k in schema.get("required", ()) if k not in (action, "metadata") and k not in extra
    ]
    if missing:
        raise ConfigError(
            f"OpenEnvEnv({info.url}): the server's action also requires {', '.join(missing)}; "
            f"its schema: {_describe_schema(schema)}; give them in action_extra={{...}}"
        )
    field_name = action
    return lambda response: {**extra, field_name: response}


class _ServerFull(RemoteEnvError):
    """The server refused a new session: it has ``max_sessions`` open."""


def _reward(value: Any) -> tuple[float | None, str | None]:
    """The reward, or ``None`` and why it is missing."""
    if value is None:
        return None, "the server sent reward null"
    if isinstance(value, bool):
        return float(value), None
    if not isinstance(value, (int, float)):
        return None, f"the server sent a non-numeric reward {value!r:.40}"
    if not math.isfinite(float(value)):
        return None, f"the server sent reward {value}"
    return float(value), None


@dataclass(frozen=True)
class StepTiming:
    """Where the last ``step`` spent its time (``env_s`` is None on servers that do not say)."""

    round_trip_s: float
    """From sending the action to having the observation, as this client saw it."""

    env_s: float | None
    """The server's ``env.step`` alone (``rlrf serve`` reports it); the rest is the wire."""


class OpenEnvEnv(RLRFEnv):
    """An rlrf env whose episodes run on an OpenEnv server (``rlrf serve`` or any other).

    Args:
        url: ``"http://host:port"`` (``ws://`` also accepted), several separated by commas,
            or a sequence of them; every session goes to the least loaded one.
        action: Where the response goes in the server's action: a field name, or a function
            from the response to the action dict. Default: ``rlrf serve``'s ``response``, or
            the action schema's only text field.
        action_extra: Fixed values for the action's other fields.
        observation: How another server's observation becomes text: a field name, or a
            function of the observation dict. Default: its only text field, else its text
            fields as ``name: value`` lines, else the observation as JSON.
        max_turns: Turns before the episode is truncated (default: the served rlrf env's,
            else 16).
        token: The server's bearer token (default: the ``RLRF_SERVE_TOKEN`` environment
            variable, if set).
        connect_timeout_s: Seconds to wait for a server to answer or accept a session.
        message_timeout_s: Seconds to wait for one reset or step to come back.
        feedback_from_text: For servers other than ``rlrf serve`` that send no feedback field:
            the observation text after a step becomes ``OTHER`` feedback.

    Raises:
        RemoteEnvError: A server did not answer, or answered as no OpenEnv server would.
        ConfigError: The response has no obvious place in the server's action.

    """

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        action: str | Callable[[str], Mapping[str, Any]] | None = None,
        action_extra: Mapping[str, Any] | None = None,
        observation: str | Callable[[Mapping[str, Any]], str] | None = None,
        max_turns: int | None = None,
        token: str | None = None,
        connect_timeout_s: float = 10.0,
        message_timeout_s: float = 300.0,
        feedback_from_text: bool = True,
        _probed: Mapping[str, ServerInfo] | None = None,
    ) -> None:
        self.urls = parse_urls(url)
        self._token = token if token is not None else os.environ.get(TOKEN_ENV) or None
        self._headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        self._connect_timeout = float(connect_timeout_s)
        self._message_timeout = float(message_timeout_s)
        self._probed = dict(_probed or {})
        for u in self.urls:
            if u not in self._probed:
                self._probed[u] = probe(u, self._headers, self._connect_timeout)
        first = self._probed[self.urls[0]]
        for u in self.urls[1:]:
            other = self._probed[u]
            if (other.rlrf or {}).get("env_id") != (first.rlrf or {}).get("env_id") or (
                other.action_schema != first.action_schema
            ):
                raise RemoteEnvError(
                    f"OpenEnvEnv: {u} serves another env than {first.url} (different action "
                    "schema or rlrf env id); give servers of the same env"
                )
        self._rlrf_id = PREFIX + ",".join(self.urls)
        extra = dict(action_extra or {})
        self._action = {u: _action_builder(self._probed[u], action, extra) for u in self.urls}
        self._observation = observation
        self._feedback_from_text = feedback_from_text
        served = first.rlrf or {}
        self.max_turns = int(max_turns or served.get("max_turns") or _DEFAULT_MAX_TURNS)
        self.feedback_max_chars = int(served.get("feedback_max_chars") or 2000)
        if served.get("splits"):
            self.splits = tuple(served["splits"])
        self._client: Any = None
        self.last_step_timing: StepTiming | None = None
        self._socket: Any = None
        self._url: str | None = None
        self._chat: list[Message] = []
        self._turn = 0
        self._task_id = None

    # ---- sessions ---------------------------------------------------------------------------

    @property
    def server_url(self) -> str | None:
        """The server holding this instance's session (``None`` before the first reset)."""
        return self._url

    @property
    def server_info(self) -> ServerInfo:
        """What the (first) server published about itself."""
        return self._probed[self.urls[0]]

    def spawn(self) -> OpenEnvEnv:
        """Another instance with the same arguments; it opens its own session on first reset."""
        args, kwargs = self.__dict__.get("_rlrf_init_args", ((), {}))
        twin = type(self)(*args, **{**kwargs, "_probed": self._probed})
        twin._rlrf_id = self._rlrf_id
        if "max_turns" in self.__dict__:
            twin.max_turns = self.max_turns
        return twin

    def _connect(self) -> Any:
        if self._client is not None:
            return self._client
        require_openenv("OpenEnvEnv")
        from openenv.core.generic_client import GenericEnvClient

        with _open_lock:
            url = min(self.urls, key=lambda u: (_open_sessions[u], self.urls.index(u)))
            _open_sessions[url] += 1
        client = GenericEnvClient(
            base_url=url,
            connect_timeout_s=self._connect_timeout,
            message_timeout_s=self._message_timeout,
            headers=dict(self._headers) or None,
        ).sync()
        try:
            client.connect()
        except Exception as e:
            self._release(client, url)
            raise RemoteEnvError(
                f"{self.env_id}: could not open a session on {url} ({type(e).__name__}: {e}); "
                "is the server running and reachable?"
            ) from None
        self._client, self._url = client, url
        return client

    def _release(self, client: Any, url: str) -> None:
        with suppress(Exception):
            client.close()
        with _open_lock:
            _open_sessions[url] -= 1
            if _open_sessions[url] <= 0:
                del _open_sessions[url]

    def _drop(self) -> None:
        client, url = self._client, self._url
        self._client, self._url = None, None
        if client is not None and url is not None:
            self._release(client, url)

    def _call(self, what: str, fn: Callable[[Any], Any]) -> Any:
        client = self._connect()
        url = self._url
        try:
            return fn(client)
        except RuntimeError as e:
            text = str(e)
            if text.startswith("Server error:"):  # openenv's client: the server answered an error
                if "CAPACITY_REACHED" in text:
                    self._drop()
                    raise _ServerFull(
                        f"{self.env_id}: {url} is full ({text.removeprefix('Server error: ')}); "
                        "start it with a larger --max-sessions, or add servers"
                    ) from None
                raise RemoteEnvError(
                    f"{self.env_id}: {what} failed on {url}: {text.removeprefix('Server error: ')}"
                ) from None
            self._drop()
            raise RemoteEnvError(f"{self.env_id}: {what} on {url} failed: {e}") from e
        except Exception as e:
            # The session is lost (closed, timed out, reset): the next reset opens a new one.
            self._drop()
            raise RemoteEnvError(
                f"{self.env_id}: {what} on {url} lost the session ({type(e).__name__}: {e})"
            ) from None

    def _current_socket(self) -> Any:
        # openenv's client keeps its WebSocket private and silently reconnects when the
        # server closed it; which socket carried the reset tells whether the session is ours.
        return getattr(getattr(self._client, "async_client", None), "_ws", None)

    def _same_socket(self) -> bool:
        ws = self._current_socket()
        if ws is None or ws is not self._socket:
            return False
        state = getattr(ws, "state", None)
        return getattr(state, "name", "OPEN") not in ("CLOSING", "CLOSED")

    def close(self) -> None:
        """End this instance's session on the server."""
        self._drop()

    # ---- the Gymnasium API ------------------------------------------------------------------

    def _text(self, obs: Mapping[str, Any]) -> str:
        chooser = self._observation
        if callable(chooser):
            return str(chooser(obs))
        fields = {k: v for k, v in obs.items() if k != "metadata"}
        if isinstance(chooser, str):
            if chooser not in fields:
                raise RemoteEnvError(
                    f"{self.env_id}: the observation has no field {chooser!r} (it has "
                    f"{', '.join(sorted(fields)) or 'none'}); fix observation="
                )
            value = fields[chooser]
            return value if isinstance(value, str) else json.dumps(json_safe(value))
        texts = {k: v for k, v in fields.items() if isinstance(v, str)}
        if len(texts) == 1:
            return next(iter(texts.values()))
        if texts:
            return "\n".join(f"{k}: {v}" for k, v in texts.items() if v)
        return json.dumps(json_safe(fields), sort_keys=True)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[list[Message], dict[str, Any]]:
        """Start an episode on the server; ``seed`` and ``options`` are forwarded."""
        super().reset(seed=seed)
        params: dict[str, Any] = dict(options or {})
        if seed is not None:
            params["seed"] = int(seed)
        shown = f"reset(seed={seed})"
        # A full server may be closing another session right now (a rollout just ended, a
        # closed client's handshake still in flight): retry until connect_timeout_s runs out.
        deadline = time.monotonic() + self._connect_timeout
        pause = 0.02
        while True:
            try:
                result = self._call(shown, lambda c: c.reset(**params))
                break
            except _ServerFull:
                if time.monotonic() + pause > deadline:
                    raise
                time.sleep(pause)
                pause = min(2 * pause, 0.5)
        obs = result.observation if isinstance(result.observation, dict) else {}
        metadata = result.metadata or obs.get("metadata") or {}
        if self.server_info.is_rlrf:
            chat = self._chat_from(obs.get("messages"), shown)
            info = {
                **(obs.get("info") or {}),
                "task_id": obs.get("task_id"),
                "split": obs.get("split"),
                "turn": 0,
            }
        else:
            chat = [{"role": "user", "content": self._text(obs)}]
            info = {"turn": 0, "observation": obs, "metadata": metadata}
        self._chat, self._turn = chat, 0
        self._task_id = info.get("task_id")
        self._socket = self._current_socket()
        return list(chat), info

    def _chat_from(self, messages: Any, where: str) -> list[Message]:
        ok = isinstance(messages, list) and all(
            isinstance(m, dict)
            and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str)
            for m in messages
        )
        if not ok:
            raise RemoteEnvError(
                f"{self.env_id}: {where} on {self._url} sent messages that are not a chat "
                f"({messages!r:.80})"
            )
        return [{"role": m["role"], "content": m["content"]} for m in messages]

    def step(self, action: str) -> tuple[list[Message], float, bool, bool, dict[str, Any]]:
        """Send the response as the server's action; return the Gymnasium 5-tuple."""
        if not isinstance(action, str):
            raise TypeError(
                f"{self.env_id}.step expects the response as str, got {type(action).__name__}"
            )
        if self._client is None or not self._chat:
            raise RemoteEnvError(f"{self.env_id}: call reset() before step()")
        where = f"step (turn {self._turn + 1})"
        if not self._same_socket():
            url = self._url
            self._drop()
            raise RemoteEnvError(
                f"{self.env_id}: {where} lost the session on {url}: the server closed "
                "it (idle past its --idle-timeout, stopped, or restarted); reset() opens a new one"
            )
        # Sent as UTF-8: a lone surrogate (unencodable) goes as U+FFFD, or a server echoing the
        # response could not serialize its reply; the chat keeps the response as given.
        payload = self._action[self._url or self.urls[0]](wire_text(action))
        started = time.perf_counter()
        try:
            result = self._call(where, lambda c: c.step(payload))
        except RemoteEnvError:
            if self._client is not None and not self._same_socket():
                # openenv's client reconnects by itself: a fresh session knows no episode
                url = self._url
                self._drop()
                raise RemoteEnvError(
                    f"{self.env_id}: {where} lost the session on {url}: the server closed it "
                    "(idle past its --idle-timeout, stopped, or restarted); reset() opens a new one"
                ) from None
            raise
        obs = result.observation if isinstance(result.observation, dict) else {}
        metadata = result.metadata or obs.get("metadata") or {}
        env_s = metadata.get("env_step_s") if isinstance(metadata, dict) else None
        self.last_step_timing = StepTiming(
            round_trip_s=time.perf_counter() - started,
            env_s=float(env_s) if isinstance(env_s, (int, float)) else None,
        )
        reward, missing_why = _reward(result.reward)
        self._turn += 1
        done = bool(result.done)
        head = [*self._chat, {"role": "assistant", "content": action}]
        source = f"openenv:{self._url}"
        if self.server_info.is_rlrf:
            new = obs.get("new_messages")
            chat = (
                self._chat_from(obs.get("messages"), where)
                if new is None
                else head + self._chat_from(new, where)
            )
            # lossless: the served env's items come back as they were, their source included
            feedback = feedback_from_wire(obs.get("feedback"), f"{self.env_id}: {where}")
            terminated = bool(obs.get("terminated", done))
            truncated = bool(obs.get("truncated", False))
            if obs.get("reward_missing"):
                reward, missing_why = None, missing_why or "the served env's reward is missing"
            info: dict[str, Any] = {
                **(obs.get("info") or {}),
                "success": bool(obs.get("success", False)) and reward is not None,
                "task_id": obs.get("task_id"),
                "turn": self._turn,
            }
        else:
            text = self._text(obs)
            chat = head + ([{"role": "user", "content": text}] if text else [])
            raw = metadata.get("feedback", obs.get("feedback"))
            if raw is not None:
                feedback = feedback_from_wire(raw, f"{self.env_id}: {where}", source)
            elif self._feedback_from_text and text:
                feedback = (Feedback(FeedbackKind.OTHER, text, source=source),)
            else:
                feedback = ()
            terminated, truncated = done, False
            info = {"turn": self._turn, "observation": obs, "metadata": metadata}
        feedback = tuple(
            f
            if len(f.text) <= self.feedback_max_chars
            else Feedback(
                f.kind, truncate_text(f.text, self.feedback_max_chars), f.details, f.source
            )
            for f in feedback
        )
        if not (terminated or truncated) and self._turn >= self.max_turns:
            truncated = True
        info["feedback"] = feedback
        info["reward_missing"] = reward is None
        if missing_why:
            info["reward_missing_reason"] = missing_why
        self._chat = chat
        return list(chat), 0.0 if reward is None else reward, terminated, truncated, info


def make_remote(env_id: str, **kwargs: Any) -> OpenEnvEnv:
    """``rlrf.make("openenv:URL[,URL...]", **kwargs)``: an :class:`OpenEnvEnv` on those servers."""
    if not env_id.startswith(PREFIX):
        raise ConfigError(f"{env_id!r} does not start with {PREFIX!r}")
    return OpenEnvEnv(env_id[len(PREFIX) :], **kwargs)
