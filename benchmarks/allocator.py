"""Kernel time and resident size of CPU updates with and without ``reuse_freed_memory``.

Runs ``rlrf train`` twice on the embedded model (one-digit addition, the same seed and
settings), once as configured by default (``reuse_freed_memory: true``, see
``algorithms/engine/allocator.py``) and once with ``--reuse-freed-memory false`` (glibc's own
behaviour), each in its own process. After every update it records the update's user and
kernel CPU seconds (``os.times``) and the process's resident size; it prints them per step
and the medians over steps 2..N (step 1 allocates AdamW's state in both).

    python benchmarks/allocator.py                 # GRPO, 8 steps, 4 x 4 rollouts, 32 tokens
    python benchmarks/allocator.py --algo sdpo --steps 15
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _rss_gib() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def _worker(args: argparse.Namespace, reuse: bool) -> None:
    import torch

    from algorithms.engine.trainer import Trainer
    from rlrf.cli import main as rlrf_main

    torch.set_num_threads(args.threads)
    records: list[dict[str, float]] = []
    update = Trainer._update

    def timed(self: Trainer, rows: Any) -> dict[str, float]:
        t0, w0 = os.times(), time.perf_counter()
        try:
            return update(self, rows)
        finally:
            t1 = os.times()
            records.append(
                {
                    "wall": time.perf_counter() - w0,
                    "user": t1.user - t0.user,
                    "kernel": t1.system - t0.system,
                    "rss_gib": _rss_gib(),
                }
            )

    Trainer._update = timed  # type: ignore[method-assign]
    code = rlrf_main(
        [
            "train", "--algo", args.algo, "--env", "rlrf/Arithmetic-v0",
            "--env-kwargs", json.dumps({"digits": 1, "ops": "+"}), "--steps", str(args.steps),
            "--questions-per-step", "4", "--rollouts-per-question", "4",
            "--max-new-tokens", "32", "--lr", "1e-5", "--eval-every", "0",
            "--checkpoint-every", "0", "--progress", "false", "--model", args.model,
            "--reuse-freed-memory", str(reuse).lower(), "--output-dir", tempfile.mkdtemp(),
        ]
    )  # fmt: skip
    if code:
        raise SystemExit(f"rlrf train exited with {code}")
    print("RESULT " + json.dumps(records), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--algo", choices=("grpo", "sdpo"), default="grpo")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default="smollm2-135m", help="model name or local folder")
    ap.add_argument("--smoke", action="store_true", help="CI's tiny run")
    ap.add_argument("--worker", choices=("true", "false"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.smoke:  # a tiny random model, 2 steps
        from algorithms.testing import save_tiny

        args.model, args.steps = str(save_tiny(Path(tempfile.mkdtemp()) / "tiny")), 2
    if args.worker:
        _worker(args, args.worker == "true")
        return
    if args.steps < 2:
        raise SystemExit("--steps must be >= 2 (step 1 is left out of the medians)")
    print(
        f"{args.algo}, {args.steps} steps of 4 x 4 rollouts, <= 32 new tokens, {args.threads} "
        f"threads, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    medians = {}
    for reuse in ("true", "false"):
        cmd = [sys.executable, __file__, "--worker", reuse, "--algo", args.algo]
        cmd += ["--steps", str(args.steps), "--threads", str(args.threads), "--model", args.model]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not lines:
            raise SystemExit(f"reuse_freed_memory={reuse}: failed\n{proc.stderr[-3000:]}")
        records = json.loads(lines[-1].removeprefix("RESULT "))
        later = records[1:]
        medians[reuse] = {k: statistics.median(r[k] for r in later) for k in later[0]}
        print(f"reuse_freed_memory={reuse}")
        print("  kernel s per update: " + " ".join(f"{r['kernel']:.2f}" for r in records))
        print("  RSS GiB after update: " + " ".join(f"{r['rss_gib']:.2f}" for r in records))
        m = medians[reuse]
        print(
            f"  median of steps 2..{args.steps}: wall {m['wall']:.2f} s, user {m['user']:.2f} "
            f"CPU-s, kernel {m['kernel']:.2f} CPU-s, RSS {m['rss_gib']:.2f} GiB"
        )
    on, off = medians["true"], medians["false"]
    print(
        f"kernel time per update: {off['kernel']:.2f} -> {on['kernel']:.2f} CPU-s; update wall "
        f"{off['wall']:.2f} -> {on['wall']:.2f} s ({off['wall'] / on['wall']:.2f}x); resident "
        f"size after updates {off['rss_gib']:.2f} -> {on['rss_gib']:.2f} GiB"
    )


if __name__ == "__main__":
    main()
