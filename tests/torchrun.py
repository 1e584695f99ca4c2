"""Run a test script on two torchrun processes (gloo on CPU), shared by the multi-process tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_RENDEZVOUS_ERRORS = ("Address already in use", "DistNetworkError", "RendezvousConnectionError")
"""torchrun's local rendezvous can lose a race for a free port: those runs are tried again."""


def two_processes(script: Path, out: Path, *args: str, timeout: float = 1800) -> None:
    """Run ``script OUT ARGS...`` on two torchrun processes; fail with their output if it fails.

    One torch thread per process (two processes share this machine's cores), the project root
    on ``PYTHONPATH``; the timeout is generous because CI machines are sometimes loaded.
    """
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(script), str(out), *args,
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 and any(m in proc.stderr for m in _RENDEZVOUS_ERRORS):
        proc = subprocess.run(
            cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
        )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-8000:]
