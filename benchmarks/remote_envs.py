"""Rollouts per second on served envs (``rlrf serve``) against the same env in-process.

    python benchmarks/remote_envs.py                       # rlrf/Code-v0, 1, 2 and 4 servers
    python benchmarks/remote_envs.py --servers 1 2 --rollouts 96 --repeats 3

Each measurement plays ``--rollouts`` single-turn episodes (reset with a seed, one response,
graded in the env's sandbox) from ``--workers`` client threads, each thread one env instance
(``env.spawn()``, one server session each), as the rollout loop does. The responses are
scripted, half the task's reference solution and half a wrong program, so the generator
costs nothing and what is measured is the env side alone. The in-process baseline runs the
same episodes on ``rlrf.make(env)``; the served runs start N ``rlrf serve`` processes on
127.0.0.1 and spread the sessions over them (least loaded first). Sides are interleaved, each
``--repeats`` times, and the median and the range are printed, with the ratio to the
in-process median of the same run. The time of one step is split into the env's own
``env.step`` (timed by the server) and the rest of the round trip (network, serialization,
the server's event loop).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import rlrf

ROOT = Path(__file__).resolve().parents[1]
WRONG = "```python\nprint(0)\n```"


def _responses(env: rlrf.RLRFEnv, seeds: list[int]) -> list[str]:
    """Half reference solutions, half a wrong program, by seed."""
    out = []
    for i, seed in enumerate(seeds):
        probe = env.spawn()
        _, info = probe.reset(seed=seed)
        gold = probe.gold_answer(info["task_id"]) if i % 2 == 0 else None
        out.append(gold or WRONG)
        probe.close()
    return out


def _play(env: rlrf.RLRFEnv, seeds: list[int], responses: list[str], workers: int) -> dict:
    """Play one episode per seed on ``workers`` threads; return throughput and step times."""
    lock = threading.Lock()
    round_trips: list[float] = []
    env_times: list[float] = []
    local = threading.local()
    opened: list[rlrf.RLRFEnv] = []

    def one(k: int) -> float | None:
        if not hasattr(local, "env"):
            local.env = env.spawn()
            with lock:
                opened.append(local.env)
        e = local.env
        e.reset(seed=seeds[k])
        started = time.perf_counter()
        _, reward, _, _, info = e.step(responses[k])
        elapsed = time.perf_counter() - started
        timing = getattr(e, "last_step_timing", None)
        with lock:
            round_trips.append(timing.round_trip_s if timing else elapsed)
            env_times.append(timing.env_s if timing and timing.env_s is not None else elapsed)
        return None if info.get("reward_missing") else reward

    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        rewards = list(pool.map(one, range(len(seeds))))
    wall = time.perf_counter() - started
    for e in opened:  # each instance's server session ends with it
        e.close()
    return {
        "rollouts_per_s": len(seeds) / wall,
        "step_round_trip_s": statistics.median(round_trips),
        "step_env_s": statistics.median(env_times),
        "missing": sum(r is None for r in rewards),
        "solved": sum(r == 1.0 for r in rewards),
    }


def _start_servers(env_id: str, n: int, env_kwargs: dict, max_sessions: int) -> tuple[list, list]:
    procs, urls = [], []
    for _ in range(n):
        proc = subprocess.Popen(
            [sys.executable, "-m", "rlrf.cli", "serve", env_id, "--port", "0",
             "--max-sessions", str(max_sessions), "--env-kwargs", json.dumps(env_kwargs)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        line = proc.stdout.readline() if proc.stdout else ""
        match = re.search(r"at (http://127\.0\.0\.1:\d+) ", line)
        if not match:
            proc.kill()
            raise SystemExit(f"rlrf serve did not start: {line!r} {proc.stderr.read()[-2000:]}")
        procs.append(proc)
        urls.append(match.group(1))
    return procs, urls


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env", default="rlrf/Code-v0")
    p.add_argument("--env-kwargs", default="{}", help="JSON object for rlrf.make")
    p.add_argument("--servers", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--rollouts", type=int, default=64, help="episodes per measurement")
    p.add_argument("--workers", type=int, default=8, help="client threads (env instances)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--smoke", action="store_true", help="CI's tiny run")
    args = p.parse_args()
    if args.smoke:
        args.env, args.servers, args.rollouts, args.workers, args.repeats = (
            "rlrf/Arithmetic-v0", [1], 4, 2, 1)  # fmt: skip
    kwargs = json.loads(args.env_kwargs)
    local_env = rlrf.make(args.env, **kwargs)
    seeds = list(range(1000, 1000 + args.rollouts))
    responses = _responses(local_env, seeds)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"{args.env}, {args.rollouts} rollouts x {args.repeats} repeats, "
          f"{args.workers} client threads")  # fmt: skip
    servers = {n: _start_servers(args.env, n, kwargs, 4 * args.workers) for n in args.servers}
    results: dict[str, list[dict]] = {"in-process": []}
    try:
        remote = {n: rlrf.make("openenv:" + ",".join(urls)) for n, (_, urls) in servers.items()}
        _play(local_env, seeds[:4], responses[:4], 2)  # warm up every side once
        for env in remote.values():
            _play(env, seeds[:4], responses[:4], 2)
        for _ in range(args.repeats):  # interleaved: in-process, then 1, 2, 4 servers
            results["in-process"].append(_play(local_env, seeds, responses, args.workers))
            for n, env in remote.items():
                results.setdefault(f"{n} server(s)", []).append(
                    _play(env, seeds, responses, args.workers)
                )
    finally:
        for procs, _ in servers.values():
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=30)
    base = statistics.median(r["rollouts_per_s"] for r in results["in-process"])
    print(f"{'':14} {'rollouts/s (median, range)':>30} {'vs in-process':>14} "
          f"{'step: env':>10} {'round trip':>11} {'wire':>8} {'missing':>8}")  # fmt: skip
    for name, runs in results.items():
        rates = [r["rollouts_per_s"] for r in runs]
        med = statistics.median(rates)
        env_s = statistics.median(r["step_env_s"] for r in runs)
        trip = statistics.median(r["step_round_trip_s"] for r in runs)
        wire = "" if name == "in-process" else f"{(trip - env_s) * 1e3:6.1f}ms"
        trip_s = "" if name == "in-process" else f"{trip * 1e3:8.1f}ms"
        print(f"{name:14} {med:12.2f} ({min(rates):.2f}-{max(rates):.2f}) {'':>6} "
              f"{med / base:13.2f}x {env_s * 1e3:8.1f}ms {trip_s:>11} {wire:>8} "
              f"{sum(r['missing'] for r in runs):>8}")  # fmt: skip


if __name__ == "__main__":
    main()
