"""`rlrf serve`: rlrf envs on OpenEnv's wire, read by a raw client and by rlrf's client."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request

import pytest

pytest.importorskip(
    "openenv", reason="rlrf.remote needs the serve extra: pip install 'rlrf[serve]'"
)

from websockets.sync.client import connect

import rlrf
from rlrf.errors import RemoteEnvError
from rlrf.remote import OpenEnvEnv
from rlrf.remote.server import EnvServer
from tests.rlrf.remote_servers import (
    RICH_FEEDBACK,
    TEACHER_ONLY,
    register_test_envs,
)

RESPONSES = ("<answer>5</answer>", "I do not know.", "")


@pytest.fixture(scope="module")
def arithmetic():
    with EnvServer("rlrf/Arithmetic-v0", max_sessions=8) as server:
        yield server


@pytest.fixture(scope="module")
def test_envs():
    register_test_envs()


def _get(url: str, path: str) -> dict:
    with urllib.request.urlopen(url + path, timeout=10) as reply:
        return json.loads(reply.read())


def _ws(url: str):
    return connect("ws" + url[4:] + "/ws", open_timeout=10, close_timeout=2)


def _ask(ws, message: dict) -> dict:
    ws.send(json.dumps(message))
    return json.loads(ws.recv(timeout=30))


def test_raw_client_plays_served_arithmetic(arithmetic):
    """A client that knows only OpenEnv's protocol: schema, reset, a text action, the reply."""
    schema = _get(arithmetic.url, "/schema")["action"]
    fields = [k for k, v in schema["properties"].items() if v.get("type") == "string"]
    assert fields == ["response"]
    assert _get(arithmetic.url, "/health") == {"status": "healthy"}
    local = rlrf.make("rlrf/Arithmetic-v0")
    with _ws(arithmetic.url) as ws:
        for seed in range(3):
            reply = _ask(ws, {"type": "reset", "data": {"seed": seed}})
            assert reply["type"] == "observation"
            prompt, _ = local.reset(seed=seed)
            obs = reply["data"]["observation"]
            assert obs["messages"] == prompt
            assert obs["text"] == prompt[-1]["content"]
            reply = _ask(ws, {"type": "step", "data": {fields[0]: "<answer>5</answer>"}})
            data = reply["data"]
            expected = local.step_result("<answer>5</answer>")
            assert data["reward"] == expected.reward
            assert data["done"] is True
            assert data["observation"]["feedback_text"] == rlrf.render_feedback(
                expected.feedback, max_chars=None
            )
            assert data["observation"]["feedback_text"]  # a wrong answer gets feedback


def test_served_trajectories_equal_in_process(arithmetic):
    """Same seeds, same responses: same prompts, rewards, feedback and chats as in-process."""
    remote = rlrf.make(f"openenv:{arithmetic.url}")
    local = rlrf.make("rlrf/Arithmetic-v0")
    assert remote.max_turns == local.max_turns
    for seed in range(4):
        for response in RESPONSES:
            remote_prompt, remote_info = remote.reset(seed=seed)
            local_prompt, local_info = local.reset(seed=seed)
            assert remote_prompt == local_prompt
            assert remote_info["task_id"] == local_info["task_id"]
            a = rlrf.StepResult.from_step(remote.step(response))
            b = local.step_result(response)
            assert (a.observation, a.reward, a.terminated, a.truncated, a.success) == (
                b.observation,
                b.reward,
                b.terminated,
                b.truncated,
                b.success,
            )
            assert a.feedback == b.feedback  # typed, details included
    remote.close()


def test_check_env_passes_on_served_env(arithmetic):
    env = rlrf.make(f"openenv:{arithmetic.url}")
    rlrf.check_env(env)
    env.close()


def test_typed_feedback_lossless_and_teacher_only_kept_out_of_text(test_envs):
    with EnvServer("remote-test/Rich-v0", max_sessions=2) as server:
        env = OpenEnvEnv(server.url)
        assert env.max_turns == 2
        chat, _ = env.reset(seed=1)
        obs, reward, terminated, truncated, info = env.step("wrong")
        assert info["feedback"] == RICH_FEEDBACK  # every details type, unchanged
        assert not terminated and obs[-1] == {"role": "user", "content": "Try again."}
        assert all(TEACHER_ONLY not in m["content"] for m in obs)
        assert info["extra"] == {"array": [1, 2.5], "note": "kept"}
        rlrf.check_env(env)
        env.close()
        # what a plain client reads as the observation's text never holds the teacher's item
        with _ws(server.url) as ws:
            _ask(ws, {"type": "reset", "data": {"seed": 1}})
            data = _ask(ws, {"type": "step", "data": {"response": "wrong"}})["data"]["observation"]
            assert TEACHER_ONLY not in json.dumps(data["messages"])
            assert TEACHER_ONLY not in data["text"] and data["text"] == "Try again."
            assert TEACHER_ONLY in data["feedback_text"]


def test_missing_reward_crosses_as_null(test_envs):
    with EnvServer("remote-test/MissingReward-v0", max_sessions=2) as server:
        with _ws(server.url) as ws:
            _ask(ws, {"type": "reset", "data": {"seed": 0}})
            data = _ask(ws, {"type": "step", "data": {"response": "x"}})["data"]
            assert data["reward"] is None
            assert data["observation"]["reward_missing"] is True
        env = OpenEnvEnv(server.url)
        env.reset(seed=0)
        result = rlrf.StepResult.from_step(env.step("x"))
        assert result.reward_missing and not result.success
        assert result.feedback[0].text == "the judge is down"
        env.close()


def test_env_that_raises_reports_error_and_server_stays_up(test_envs):
    with EnvServer("remote-test/Raising-v0", max_sessions=2) as server:
        env = OpenEnvEnv(server.url)
        env.reset(seed=0)
        with pytest.raises(RemoteEnvError, match=r"ZeroDivisionError: the env broke"):
            env.step("boom")
        env.reset(seed=0)  # the same session goes on
        assert env.step("fine")[1] == 1.0
        env.close()
        with _ws(server.url) as ws:
            reply = _ask(ws, {"type": "step", "data": {"response": "x"}})
            assert reply["type"] == "error" and "reset() before step()" in reply["data"]["message"]
        assert _get(server.url, "/health") == {"status": "healthy"}


def test_capacity_error_when_full(arithmetic):
    with EnvServer("rlrf/Arithmetic-v0", max_sessions=1) as server:
        first = OpenEnvEnv(server.url)
        first.reset(seed=0)
        second = OpenEnvEnv(server.url, connect_timeout_s=0.5)
        with pytest.raises(RemoteEnvError, match=r"is full .*--max-sessions"):
            second.reset(seed=0)
        first.close()
        deadline = time.monotonic() + 5
        while server.active_sessions and time.monotonic() < deadline:
            time.sleep(0.02)
        second.reset(seed=0)  # the freed slot is taken
        second.close()


def test_spawn_opens_one_session_per_instance(arithmetic):
    env = OpenEnvEnv(arithmetic.url)
    twins = [env.spawn() for _ in range(3)]
    for i, twin in enumerate(twins):
        twin.reset(seed=i)
    assert _get(arithmetic.url, "/rlrf")["active_sessions"] >= 3
    assert [t.env_id for t in twins] == [env.env_id] * 3
    for twin in twins:
        twin.close()


def test_several_servers_share_the_sessions():
    with EnvServer("rlrf/Arithmetic-v0") as a, EnvServer("rlrf/Arithmetic-v0") as b:
        env = rlrf.make(f"openenv:{a.url},{b.url}")
        twins = [env.spawn() for _ in range(4)]
        for twin in twins:
            twin.reset(seed=0)
        assert sorted(t.server_url for t in twins) == sorted([a.url, b.url] * 2)
        for twin in twins:
            twin.close()


def test_rlrf_serve_command_with_token(tmp_path):
    """The real command in a subprocess: the token comes from the environment, not a flag."""
    token = "s3cret-token"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlrf.cli", "serve", "rlrf/Arithmetic-v0", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "RLRF_SERVE_TOKEN": token},
    )
    try:
        line = proc.stdout.readline()
        match = re.search(r"at (http://127\.0\.0\.1:\d+) ", line)
        assert match, (line, proc.stderr.read() if proc.poll() is not None else "")
        url = match.group(1)
        assert "bearer token required" in line
        assert _get(url, "/health") == {"status": "healthy"}
        with pytest.raises(urllib.error.HTTPError) as e:
            _get(url, "/schema")
        assert e.value.code == 401
        with pytest.raises(RemoteEnvError, match=r"requires a bearer token .*RLRF_SERVE_TOKEN"):
            OpenEnvEnv(url, token="")
        env = OpenEnvEnv(url, token=token)
        env.reset(seed=0)
        assert env.step("<answer>1</answer>")[2] is True
        env.close()
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_serve_command_reports_bad_env_kwargs(capsys):
    from rlrf.remote.cli import main

    with pytest.raises(SystemExit) as e:  # the shared --env-kwargs: a usage error, exit 2
        main(["rlrf/Arithmetic-v0", "--env-kwargs", "[1]", "--port", "0"])
    assert e.value.code == 2
    assert "expected a JSON object or KEY=VALUE, got '[1]'" in capsys.readouterr().err
    assert main(["rlrf/Arithmetic-v0", "--env-kwargs", "no_such_kwarg=1", "--port", "0"]) == 1
    assert main(["rlrf/NoSuchEnv-v0", "--port", "0"]) == 1
