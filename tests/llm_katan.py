"""llm-katan serving the embedded SmolLM2-135M on 127.0.0.1: one real OpenAI-compatible server."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(name: str, extra: Sequence[str] = ()) -> Iterator[tuple[str, subprocess.Popen]]:
    """Start llm-katan as model ``name``; yield its ``/v1`` URL and process (fails, never skips)."""
    from algorithms.models import default_model_path

    exe = Path(sys.executable).with_name("llm-katan")
    assert exe.exists(), "llm-katan is not installed: pip install llm-katan"
    port = free_port()
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    stats = Path(log.name).with_suffix(".stats.json")
    cmd = [str(exe), "--model", str(default_model_path()), "--served-model-name", name,
           "--host", "127.0.0.1", "--port", str(port), "--no-quantize", "--device", "cpu",
           "--max-tokens", "16", "--stats-file", str(stats), "--disable-dashboard",
           "--log-level", "warning", *extra]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"llm-katan exited with {proc.returncode}:\n{log.read()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                log.seek(0)
                pytest.fail(f"llm-katan not ready within 120 s:\n{log.read()[-3000:]}")
            time.sleep(0.3)
        yield f"{url}/v1", proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        log.close()
        os.unlink(log.name)
        stats.unlink(missing_ok=True)
