"""rlrf serve against faulty and hostile clients: each test ends with the server healthy, serving,
and holding no leftover session. Every loop is bounded in count and time; all traffic stays on
127.0.0.1.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import time
import urllib.error
import urllib.request

import pytest

pytest.importorskip(
    "openenv", reason="rlrf.remote needs the serve extra: pip install 'rlrf[serve]'"
)

from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from rlrf.errors import RemoteEnvError
from rlrf.remote import OpenEnvEnv
from rlrf.remote.server import EnvServer

LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def server():
    with EnvServer(
        "rlrf/Arithmetic-v0",
        max_sessions=4,
        idle_timeout_s=1.0,
        max_message_bytes=LIMIT,
        ping_interval_s=1.0,
    ) as s:
        yield s


def _host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def _settled(server: EnvServer, timeout_s: float = 10.0) -> None:
    """Wait until the server holds no session, then check that it still serves one."""
    deadline = time.monotonic() + timeout_s
    while server.active_sessions and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.active_sessions == 0
    env = OpenEnvEnv(server.url)
    env.reset(seed=0)
    assert env.step("<answer>1</answer>")[2] is True
    env.close()
    deadline = time.monotonic() + timeout_s
    while server.active_sessions and time.monotonic() < deadline:
        time.sleep(0.05)


def _raw_ws(url: str, headers: str = "") -> socket.socket:
    """A WebSocket handshake on a bare socket; the reply is left unread."""
    sock = socket.create_connection(_host_port(url), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: {url[7:]}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n{headers}\r\n"
        ).encode()
    )
    return sock


def _frame(payload: bytes, opcode: int = 1) -> bytes:
    """One masked client frame."""
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 2**16:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _ws(url: str, **kwargs):
    return connect("ws" + url[4:] + "/ws", open_timeout=10, close_timeout=2, **kwargs)


def test_bearer_token_required_when_set():
    with EnvServer("rlrf/Arithmetic-v0", token="t0ken") as s:
        assert json.loads(urllib.request.urlopen(s.url + "/health", timeout=10).read())
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "t0ken"}):
            request = urllib.request.Request(s.url + "/schema", headers=headers)
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(request, timeout=10)
            assert e.value.code == 401
        with pytest.raises(InvalidStatus) as e:
            _ws(s.url)
        assert e.value.response.status_code == 403
        assert s.active_sessions == 0
        with _ws(s.url, additional_headers={"Authorization": "Bearer t0ken"}) as ws:
            ws.send(json.dumps({"type": "reset", "data": {"seed": 0}}))
            assert json.loads(ws.recv(timeout=10))["type"] == "observation"
        env = OpenEnvEnv(s.url, token="t0ken")
        env.reset(seed=1)
        env.close()


def test_garbage_messages_get_errors_not_crashes(server):
    with _ws(server.url) as ws:
        for garbage in ("{not json", '{"type": "step", "data": "x"}', '{"type": "nope"}'):
            ws.send(garbage)
            reply = json.loads(ws.recv(timeout=10))
            assert reply["type"] == "error", garbage
        ws.send(json.dumps({"type": "reset", "data": {"seed": "seven"}}))
        assert (
            "seed must be a non-negative integer"
            in json.loads(ws.recv(timeout=10))["data"]["message"]
        )
        ws.send(json.dumps({"type": "reset", "data": {"seed": 0}}))  # the session goes on
        assert json.loads(ws.recv(timeout=10))["type"] == "observation"
    for garbage in ("[1, 2]", "null", "[" * 5000 + "]" * 5000):
        with _ws(server.url) as ws:
            ws.send(garbage)
            with pytest.raises(ConnectionClosed):
                for _ in range(3):  # an error reply, then the server closes
                    ws.recv(timeout=10)
    with _ws(server.url) as ws:
        ws.send(b"\x00\xff binary")
        with pytest.raises(ConnectionClosed):
            for _ in range(3):
                ws.recv(timeout=10)
    _settled(server)


def test_oversized_messages_are_refused(server):
    with _ws(server.url, max_size=None) as ws:
        ws.send(json.dumps({"type": "step", "data": {"response": "a" * (2 * LIMIT)}}))
        with pytest.raises(ConnectionClosed) as e:
            ws.recv(timeout=10)
        assert e.value.rcvd is not None and e.value.rcvd.code == 1009  # message too big
    body = json.dumps({"seed": 0, "padding": "x" * (2 * LIMIT)}).encode()
    request = urllib.request.Request(
        server.url + "/reset", data=body, headers={"Content-Type": "application/json"}
    )
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(request, timeout=10)
    assert e.value.code == 413
    _settled(server)


def test_client_that_never_reads(server):
    sock = _raw_ws(server.url)
    try:
        message = json.dumps({"type": "reset", "data": {"seed": 0}}).encode()
        sock.sendall(b"".join(_frame(message) for _ in range(200)))  # never reads a reply
        deadline = time.monotonic() + 2
        while not server.active_sessions and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.active_sessions == 1
        _settled(server)  # closed by the idle timeout / unanswered pings, not kept forever
    finally:
        sock.close()


def test_many_opened_and_abandoned_sessions(server):
    socks = []
    try:
        for _ in range(300):
            socks.append(_raw_ws(server.url))
            assert server.active_sessions <= server.max_sessions
        time.sleep(0.5)
        assert server.active_sessions <= server.max_sessions
    finally:
        for sock in socks:  # dropped without a close frame
            sock.close()
    _settled(server)
    # sessions that reset and were then abandoned mid-episode
    socks = []
    try:
        for seed in range(4):
            sock = _raw_ws(server.url)
            sock.sendall(_frame(json.dumps({"type": "reset", "data": {"seed": seed}}).encode()))
            socks.append(sock)
    finally:
        for sock in socks:
            sock.close()
    _settled(server)


def test_idle_session_is_reaped(server):
    env = OpenEnvEnv(server.url)
    env.reset(seed=0)
    assert server.active_sessions == 1
    deadline = time.monotonic() + 10
    while server.active_sessions and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.active_sessions == 0
    with pytest.raises(RemoteEnvError, match=r"lost the session"):
        env.step("<answer>1</answer>")
    env.reset(seed=0)  # a new session
    assert env.step("<answer>1</answer>")[2] is True
    env.close()
    _settled(server)
