"""Learning efficiency: GRPO vs SDPO (rich feedback) vs SDPO's successful-rollout variant.

The paper's central claim is that SDPO reaches GRPO's held-out accuracy with far fewer
generations (4x at 8B; smaller gains for small models). This benchmark trains the three
methods on the same env, with the same seeds, the same generation budget and the same
learning rate, evaluates every ``eval_every`` steps on held-out tasks (split ``"test"``,
avg@k at temperature 1, the same evaluation seeds for every method), and reports:

* the held-out accuracy curves against generations: mean over seeds with a ±1 standard
  deviation band (sample std over seeds), per-seed lines thin, the min/max in the JSON,
  as ``learning_efficiency.png`` (plus mean response length), and every number as
  ``learning_efficiency.json``;
* the final accuracy and mean response length of each method;
* how many generations each SDPO variant needed to reach GRPO's final accuracy (first
  evaluation point whose seed-mean accuracy is >= GRPO's final seed-mean accuracy), and the
  ratio GRPO's budget / that number (> 1 means SDPO is more sample-efficient); and the
  spread: the same count for each seed's own curve against that target (mean ± std over
  the seeds that reach it, and how many do), GRPO's own seeds included;
* the machine (CPU count, torch threads, accelerator) and the wall time of each run;
* ``report/``: :func:`algorithms.report.write_report` over every run folder (training reward,
  response length and teacher-student divergence overlaid).

The methods (``algorithms.engine.trainer.train(..., algorithm=...)``):

* ``grpo``: advantages r − mean(r), no std scaling, clip 0.2, token mean (the paper's baseline);
* ``sdpo-mix``: the ``sdpo`` preset as rlrf ships it: SDPO's advantages mixed with GRPO's,
  λ = ``grpo_mix`` = 0.9 (the paper's Eq. 3), the demo's default;
* ``sdpo``: pure SDPO (λ = 0) with rich feedback, the paper's preset (reverse KL, K = 20,
  EMA τ = 0.01), teacher context = a successful sibling's solution and the env's feedback;
* ``sdpo-srf``: the successful-rollout variant (no env feedback; JSD, K = 100, τ = 0.05).

Settings (``--setting``):

* ``cpu``: the embedded SmolLM2-135M-Instruct on ``rlrf/Arithmetic-v0`` with one-digit
  additions (``digits=1, ops="+"``): the base model solves 14 of 64 samples at
  temperature 1 (two digits: 2 of 64; ``benchmarks/base_rates.py``), and the env's
  feedback says whether the answer was too high or too low. The demo's setting (``rlrf
  demo``: 12 steps x 4 questions x 8 rollouts, 48 new tokens, lr 2e-5, held-out avg@2 on
  32 tasks every 4 steps) on seeds 0, 1, 2: seed 0 of ``grpo`` and ``sdpo-mix`` are the
  demo's two runs. About 80 minutes on an idle 2-core machine.
* ``gpu``: more seeds, steps, questions and evaluation tasks; ``--model PATH`` for a larger
  model folder (then pick a harder env with ``--env-kwargs``, so the base rate stays between
  ~10% and ~60%).
* ``--quick``: a smoke run of a few minutes (a few seconds with a tiny model).

Learning rate: the paper's 1e-6 (rich feedback) barely moves a 135M model in a few dozen
steps, so every method here uses the same larger constant rate (``--lr``, default 2e-5 on
CPU, 1e-5 on GPU) with no warmup: equal treatment, no per-method tuning.

Run::

    python benchmarks/learning_efficiency.py --setting cpu --out runs/learning_efficiency
    python benchmarks/learning_efficiency.py --setting gpu --model /models/Qwen3-1.7B \\
        --env-kwargs '{"digits": 2, "ops": "+-*"}'
    python benchmarks/learning_efficiency.py --quick
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ALGORITHMS = ("grpo", "sdpo-mix", "sdpo", "sdpo-srf")
"""The compared methods, baseline first."""

LABELS = {
    "grpo": "GRPO",
    "sdpo-mix": "SDPO mixed with GRPO (λ=0.9)",
    "sdpo": "SDPO (rich feedback)",
    "sdpo-srf": "SDPO (successful rollouts only)",
}

#: The trainer's algorithm preset and the config fields each method adds to it. ``sdpo-mix``
#: is the ``sdpo`` preset as shipped (``grpo_mix`` = 0.9, rlrf's default); ``sdpo`` is the
#: paper's pure SDPO (λ = 0).
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "grpo": ("grpo", {}),
    "sdpo-mix": ("sdpo", {}),
    "sdpo": ("sdpo", {"grpo_mix": 0.0}),
    "sdpo-srf": ("sdpo-srf", {"grpo_mix": 0.0}),
}


@dataclass(frozen=True)
class Setting:
    """Size of one benchmark setting (every method gets the same)."""

    seeds: tuple[int, ...]
    steps: int
    questions_per_step: int
    rollouts_per_question: int
    max_new_tokens: int
    eval_every: int
    eval_tasks: int
    eval_k: int
    lr: float
    env: str = "rlrf/Arithmetic-v0"
    env_kwargs: dict[str, Any] = field(default_factory=lambda: {"digits": 1, "ops": "+"})
    extra: dict[str, Any] = field(default_factory=dict)
    sdpo_extra: dict[str, Any] = field(default_factory=dict)

    @property
    def generations(self) -> int:
        """Training generations per run (the budget)."""
        return self.steps * self.questions_per_step * self.rollouts_per_question


SETTINGS: dict[str, Setting] = {
    # Sized (at commit a20d596, before session 2's prompt-sharing speed-ups, which cut the
    # update time by 1.7-2x) from CPU seconds with 1 torch thread on a loaded 2-core
    # machine (reduced run: 8 steps of 4 x 8 rollouts, 3 evaluations of 16 x 4): GRPO 361
    # CPU-s, SDPO 555 CPU-s. For this setting that gave ~48 minutes; less now.
    "cpu": Setting(
        seeds=(0, 1, 2),
        steps=12,
        questions_per_step=4,
        rollouts_per_question=8,
        max_new_tokens=48,
        eval_every=4,
        eval_tasks=32,
        eval_k=2,
        lr=2e-5,
    ),
    "gpu": Setting(
        seeds=(0, 1, 2),
        steps=60,
        questions_per_step=16,
        rollouts_per_question=8,
        max_new_tokens=256,
        eval_every=5,
        eval_tasks=128,
        eval_k=4,
        lr=1e-5,
        extra={"mixed_precision": "bf16", "micro_batch_size": 16, "generation_batch_size": 128},
    ),
    "quick": Setting(
        seeds=(0,),
        steps=2,
        questions_per_step=4,
        rollouts_per_question=4,
        max_new_tokens=64,
        eval_every=1,
        eval_tasks=8,
        eval_k=2,
        lr=2e-5,
    ),
}


def machine() -> dict[str, Any]:
    """Describe the machine: CPUs, torch threads, accelerator."""
    import torch

    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "accelerator": "cpu",
    }
    try:
        info["load_avg_1m"] = os.getloadavg()[0]
    except OSError:
        pass
    if torch.cuda.is_available():
        info["accelerator"] = torch.cuda.get_device_name(0)
    return info


_LOGGED = (
    "rollout/response_tokens_mean",
    "rollout/reward_mean",
    "rollout/truncated_frac",
    "rollout/teacher_signal_frac",
    "train/divergence",
    "timing/generation",
    "timing/teacher",
    "timing/update",
    "timing/step",
)
"""Per-step metrics whose run means go into the results (with the response lengths)."""


def run_one(
    algorithm: str, seed: int, setting: Setting, model: str, out: Path, *, reuse: bool
) -> dict[str, Any]:
    """Train one method with one seed; return its evaluations and summary numbers."""
    from algorithms.engine.trainer import train

    run_dir = out / f"{algorithm}-seed{seed}"
    done = run_dir / "benchmark_run.json"
    if reuse and done.is_file():
        return json.loads(done.read_text(encoding="utf-8"))
    t0, c0 = time.perf_counter(), time.process_time()
    preset, fields = METHODS[algorithm]
    result = train(
        setting.env,
        model,
        algorithm=preset,
        env_kwargs=dict(setting.env_kwargs),
        seed=seed,
        steps=setting.steps,
        questions_per_step=setting.questions_per_step,
        rollouts_per_question=setting.rollouts_per_question,
        max_new_tokens=setting.max_new_tokens,
        lr=setting.lr,
        warmup_steps=0,
        temperature=1.0,
        eval_every=setting.eval_every,
        eval_tasks=setting.eval_tasks,
        eval_k=setting.eval_k,
        eval_temperature=1.0,
        checkpoint_every=0,
        keep_checkpoints=1,
        output_dir=str(run_dir),
        progress=sys.stderr.isatty(),
        **setting.extra,
        **{**fields, **(setting.sdpo_extra if algorithm != "grpo" else {})},
    )
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    series: dict[str, list[float]] = {}
    for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        for key in _LOGGED:
            if isinstance(record.get(key), (int, float)):
                series.setdefault(key, []).append(float(record[key]))
    train_lengths = series.get("rollout/response_tokens_mean", [])
    step_times = series.get("timing/step", [])
    evals = [
        {
            "step": int(e["step"]),
            "generations": int(e["generations"]),
            "accuracy": float(e["eval/accuracy"]),
            "response_tokens": float(e.get("eval/response_tokens_mean", math.nan)),
            "seconds": float(e.get("timing/eval", math.nan)),
        }
        for e in result.evals
    ]
    record = {
        "algorithm": algorithm,
        "seed": seed,
        "generations": result.generations,
        "evals": evals,
        "train_response_tokens_mean": _mean(train_lengths),
        "step_seconds_mean": _mean(step_times),
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "machine": machine(),
        "step_means": {key: _mean(values) for key, values in series.items()},
        "run_dir": str(run_dir),
    }
    done.write_text(json.dumps(record, indent=2), encoding="utf-8")
    return record


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def mean_curve(records: Sequence[dict[str, Any]]) -> list[tuple[int, float]]:
    """Seed-mean held-out accuracy at each evaluation point all seeds share."""
    return [(p["generations"], p["mean"]) for p in curve_spread(records)]


def curve_spread(records: Sequence[dict[str, Any]]) -> list[dict[str, float]]:
    """Per evaluation point all seeds share: mean, sample std (0 for one seed), min and max."""
    by_gen: dict[int, list[float]] = {}
    for r in records:
        for e in r["evals"]:
            by_gen.setdefault(e["generations"], []).append(e["accuracy"])
    points = []
    for gens, accs in sorted(by_gen.items()):
        if len(accs) != len(records):
            continue
        points.append(
            {
                "generations": gens,
                "mean": statistics.fmean(accs),
                "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                "min": min(accs),
                "max": max(accs),
            }
        )
    return points


def reach_spread(records: Sequence[dict[str, Any]], target: float) -> dict[str, Any]:
    """Generations each seed's own curve needs to reach ``target``: per seed, mean ± std."""
    per_seed = {
        r["seed"]: generations_to_reach(
            [(e["generations"], e["accuracy"]) for e in r["evals"]], target
        )
        for r in records
    }
    reached = [float(g) for g in per_seed.values() if g is not None]
    return {
        "per_seed": per_seed,
        "seeds_reaching": len(reached),
        "seeds": len(per_seed),
        "mean": statistics.fmean(reached) if reached else None,
        "std": statistics.stdev(reached) if len(reached) > 1 else (0.0 if reached else None),
    }


def generations_to_reach(
    curve: Sequence[tuple[int, float]], target: float, *, interpolate: bool = False
) -> float | None:
    """Generations at which ``curve`` first reaches ``target`` accuracy, or None if never.

    Without ``interpolate``: the first evaluation point with accuracy >= ``target``. With it:
    the linear interpolation between that point and the one before (finer than the grid).
    """
    previous: tuple[int, float] | None = None
    for gens, acc in curve:
        if acc >= target - 1e-12:
            if not interpolate or previous is None or acc == previous[1]:
                return gens
            g0, a0 = previous
            return g0 + (target - a0) / (acc - a0) * (gens - g0)
        previous = (gens, acc)
    return None


def _ratio(numerator: float, reach: float | None) -> float | None:
    if reach is None:
        return None
    return numerator / reach if reach > 0 else math.inf


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Final accuracies, lengths and generations-to-GRPO's-final-accuracy per method."""
    summary: dict[str, Any] = {}
    for algo, records in runs.items():
        curve = mean_curve(records)
        finals = [r["evals"][-1] for r in records if r["evals"]]
        summary[algo] = {
            "curve": curve,
            "spread": curve_spread(records),
            "base_accuracy": curve[0][1] if curve else math.nan,
            "final_accuracy": curve[-1][1] if curve else math.nan,
            "final_eval_response_tokens": _mean([e["response_tokens"] for e in finals]),
            "train_response_tokens_mean": _mean([r["train_response_tokens_mean"] for r in records]),
            "budget_generations": max((r["generations"] for r in records), default=0),
            "wall_seconds_mean": _mean([r["wall_seconds"] for r in records]),
            "step_seconds_mean": _mean([r["step_seconds_mean"] for r in records]),
            "seeds": [r["seed"] for r in records],
        }
    grpo = summary.get("grpo")
    if grpo is None:
        return summary
    target = grpo["final_accuracy"]
    grpo["improved_over_base"] = bool(target > grpo["base_accuracy"])
    grpo_reach = generations_to_reach(grpo["curve"], target)
    grpo["generations_to_own_final"] = grpo_reach
    for algo, s in summary.items():
        # how the seeds spread: each seed's own curve against the same target
        s["per_seed_generations_to_grpo_final"] = reach_spread(runs[algo], target)
        if algo == "grpo":
            continue
        reach = generations_to_reach(s["curve"], target)
        s["generations_to_grpo_final"] = reach
        s["generations_to_grpo_final_interpolated"] = generations_to_reach(
            s["curve"], target, interpolate=True
        )
        # the paper's figure: GRPO's whole budget over SDPO's generations to its accuracy
        s["ratio_vs_grpo"] = _ratio(grpo["budget_generations"], reach)
        # stricter: against the point where GRPO itself first got there (it may plateau early)
        s["ratio_vs_grpo_first_reach"] = _ratio(grpo_reach or 0, reach) if grpo_reach else None
    return summary


def plot(runs: dict[str, list[dict[str, Any]]], summary: dict[str, Any], path: Path) -> None:
    """Draw held-out accuracy and response length against generations into one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_len) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    for i, (algo, records) in enumerate(runs.items()):
        color = f"C{i}"
        for r in records:
            xs = [e["generations"] for e in r["evals"]]
            ax_acc.plot(xs, [e["accuracy"] for e in r["evals"]], color=color, alpha=0.25, lw=1)
            ax_len.plot(xs, [e["response_tokens"] for e in r["evals"]], color=color, alpha=0.8)
        curve = summary[algo]["curve"]
        spread = summary[algo]["spread"]
        ax_acc.fill_between(
            [p["generations"] for p in spread],
            [p["mean"] - p["std"] for p in spread],
            [p["mean"] + p["std"] for p in spread],
            color=color,
            alpha=0.12,
            lw=0,
        )
        ax_acc.plot(
            [g for g, _ in curve],
            [a for _, a in curve],
            color=color,
            marker="o",
            lw=2,
            label=f"{LABELS.get(algo, algo)} (n={len(records)})",
        )
    if "grpo" in summary:
        ax_acc.axhline(
            summary["grpo"]["final_accuracy"], color="C0", ls="--", lw=1, label="GRPO final"
        )
    ax_acc.set_title("Held-out accuracy (seed mean ± std; thin: per seed)")
    ax_acc.set_xlabel("training generations")
    ax_acc.set_ylabel("accuracy (avg@k)")
    ax_acc.grid(alpha=0.3)
    ax_acc.legend(fontsize=8)
    ax_len.set_title("Held-out response length")
    ax_len.set_xlabel("training generations")
    ax_len.set_ylabel("tokens")
    ax_len.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _fmt_reach(s: dict[str, Any], grpo: dict[str, Any]) -> str:
    reach = s.get("generations_to_grpo_final")
    if reach is None:
        return f"not reached within {grpo['budget_generations']} generations (ratio < 1)"
    if reach == 0:
        return "0 (its base accuracy already matches GRPO's final accuracy)"
    text = (
        f"{reach:.0f} generations (interpolated {s['generations_to_grpo_final_interpolated']:.0f})"
        f"; ratio {s['ratio_vs_grpo']:.2f}x vs GRPO's budget {grpo['budget_generations']}"
    )
    first = s.get("ratio_vs_grpo_first_reach")
    if first is not None:
        text += f", {first:.2f}x vs GRPO's own first reach ({grpo['generations_to_own_final']:.0f})"
    return text


def report_lines(summary: dict[str, Any], info: dict[str, Any], setting: Setting) -> list[str]:
    """The human-readable result, one line each."""
    lines = [
        f"machine: {info['cpu_count']} CPUs, torch threads {info['torch_threads']}, "
        f"accelerator {info['accelerator']}, torch {info['torch']}, "
        f"load avg at start {info.get('load_avg_1m', float('nan')):.1f}",
        f"env {setting.env} {json.dumps(setting.env_kwargs)}; {setting.steps} steps x "
        f"{setting.questions_per_step} questions x {setting.rollouts_per_question} rollouts "
        f"= {setting.generations} generations per run; lr {setting.lr}; "
        f"eval {setting.eval_tasks} tasks x {setting.eval_k} every {setting.eval_every} steps",
    ]
    for algo, s in summary.items():
        eval_len, train_len = s["final_eval_response_tokens"], s["train_response_tokens_mean"]
        lines.append(
            f"{LABELS.get(algo, algo):34s} accuracy {s['base_accuracy']:.3f} -> "
            f"{s['final_accuracy']:.3f}; response tokens: eval {eval_len:.1f}, "
            f"train mean {train_len:.1f}; {s['step_seconds_mean']:.1f} s/step, "
            f"{s['wall_seconds_mean']:.0f} s/run (seeds {s['seeds']})"
        )
        points = ", ".join(
            f"{p['generations']}: {p['mean']:.3f} ± {p['std']:.3f} [{p['min']:.3f}, {p['max']:.3f}]"
            for p in s.get("spread", [])
        )
        lines.append(f"    held-out accuracy by generations (mean ± std [min, max]): {points}")
    grpo = summary.get("grpo")
    if grpo is not None:
        if not 0.05 <= grpo["base_accuracy"] <= 0.9:
            lines.append(
                f"warning: the base accuracy {grpo['base_accuracy']:.3f} is outside [0.05, 0.9]: "
                "too few (or too many) successes to learn from; pick an easier or harder env "
                "with --env / --env-kwargs"
            )
        if not grpo["improved_over_base"]:
            lines.append(
                "note: GRPO's final accuracy is not above its base accuracy, so 'reaching' it "
                "says little about sample efficiency"
            )
        for algo, s in summary.items():
            if algo != "grpo":
                lines.append(
                    f"{LABELS.get(algo, algo)} reaches GRPO's final accuracy "
                    f"{grpo['final_accuracy']:.3f}: {_fmt_reach(s, grpo)}"
                )
        for algo, s in summary.items():
            lines.append(f"{LABELS.get(algo, algo)}, per seed: {_fmt_seed_reach(s, grpo)}")
    return lines


def _fmt_seed_reach(s: dict[str, Any], grpo: dict[str, Any]) -> str:
    spread = s["per_seed_generations_to_grpo_final"]
    seeds = ", ".join(
        f"seed {seed}: {'never' if g is None else f'{g:.0f}'}"
        for seed, g in spread["per_seed"].items()
    )
    if spread["mean"] is None:
        return f"no seed reaches {grpo['final_accuracy']:.3f} ({seeds})"
    return (
        f"{spread['seeds_reaching']}/{spread['seeds']} seeds reach "
        f"{grpo['final_accuracy']:.3f}, after {spread['mean']:.0f} ± {spread['std']:.0f} "
        f"generations ({seeds})"
    )


def resolve_setting(args: argparse.Namespace) -> Setting:
    """The chosen setting with the command line's overrides applied."""
    setting = SETTINGS["quick" if args.quick else args.setting]
    changes: dict[str, Any] = {}
    for name in (
        "steps",
        "questions_per_step",
        "rollouts_per_question",
        "max_new_tokens",
        "eval_every",
        "eval_tasks",
        "eval_k",
        "lr",
        "env",
    ):
        value = getattr(args, name)
        if value is not None:
            changes[name] = value
    if args.seeds is not None:
        changes["seeds"] = tuple(args.seeds)
    if args.env_kwargs is not None:
        changes["env_kwargs"] = json.loads(args.env_kwargs)
    if args.sdpo_overrides is not None:
        changes["sdpo_extra"] = json.loads(args.sdpo_overrides)
    return dataclasses.replace(setting, **changes)


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(
        description="GRPO vs SDPO vs SDPO-SRF: held-out accuracy against generations."
    )
    p.add_argument("--setting", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--quick", action="store_true", help="a few-minute smoke run")
    p.add_argument("--model", default="smollm2-135m", help="model name or local HF folder")
    p.add_argument("--out", default="runs/learning_efficiency", help="output folder")
    p.add_argument(
        "--algorithms", nargs="+", choices=ALGORITHMS, default=list(ALGORITHMS), metavar="ALGO"
    )
    p.add_argument("--seeds", nargs="+", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--questions-per-step", type=int, default=None)
    p.add_argument("--rollouts-per-question", type=int, default=None)
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--eval-every", type=int, default=None)
    p.add_argument("--eval-tasks", type=int, default=None)
    p.add_argument("--eval-k", type=int, default=None)
    p.add_argument("--lr", type=float, default=None, help="learning rate of every method")
    p.add_argument("--env", default=None, help="registered env id")
    p.add_argument("--env-kwargs", default=None, help="JSON keyword arguments of the env")
    p.add_argument(
        "--sdpo-overrides",
        default=None,
        help="JSON config fields for both SDPO variants only, e.g. '{\"grpo_mix\": 0.9}'",
    )
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument(
        "--reuse", action="store_true", help="keep finished runs found in --out (resume)"
    )
    p.add_argument(
        "--keep-models",
        action="store_true",
        help="keep each run's final model and checkpoint (deleted by default: ~2 GB per run)",
    )
    p.add_argument(
        "--from-json",
        default=None,
        metavar="PATH",
        help="train nothing: print the per-run curves and the summary of a stored "
        "learning_efficiency.json (e.g. docs/learning_efficiency_cpu.json)",
    )
    return p


def print_stored(path: Path) -> dict[str, Any]:
    """Print a stored result's per-run curves and its summary, recomputed from the runs."""
    stored = json.loads(path.read_text(encoding="utf-8"))
    names = {f.name for f in dataclasses.fields(Setting)}
    config = {k: v for k, v in stored["config"].items() if k in names}
    setting = Setting(**config | {"seeds": tuple(config["seeds"])})
    print(f"stored result {path}: {stored['command']}")
    for algo, records in stored["runs"].items():
        for r in records:
            points = " ".join(
                f"{e['generations']}:{e['accuracy']:.3f} ({e['response_tokens']:.1f} tokens)"
                for e in r["evals"]
            )
            print(f"  {algo} seed {r['seed']}: held-out accuracy by generations {points}")
    summary = summarize(stored["runs"])
    for line in report_lines(summary, stored["machine"], setting):
        print(line)
    return summary


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print and return the results."""
    args = build_parser().parse_args(argv)
    if args.from_json:
        return {"summary": print_stored(Path(args.from_json))}
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    setting = resolve_setting(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = machine()
    print(f"learning efficiency: {', '.join(args.algorithms)}; output {out}", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {a: [] for a in args.algorithms}
    results: dict[str, Any] = {}
    # seed-major order: an interrupted run still leaves complete seeds to compare
    for seed in setting.seeds:
        for algo in args.algorithms:
            record = run_one(algo, seed, setting, args.model, out, reuse=args.reuse)
            if not args.keep_models:
                for sub in ("final", "checkpoints"):
                    shutil.rmtree(Path(record["run_dir"]) / sub, ignore_errors=True)
            runs[algo].append(record)
            accs = " ".join(f"{e['generations']}:{e['accuracy']:.3f}" for e in record["evals"])
            print(
                f"  {algo} seed {seed}: {record['wall_seconds']:.0f} s; "
                f"held-out accuracy by generations {accs}",
                flush=True,
            )
            summary = summarize({a: r for a, r in runs.items() if r})
            results = {
                "setting": "quick" if args.quick else args.setting,
                "config": {**dataclasses.asdict(setting), "model": args.model},
                "machine": info,
                "runs": runs,
                "summary": summary,
                "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
            }
            (out / "learning_efficiency.json").write_text(
                json.dumps(results, indent=2, default=str), encoding="utf-8"
            )
    plot(runs, results["summary"], out / "learning_efficiency.png")
    # the per-run diagnostics (training reward, lengths, divergence) overlaid by rlrf's report
    from algorithms.report import write_report

    write_report([r["run_dir"] for records in runs.values() for r in records], out / "report")
    for line in report_lines(results["summary"], info, setting):
        print(line)
    print(f"plot: {out / 'learning_efficiency.png'}; numbers: {out / 'learning_efficiency.json'}")
    return results


if __name__ == "__main__":
    main()
