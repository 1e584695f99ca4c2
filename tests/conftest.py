"""The skip policy: a run fails when a test skipped for any reason but a missing GPU.

CI must not go green while a backend never ran. After the tests, every skip is sorted by its
reason into a kind: ``gpu`` (no CUDA device: always allowed, no machine here has one),
``docker`` (no Docker engine could start), ``vllm`` (vLLM is not installed in this venv), or
``other`` (a missing package, a platform...). Doctests whose every example is marked
``+SKIP`` are documentation shown, not run, and are not counted. Any other skip turns a passing
run into a failure, with one line per kind naming what did not run and why.

A local run allows kinds explicitly: ``RLRF_ALLOW_SKIPS=docker,vllm make test`` (or
``other``, or ``all``). CI sets nothing.
"""

from __future__ import annotations

import os
from collections import defaultdict

import pytest

KINDS = ("docker", "vllm", "other")
_skips: dict[str, list[tuple[str, str]]] = defaultdict(list)


def allowed_kinds() -> set[str]:
    """The skip kinds ``RLRF_ALLOW_SKIPS`` allows (``all``: every kind)."""
    names = {n.strip() for n in os.environ.get("RLRF_ALLOW_SKIPS", "").split(",") if n.strip()}
    unknown = names - set(KINDS) - {"all"}
    if unknown:
        raise pytest.UsageError(
            f"RLRF_ALLOW_SKIPS names {sorted(unknown)}; the kinds are {', '.join(KINDS)}, all"
        )
    return set(KINDS) if "all" in names else names


def skip_kind(reason: str) -> str | None:
    """The kind of a skip reason, or None for one that is always allowed."""
    if "CUDA" in reason or "GPU" in reason or "+SKIP option" in reason:
        return None
    if "Docker" in reason or "docker" in reason:
        return "docker"
    if "vLLM" in reason or "vllm" in reason:
        return "vllm"
    return "other"


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        kind = skip_kind(reason)
        if kind is not None:
            _skips[kind].append((report.nodeid, reason.removeprefix("Skipped: ")))


def _refused() -> dict[str, list[tuple[str, str]]]:
    allowed = allowed_kinds()
    return {k: v for k, v in _skips.items() if k not in allowed}


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _refused() and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for kind, skipped in sorted(_refused().items()):
        reasons = sorted({reason for _, reason in skipped})
        terminalreporter.write_line(
            f"SKIP POLICY: {len(skipped)} {kind} test(s) did not run ({'; '.join(reasons)[:300]}"
            f"), e.g. {skipped[0][0]}; this fails the run: RLRF_ALLOW_SKIPS={kind} allows it "
            "for a local run (tests/conftest.py)",
            red=True,
            bold=True,
        )
