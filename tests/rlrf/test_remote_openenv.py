"""OpenEnvEnv on OpenEnv servers rlrf did not write, and on URLs where no such server is."""

from __future__ import annotations

import http.server
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip(
    "openenv", reason="rlrf.remote needs the serve extra: pip install 'rlrf[serve]'"
)

from fastapi import FastAPI

import rlrf
from rlrf import FeedbackKind
from rlrf.errors import ConfigError, EnvCheckError, RemoteEnvError
from rlrf.remote import OpenEnvEnv
from rlrf.remote.client import _reward
from tests.rlrf.remote_servers import (
    FileAction,
    MessageAction,
    NullRewardEnv,
    SeedlessEnv,
    TwoFieldEnv,
    free_port,
    openenv_app,
    run_app,
)


@pytest.fixture(scope="module")
def echo_server(tmp_path_factory):
    """The env `openenv init` generates, run by uvicorn in its own process."""
    root = tmp_path_factory.mktemp("openenv-init")
    cli = shutil.which("openenv", path=str(Path(sys.executable).parent)) or "openenv"
    subprocess.run(
        [cli, "init", "echo_env"], cwd=root, check=True, capture_output=True, timeout=120
    )
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "server.app:app", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        cwd=root / "echo_env",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url + "/health", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the echo server did not start: {proc.stderr.read()!r:.2000}")
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_echo_env_through_make(echo_server):
    env = rlrf.make(f"openenv:{echo_server}")
    assert env.env_id == f"openenv:{echo_server}" and not env.server_info.is_rlrf
    chat, info = env.reset(seed=3)
    assert chat == [{"role": "user", "content": "Echo Env environment ready!"}]
    obs, reward, terminated, truncated, info = env.step("hello")  # 'message' found by schema
    assert reward == pytest.approx(0.5)
    assert obs[-2:] == [
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "hello"},
    ]
    assert [(f.kind, f.text) for f in info["feedback"]] == [(FeedbackKind.OTHER, "hello")]
    assert info["metadata"]["original_message"] == "hello"
    env.close()


def test_check_env_passes_on_echo_env(echo_server):
    env = rlrf.make(f"openenv:{echo_server}", max_turns=3)
    rlrf.check_env(env)
    env.close()


def test_check_env_names_a_server_that_ignores_the_seed():
    with run_app(openenv_app(SeedlessEnv, MessageAction)) as url:
        env = OpenEnvEnv(url)
        with pytest.raises(EnvCheckError) as e:
            rlrf.check_env(env)
        assert str(e.value).startswith(f"openenv:{url}: reset(seed=123) twice gave different")
        env.close()


def test_null_and_nan_rewards_are_missing_and_flagged():
    with run_app(openenv_app(NullRewardEnv, MessageAction)) as url:
        env = OpenEnvEnv(url)
        env.reset(seed=0)
        for _ in range(2):  # null, then NaN (which pydantic sends as null)
            result = rlrf.StepResult.from_step(env.step("hi"))
            assert result.reward_missing and result.reward == 0.0 and not result.success
            assert "null" in result.info["reward_missing_reason"]
            assert result.feedback[0].text == "the grader crashed"  # metadata["feedback"]
        assert result.terminated
        env.close()
    assert _reward(float("nan")) == (None, "the server sent reward nan")
    assert _reward("1.0")[0] is None and _reward(True) == (1.0, None)


def test_action_without_an_obvious_text_field_needs_a_mapping():
    with run_app(openenv_app(TwoFieldEnv, FileAction)) as url:
        with pytest.raises(ConfigError) as e:
            OpenEnvEnv(url)
        message = str(e.value)
        assert url in message and "several text fields (command, path)" in message
        assert "FileAction {command: string (required), path: string (required)}" in message
        assert "action='<field>'" in message
        with pytest.raises(ConfigError, match=r"also requires path"):
            OpenEnvEnv(url, action="command")
        env = OpenEnvEnv(url, action="command", action_extra={"path": "/tmp"})
        env.reset()
        assert env.step("ls")[0][-1]["content"] == "ran ls in /tmp"
        env.close()
        env = OpenEnvEnv(url, action=lambda r: {"command": r, "path": "/srv"})
        env.reset()
        assert env.step("pwd")[0][-1]["content"] == "ran pwd in /srv"
        env.close()


def test_nothing_listening_is_one_line_naming_the_url():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(RemoteEnvError) as e:
        rlrf.make(f"openenv:{url}")
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"{url}: nothing answered GET /schema")
    assert "expected an OpenEnv server" in message


def test_something_else_answering_is_one_line_naming_the_url(tmp_path):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args):
            super().__init__(*args, directory=str(tmp_path))

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with pytest.raises(RemoteEnvError) as e:
            OpenEnvEnv(url)
        assert "\n" not in str(e.value)
        assert str(e.value).startswith(f"{url}: GET /schema answered HTTP 404")
        assert "expected an OpenEnv server" in str(e.value)
    finally:
        server.shutdown()
        server.server_close()
    other = FastAPI()
    other.get("/schema")(lambda: {"hello": "world"})
    with run_app(other) as url:
        with pytest.raises(RemoteEnvError, match=r"has no 'action' and 'observation' schemas"):
            OpenEnvEnv(url)


def test_bad_urls_are_refused():
    with pytest.raises(ConfigError, match=r"is not a server URL"):
        rlrf.make("openenv:ftp://example")
    with pytest.raises(ConfigError, match=r"no server URL|bad server URL"):
        rlrf.make("openenv:")


def test_import_rlrf_imports_neither_torch_nor_openenv():
    code = (
        "import sys, rlrf, rlrf.remote, rlrf.remote.cli\n"
        "bad = [m for m in ('torch', 'openenv', 'uvicorn') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_missing_openenv_says_how_to_install():
    code = (
        "import sys\n"
        "sys.modules['openenv'] = None\n"
        "from rlrf.errors import MissingExtraError\n"
        "try:\n"
        "    import rlrf.remote.server\n"
        "except MissingExtraError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120
    ).stdout
    assert "pip install 'rlrf[serve]'" in out


def test_rlrf_check_command_on_echo_env(echo_server):
    from rlrf.cli import main

    # `rlrf check` leaves its session for the server to reap: the last test on this server
    assert main(["check", f"openenv:{echo_server}"]) == 0
