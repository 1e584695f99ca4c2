"""Stability alarms: false alarms on runs that learn, detection delay on induced collapses.

The stability monitors (:mod:`algorithms.engine.monitors`) are worth acting on
(``on_alarm: rollback``) only if they stay quiet on runs that learn and fire soon after a
run starts to collapse. This benchmark measures both, for every method of
``benchmarks/learning_efficiency.py`` (``grpo``, ``sdpo-mix``, ``sdpo``, ``sdpo-srf``: the
same presets and fields), on a toy task that a tiny random-weight model really solves:

* the model: :func:`algorithms.testing.tiny_model` whose LM head is given a bias of -4 on
  every token but ``a``, ``b`` and end-of-turn, so that it starts near 15 % reward on
  ``TargetCharEnv(targets="a")`` (the reward is the share of ``a`` in the response) and
  climbs to 0.7-1.0 within 20 steps at lr 1e-2: a task being solved, whose entropy falls as
  the policy becomes certain (the case where the entropy alarm fired on a healthy run);
* healthy runs: ``--steps`` steps at lr 1e-2; every alarm is a false alarm;
* induced collapses: the same run, whose learning rate jumps to ``--collapse-lr`` (1.0,
  100x) after step ``--kick`` (8): the weights are wrecked within a few steps. The delay of
  an alarm is its step minus the kick (1 = raised on the metrics of the first step trained
  at the high rate); an alarm before the kick is a false alarm.

The per-step metrics of every run are stored (``--json``) and replayed through
:func:`algorithms.engine.monitors.scan` (what ``rlrf report`` does), so thresholds can be
compared without training again (``--from-json``); a few candidate thresholds are printed
beside the defaults. Stored run folders (``metrics.jsonl``: the learning-efficiency runs of
``benchmarks/learning_efficiency.py`` when they are at hand) are replayed with ``--replay
DIR...``.

Run::

    python benchmarks/alarms.py --json benchmarks/results/alarms.json \\
        | tee benchmarks/results/alarms.txt
    python benchmarks/alarms.py --from-json benchmarks/results/alarms.json
    python benchmarks/alarms.py --replay runs/learning_efficiency/*-seed*
    python benchmarks/alarms.py --smoke

About a minute on 2 idle CPU cores (3 seeds x 4 methods x 2 runs x 16 steps).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from algorithms.engine.monitors import MONITORED, MonitorThresholds, scan
from benchmarks.learning_efficiency import ALGORITHMS, METHODS

KEPT = (*MONITORED, "rollout/reward_mean")
"""The per-step metrics stored for each run (what the monitors read, and the reward)."""

CANDIDATES: dict[str, MonitorThresholds] = {
    "defaults": MonitorThresholds(),
    "before (issue 28)": MonitorThresholds(
        entropy_floor=0.25, divergence_factor=5.0, divergence_min=0.01, divergence_history=3
    ),
    "entropy floor 0.1": dataclasses.replace(MonitorThresholds(), entropy_floor=0.1),
    "entropy floor 0.4": dataclasses.replace(MonitorThresholds(), entropy_floor=0.4),
    "divergence x10": dataclasses.replace(MonitorThresholds(), divergence_factor=10.0),
    "divergence history 3": dataclasses.replace(MonitorThresholds(), divergence_history=3),
}
"""Thresholds replayed over the same runs (the defaults first)."""


def _model(seed: int) -> tuple[Any, Any]:
    """A tiny random model biased toward ``a``, ``b`` and end-of-turn (see the docstring)."""
    from algorithms.testing import favour_tokens, tiny_model, tiny_tokenizer

    tok = tiny_tokenizer()
    return favour_tokens(tiny_model(seed), tok, ("a", "b", "<|im_end|>")), tok


def run_one(
    method: str, seed: int, steps: int, lr: float, kick: int | None, collapse_lr: float, out: Path
) -> list[dict[str, float]]:
    """Train one method; return its per-step metrics (only :data:`KEPT`)."""
    from algorithms.engine.trainer import Trainer
    from algorithms.registry import resolve_config
    from algorithms.testing import TargetCharEnv

    preset, fields = METHODS[method]
    overrides = dict(
        steps=steps, questions_per_step=4, rollouts_per_question=4, max_new_tokens=12,
        eval_every=0, checkpoint_every=0, progress=False, lr=lr, warmup_steps=0, seed=seed,
        output_dir=str(out / f"{method}-seed{seed}-{'collapse' if kick else 'healthy'}"),
        **fields,
    )  # fmt: skip
    config = resolve_config(None, algorithm=preset, overrides=overrides)
    model, tok = _model(seed)
    trainer = Trainer(config, env=TargetCharEnv(targets="a"), model=model, tokenizer=tok)
    original = trainer.train_step

    def step() -> dict[str, Any]:
        if kick is not None and trainer.step == kick:
            for group in trainer.optimizer.param_groups:
                group["lr"] = collapse_lr
            trainer.scheduler.base_lrs = [collapse_lr] * len(trainer.optimizer.param_groups)
        return original()

    trainer.train_step = step  # type: ignore[method-assign]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    records = []
    for line in (Path(config.output_dir) / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("step", 0) > 0:
            records.append({"step": record["step"], **{k: record[k] for k in KEPT if k in record}})
    return records


def _runs(args: argparse.Namespace) -> list[dict[str, Any]]:
    out = Path(args.out)
    runs = []
    for method in args.methods:
        for seed in args.seeds:
            for kick in (None, args.kick):
                t0 = time.perf_counter()
                records = run_one(method, seed, args.steps, args.lr, kick, args.collapse_lr, out)
                runs.append({"method": method, "seed": seed, "kick": kick, "records": records})
                print(
                    f"# {method} seed {seed} {'collapse' if kick else 'healthy'}: "
                    f"{time.perf_counter() - t0:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
    return runs


def summarize(runs: Sequence[dict[str, Any]], thresholds: MonitorThresholds) -> list[str]:
    """False alarms per method and detection delays, as printed lines."""
    lines = []
    methods = list(dict.fromkeys(r["method"] for r in runs))
    for method in methods:
        healthy = [r for r in runs if r["method"] == method and not r["kick"]]
        induced = [r for r in runs if r["method"] == method and r["kick"]]
        false = []  # every alarm of a healthy run, and those before the kick
        delays: dict[str, list[int]] = {}
        missed = 0
        for r in healthy:
            false += [f"{a.kind}@{a.step}" for a in scan(r["records"], thresholds)]
        for r in induced:
            alarms = scan(r["records"], thresholds)
            false += [f"{a.kind}@{a.step}" for a in alarms if a.step + a.steps - 1 <= r["kick"]]
            # an alarm is raised at its step, or after its streak (learning-signal alarms)
            after = [a for a in alarms if a.step + a.steps - 1 > r["kick"]]
            if not after:
                missed += 1
            for a in after:
                delays.setdefault(a.kind, []).append(a.step + a.steps - 1 - r["kick"])
            if after:
                first = min(a.step + a.steps - 1 for a in after)
                delays.setdefault("first", []).append(first - r["kick"])
        steps = sum(len(r["records"]) for r in healthy) + sum(
            r["kick"] for r in induced if r["kick"]
        )
        first = delays.pop("first", [])
        rewards = [[x.get("rollout/reward_mean", 0.0) for x in r["records"]] for r in healthy]
        start = statistics.fmean(v for rs in rewards for v in rs[:3]) if rewards else 0.0
        end = statistics.fmean(v for rs in rewards for v in rs[-3:]) if rewards else 0.0
        per_kind = ", ".join(
            f"{k} {statistics.median(v):g} ({len(v)}/{len(induced)})"
            for k, v in sorted(delays.items())
        )
        lines.append(
            f"  {method:<9} healthy reward {start:.2f} -> {end:.2f} (first/last 3 steps); "
            f"false alarms {len(false)} in {steps} healthy steps"
            f"{' (' + ', '.join(false) + ')' if false else ''}; collapses caught "
            f"{len(induced) - missed}/{len(induced)}, first alarm after "
            f"{_median(first)} steps (max {max(first, default='-')}); by kind: "
            f"{per_kind or 'none'}"
        )
    return lines


def _median(values: Sequence[int]) -> str:
    return f"{statistics.median(values):g}" if values else "-"


def replay(folders: Sequence[str], thresholds: MonitorThresholds) -> list[str]:
    """The alarms :func:`scan` finds in stored run folders (their ``metrics.jsonl``)."""
    lines = []
    for folder in folders:
        path = Path(folder) / "metrics.jsonl"
        records = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        alarms = scan(records, thresholds)
        named = ", ".join(f"{a.kind}@{a.step}" for a in alarms) or "none"
        lines.append(f"  {folder}: {len(records)} records, alarms: {named}")
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", default=list(ALGORITHMS), choices=ALGORITHMS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--kick", type=int, default=8, help="the last step at the healthy lr")
    p.add_argument("--collapse-lr", type=float, default=1.0)
    p.add_argument("--out", default="runs/alarms", help="run folders")
    p.add_argument("--json", default=None, help="store the runs' per-step metrics here")
    p.add_argument("--from-json", default=None, help="replay stored runs instead of training")
    p.add_argument("--replay", nargs="*", default=None, help="stored run folders to scan")
    p.add_argument("--smoke", action="store_true", help="a few seconds: 2 methods, 3 steps")
    args = p.parse_args(argv)
    if args.smoke:
        import tempfile

        args.methods, args.seeds, args.steps, args.kick = ["grpo", "sdpo"], [0], 3, 2
        args.out = tempfile.mkdtemp(prefix="rlrf-alarms-")
    if args.replay is not None:
        print("Stored runs replayed through monitors.scan (default thresholds):")
        print("\n".join(replay(args.replay, MonitorThresholds())))
        return
    if args.from_json:
        runs = json.loads(Path(args.from_json).read_text())["runs"]
    else:
        import torch

        torch.set_num_threads(1)
        runs = _runs(args)
        if args.json:
            Path(args.json).write_text(json.dumps({"args": vars(args), "runs": runs}))
    kicks = {r["kick"] for r in runs if r["kick"]}
    print(
        f"{len(runs)} runs: {len({r['method'] for r in runs})} methods x "
        f"{len({r['seed'] for r in runs})} seeds, healthy and with the lr raised to "
        f"{args.collapse_lr:g} after step {sorted(kicks)} (delay = alarm step - that step)"
    )
    for name, thresholds in CANDIDATES.items():
        print(f"\n{name}: {thresholds}")
        print("\n".join(summarize(runs, thresholds)))


if __name__ == "__main__":
    main()
