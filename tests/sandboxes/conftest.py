"""Fixtures for the sandbox tests: one sandbox per backend per session, host-state checks."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator

import pytest

import sandboxes

# Set before any sandbox starts: a test checks that programs never see the caller's environment.
SECRET = "rlrf-secret-6f1c2d"
os.environ["RLRF_SANDBOX_TEST_SECRET"] = SECRET


def slot_uid_processes(uids: tuple[int, ...]) -> list[int]:
    """Pids of processes running under the given slot uids (there should be none at rest).

    Only this session's uids count: other LocalSandbox users may run on the same machine.
    """
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                for line in f:
                    if line.startswith("Uid:"):
                        if int(line.split()[1]) in uids:
                            pids.append(int(entry))
                        break
        except OSError:
            continue
    return pids


def sandbox_mounts() -> list[str]:
    with open("/proc/self/mounts") as f:
        return [line for line in f if "rlrf-sandbox-" in line]


@pytest.fixture(scope="session")
def local_sandbox() -> Iterator[sandboxes.Sandbox]:
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        sb = sandboxes.get("local", workers=2)
    yield sb
    uids, base_dir = sb.slot_uids, sb._base_dir
    sb.close()
    assert slot_uid_processes(uids) == [], "processes of sandboxed programs survived the session"
    assert sandbox_mounts() == [], "sandbox mounts leaked into the host mount namespace"
    assert not os.path.exists(base_dir), "sandbox temporary directories were left behind"


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[tuple[str, str]]:
    """(engine URL, image): an engine, started here if needed, with the sandbox image."""
    from sandboxes.docker_engine import ensure_engine, ensure_image
    from sandboxes.errors import SandboxUnavailableError

    try:
        engine = ensure_engine(start=True)
        image = ensure_image(engine.base_url)
    except SandboxUnavailableError as e:
        print(f"\n[sandboxes] Docker tests SKIPPED: no engine can start here: {e}")
        pytest.skip(f"no Docker engine can start here: {e}")
    try:
        yield engine.base_url, image
    finally:
        engine.stop()


@pytest.fixture(scope="session")
def docker_sandbox(docker_engine: tuple[str, str]) -> Iterator[sandboxes.Sandbox]:
    from sandboxes.docker import DockerSandbox

    url, image = docker_engine
    sb = DockerSandbox(workers=2, base_url=url, image=image)
    try:
        yield sb
    finally:
        sb.close()
        leftover = sb.leftover_containers()
        assert leftover == [], f"containers left behind: {leftover}"


@pytest.fixture(
    scope="session",
    params=["local", pytest.param("docker", marks=pytest.mark.docker)],
)
def sandbox(request: pytest.FixtureRequest) -> sandboxes.Sandbox:
    """The same adversarial property, checked against each backend."""
    return request.getfixturevalue(f"{request.param}_sandbox")
