"""Test-time self-distillation vs best-of-k vs multi-turn retrying on an env's hardest tasks.

1. Pilot: sample ``pilot_samples`` attempts for each of ``candidates`` distinct tasks (by
   prompt text) with the base model, on seeds that no method uses afterwards, and keep the
   ``questions`` tasks with the lowest pilot success rate (the base model rarely solves them).
2. Run ``ttsd``, ``best_of_k`` and ``multi_turn`` (:mod:`algorithms.ttsd`) on those tasks
   from the same weights, with the same seeds (common random numbers: the first batch of 16
   is identical in all three) and the same attempt budget.
3. Print discovery@k at a few budgets, the attempts ttsd needs to reach best_of_k's final
   discovery rate (the ratio; the paper reports about 3x), the time per method and the
   machine. Results, curves and a plot go to ``--output-dir``.

Run::

    python benchmarks/test_time.py --setting quick   # smoke run, a few minutes on 2 cores
    python benchmarks/test_time.py --setting cpu     # sized for <= 30 min on an idle 2-core box
    python benchmarks/test_time.py --setting gpu     # larger: more questions, budget 512

The CPU settings use lr 1e-5 instead of the paper's test-time 1e-6: their budget of 32-48
attempts allows only 1-2 SDPO steps per question, after which 1e-6 leaves the weights (and,
with common random numbers, the samples) almost exactly unchanged. ``--lr`` overrides it.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

from algorithms.commands.ttsd import print_summary
from algorithms.engine.trainer import mix_seed
from algorithms.ttsd import (
    METHODS,
    TTSDConfig,
    plot_discovery,
    run_methods,
    write_discovery,
    write_results,
)

SETTINGS = {
    "quick": dict(
        env="rlrf/Arithmetic-v0", env_kwargs={"digits": 1, "ops": "+-*"}, candidates=8,
        pilot_samples=16, questions=3, budget=32, batch_size=16, max_new_tokens=48, lr=1e-5,
    ),
    "cpu": dict(
        env="rlrf/Arithmetic-v0", env_kwargs={"digits": 1, "ops": "+-*"}, candidates=16,
        pilot_samples=16, questions=5, budget=48, batch_size=16, max_new_tokens=48, lr=1e-5,
    ),
    "smoke": dict(  # --smoke: a tiny random model, seconds
        env="rlrf/Arithmetic-v0", env_kwargs={"digits": 1, "ops": "+"}, candidates=2,
        pilot_samples=2, questions=1, budget=4, batch_size=2, max_new_tokens=4, lr=1e-5,
    ),
    "gpu": dict(
        env="rlrf/Arithmetic-v0", env_kwargs={"digits": 2, "ops": "+"}, candidates=128,
        pilot_samples=64, questions=32, budget=512, batch_size=16, max_new_tokens=128, lr=1e-6,
    ),
}  # fmt: skip


def distinct_tasks(env, split: str, n: int) -> list[str]:
    seen, out = set(), []
    for task_id in env.task_ids(split):
        key = repr(env.prompt(task_id))
        if key not in seen:
            seen.add(key)
            out.append(task_id)
        if len(out) == n:
            break
    return out


def pilot_rates(env, policy, task_ids, n, max_new_tokens, seed) -> dict[str, float]:
    from algorithms.sampling.hf import SamplingParams
    from rlrf.rollout import collect_groups

    params = SamplingParams(max_new_tokens=max_new_tokens, seed=mix_seed(seed, 10**9 + 7))
    groups, _ = collect_groups(env, policy, task_ids, n, params)
    return {g.task_id: sum(bool(t.success) for t in g.trajectories) / n for g in groups}


def machine() -> str:
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), {cuda}, load average {load[0]:.1f}"
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--setting", choices=sorted(SETTINGS), default="quick")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--lr", type=float, default=None, help="override the setting's lr")
    p.add_argument("--questions", type=int, default=None, help="override the number of tasks")
    p.add_argument("--budget", type=int, default=None, help="override the attempt budget")
    p.add_argument("--split", default="test")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir", default=None, help="default runs/bench_ttsd_<setting>")
    p.add_argument("--smoke", action="store_true", help="CI's tiny run")
    args = p.parse_args(argv)
    if args.smoke:
        import tempfile

        from algorithms.testing import save_tiny

        tmp = Path(tempfile.mkdtemp())
        args.setting, args.model = "smoke", str(save_tiny(tmp / "tiny"))
        args.output_dir = args.output_dir or str(tmp / "out")
    s = dict(SETTINGS[args.setting])
    for key in ("lr", "questions", "budget"):
        if getattr(args, key) is not None:
            s[key] = getattr(args, key)
    out = Path(args.output_dir or f"runs/bench_ttsd_{args.setting}")

    import rlrf
    from algorithms.models import load_model
    from algorithms.sampling.hf import HFPolicy

    device = "cuda" if torch.cuda.is_available() else None
    print(f"machine: {machine()}")
    print(f"setting {args.setting}: {s}", flush=True)
    t_all = time.perf_counter()
    model, tokenizer = load_model(args.model, device=device)
    env = rlrf.make(s["env"], **s["env_kwargs"])
    candidates = distinct_tasks(env, args.split, s["candidates"])
    t0 = time.perf_counter()
    policy = HFPolicy(model, tokenizer)
    rates = pilot_rates(env, policy, candidates, s["pilot_samples"], s["max_new_tokens"], args.seed)
    hardest = sorted(candidates, key=lambda t: (rates[t], candidates.index(t)))[: s["questions"]]
    pilot_s = time.perf_counter() - t0
    mean_rate = sum(rates.values()) / len(rates)
    print(
        f"pilot: {len(candidates)} tasks x {s['pilot_samples']} samples in {pilot_s:.0f} s, "
        f"mean success {mean_rate:.3f}; hardest {len(hardest)}: "
        + ", ".join(f"{t} ({rates[t]:.3f})" for t in hardest),
        flush=True,
    )
    config = TTSDConfig(
        budget=s["budget"],
        batch_size=s["batch_size"],
        max_new_tokens=s["max_new_tokens"],
        lr=s["lr"],
        seed=args.seed,
    )
    results, seconds = {}, {}
    for method in METHODS:
        t0 = time.perf_counter()
        results.update(
            run_methods(
                env, hardest, config, methods=[method], model=model, tokenizer=tokenizer,
                log=lambda line: print(line, flush=True),
            )
        )  # fmt: skip
        seconds[method] = time.perf_counter() - t0
    write_results(out / "results.jsonl", results)
    write_discovery(out / "discovery.jsonl", results, config.budget)
    title = f"{s['env']} {s['env_kwargs']}"
    plot_discovery(out / "discovery.png", results, config.budget, title=title)
    print()
    print_summary(results, config.budget)
    print(
        "seconds per method: "
        + ", ".join(f"{m} {sec:.0f}" for m, sec in seconds.items())
        + f"; total {time.perf_counter() - t_all:.0f} s (pilot {pilot_s:.0f} s)"
    )
    print(f"machine at the end: {machine()}")
    print(f"wrote {out}/results.jsonl, discovery.jsonl, discovery.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
