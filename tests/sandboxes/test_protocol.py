"""The protocol's own contracts: limits validation, backend lookup, pool robustness, grading."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

import sandboxes
from sandboxes import ExecutionStatus, FunctionCall, Limits, SandboxConfigError
from sandboxes.compare import first_mismatch, json_match, outputs_match


@pytest.mark.parametrize(
    "kwargs",
    [
        {"wall_time_s": -1},
        {"wall_time_s": float("nan")},
        {"cpu_time_s": 0},
        {"memory_bytes": 1},
        {"output_bytes": -5},
        {"processes": 10**9},
        {"open_files": "64"},
    ],
)
def test_absurd_limits_are_rejected_with_the_field_name(kwargs: dict) -> None:
    with pytest.raises(SandboxConfigError, match=next(iter(kwargs))):
        Limits(**kwargs)


def test_function_call_args_must_be_a_json_array() -> None:
    with pytest.raises(SandboxConfigError, match="JSON array"):
        FunctionCall("f", '{"a": 1}')
    with pytest.raises(SandboxConfigError, match="identifier"):
        FunctionCall("not valid", "[]")


def test_unknown_backend_suggests_the_closest_name() -> None:
    with pytest.raises(SandboxConfigError, match="did you mean 'local'"):
        sandboxes.get("lokal")  # type: ignore[arg-type]


def test_files_must_stay_inside_the_temp_dir(local_sandbox: sandboxes.Sandbox) -> None:
    with pytest.raises(SandboxConfigError, match="relative path"):
        local_sandbox.run("pass", files={"../escape": b"x"})


def test_a_dead_worker_gives_a_sandbox_error_and_the_pool_recovers() -> None:
    with sandboxes.get("local", workers=1) as sb:
        worker_pid = sb._workers[0].proc.pid  # type: ignore[attr-defined]
        results: list = []
        t = threading.Thread(target=lambda: results.append(sb.run("import time\ntime.sleep(5)\n")))
        t.start()
        time.sleep(0.5)
        os.kill(worker_pid, signal.SIGKILL)
        t.join(10)
        assert results and results[0].status is ExecutionStatus.SANDBOX_ERROR
        r = sb.run("print('back')")
        assert (r.status, r.stdout) == (ExecutionStatus.OK, "back\n")


def test_closed_sandbox_refuses_work() -> None:
    sb = sandboxes.get("local", workers=1)
    sb.close()
    sb.close()  # idempotent
    with pytest.raises(sandboxes.SandboxClosedError):
        sb.run("pass")


def test_compare_modes() -> None:
    assert outputs_match("1 2\n3\n", "1 2 3")
    assert not outputs_match("1 2\n3\n", "1 2 3", mode="exact")
    assert outputs_match("0.1000001", "0.1", mode="numeric", abs_tol=1e-6)
    assert not outputs_match("0.11", "0.1", mode="numeric", abs_tol=1e-6)
    assert not outputs_match("YES", "yes")
    assert outputs_match("YES", "yes", case_insensitive=True)
    assert first_mismatch("1 2 4", "1 2 3") == "token 3: expected '3', got '4'"


def test_json_match_is_type_strict() -> None:
    assert json_match("[1, 2]", (1, 2))
    assert not json_match("true", 1)
    assert not json_match('"3"', 3)
    assert json_match("0.30000000000000004", 0.3)
    assert not json_match(None, None)
    assert not json_match("not json", "not json")


@pytest.mark.docker
def test_a_dropped_docker_sandbox_removes_its_containers(docker_engine) -> None:
    import gc

    from sandboxes.docker import DockerSandbox

    url, image = docker_engine
    sb = DockerSandbox(workers=1, base_url=url, image=image)
    client, label = sb._client, f"rlrf.sandbox={sb.session}"
    assert len(client.containers.list(all=True, filters={"label": label})) == 1
    del sb  # never closed
    gc.collect()
    assert client.containers.list(all=True, filters={"label": label}) == []


def test_read_rules_grant_everything_but_the_hidden_directories(tmp_path) -> None:
    # root/{stdlib.py, pkgs/site-packages/secret, pkgs/other, link -> pkgs/site-packages}
    from sandboxes import _worker as w

    root = tmp_path / "root"
    hidden = root / "pkgs" / "site-packages"
    (hidden / "secret").mkdir(parents=True)
    (root / "pkgs" / "other").mkdir()
    (root / "stdlib.py").write_text("x = 1\n")
    (root / "link").symlink_to(hidden)
    rules = dict(w.read_rules([str(root)], [str(hidden)]))
    full = w.LL_FS_READ_FILE | w.LL_FS_READ_DIR
    assert rules == {
        str(root): w.LL_FS_READ_DIR,  # listing only: it holds the hidden directory
        str(root / "pkgs"): w.LL_FS_READ_DIR,
        str(root / "pkgs" / "other"): full,
        str(root / "stdlib.py"): full,
    }
    assert not any(p.startswith(str(hidden)) for p in rules)  # not even through the symlink
