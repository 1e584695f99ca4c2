"""Run reports: Markdown plus PNG plots from one or more run folders.

A run folder (written by the trainer) holds ``metrics.jsonl`` (one JSON object per line, each
with ``step``, ``rollout/generations`` (responses sampled so far) and namespaced metrics),
``config.yaml`` and ``trajectories.jsonl``. :func:`write_report` draws

* held-out accuracy and training reward against generations,
* mean response length against generations,
* the teacher-student divergence against generations,
* the student's entropy and the gradient norm against generations,

and writes ``report.md`` beside the plots, with the headline numbers, a stability section
(first / last / min / max of every monitored signal and the alarms of
:mod:`algorithms.engine.monitors`, replayed from ``metrics.jsonl``: entropy collapse, length
blow-up, divergence spike, each with its step) and a few example rollouts with their
feedback and teacher context. Several runs are overlaid on the same
axes (``rlrf report RUN_A RUN_B --output-dir cmp/``) for comparisons.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from algorithms.engine.guard import ACTION, live_records
from algorithms.engine.monitors import MONITORED, scan
from rlrf.errors import RLRFError
from rlrf.trajectory import Group, Trajectory, read_trajectories

__all__ = ["PLOTS", "RunMetrics", "load_run", "write_report"]


#: (file name, title, y label, metric keys tried in order) for each plot.
PLOTS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("accuracy.png", "Held-out accuracy", "accuracy (avg@k)", ("eval/accuracy",)),
    ("reward.png", "Training reward", "mean reward", ("rollout/reward_mean",)),
    (
        "response_length.png",
        "Response length",
        "tokens",
        ("rollout/response_tokens_mean", "eval/response_tokens_mean"),
    ),
    (
        "divergence.png",
        "Teacher-student divergence",
        "divergence (token mean)",
        ("train/divergence",),
    ),
    ("entropy.png", "Student entropy (distilled tokens)", "entropy (nats)", ("train/entropy",)),
    ("grad_norm.png", "Gradient norm (before clipping)", "L2 norm", ("train/grad_norm",)),
)


@dataclass
class RunMetrics:
    """The metrics of one run folder."""

    path: Path
    name: str
    records: list[dict[str, Any]]
    config: dict[str, Any]

    def series(self, key: str) -> tuple[list[float], list[float]]:
        """Return (generations, values) of every record holding a finite ``key``."""
        xs, ys = [], []
        for r in self.records:
            v = r.get(key)
            if isinstance(v, (int, float)) and math.isfinite(v):
                xs.append(float(_generations(r)))
                ys.append(float(v))
        return xs, ys

    def first_last(self, key: str) -> tuple[float, float] | None:
        """First and last value of ``key``, or None when never logged."""
        _, ys = self.series(key)
        return (ys[0], ys[-1]) if ys else None


def _generations(record: dict[str, Any]) -> float:
    for key in ("generations", "rollout/generations"):
        if isinstance(record.get(key), (int, float)):
            return float(record[key])
    return 0.0 if record.get("step", 0) == 0 else float("nan")


def load_run(path: str | os.PathLike[str]) -> RunMetrics:
    """Read a run folder's ``metrics.jsonl`` (and ``config.yaml`` when present)."""
    root = Path(path)
    metrics = root / "metrics.jsonl"
    if not metrics.is_file():
        raise RLRFError(
            f"{root} is not a run folder: {metrics.name} is missing (pass the folder that "
            "`rlrf train` or `make demo` printed)"
        )
    records = []
    lines = metrics.read_text(encoding="utf-8").splitlines()
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if lineno == len(lines):
                break  # a run killed mid-write: keep the complete lines
            raise RLRFError(f"{metrics}:{lineno} is not valid JSON") from None
    config: dict[str, Any] = {}
    cfg_path = root / "config.yaml"
    if cfg_path.is_file():
        import yaml

        config = yaml.safe_load(cfg_path.read_text()) or {}
    name = str(config.get("run_name") or config.get("algorithm") or root.name)
    return RunMetrics(root, name, records, config)


def _plot(runs: Sequence[RunMetrics], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for filename, title, ylabel, keys in PLOTS:
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        drew = False
        for run in runs:
            for key in keys:
                xs, ys = run.series(key)
                if xs:
                    label = run.name if len(keys) == 1 else f"{run.name} ({key})"
                    ax.plot(xs, ys, marker="o", markersize=3, label=label)
                    drew = True
        if not drew:
            plt.close(fig)
            continue
        if filename == "accuracy.png":  # a share: never below 0 or above 1
            ax.set_ylim(0.0, 1.0)
        ax.set_title(title)
        ax.set_xlabel("generations (responses sampled)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / filename)
        plt.close(fig)
        written.append(filename)
    return written


#: The heading of an alarm kind in the report's summary (stability alarms otherwise).
_ALARM_LABEL = {
    kind: "Learning-signal warning"
    for kind in ("no_reward_signal", "zero_gradient", "no_trained_rows", "frozen_weights")
}


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _turn_context(t: Trajectory, k: int) -> Any:
    """Turn ``k``'s teacher context: ``turn.info`` (multi-turn), else the trajectory's (first)."""
    if "teacher_context" in t.turns[k].info:
        return t.turns[k].info["teacher_context"]
    return t.info.get("teacher_context") if k == 0 else None


def _text_block(title: str, text: str, limit: int) -> list[str]:
    return [title, "```text", text[:limit], "```"]


_EXAMPLE_TURNS = 6
"""Turns of a multi-turn example shown (the rest are counted)."""


def _example(t: Trajectory) -> str:
    """One rollout as Markdown: each turn with its own response, feedback and teacher context.

    The step is metrics.jsonl's: the update these rollouts fed, one after the
    ``policy_version`` (the updates made before they were sampled; with vLLM weights synced
    less often than every step, or after a rollback, the two drift apart).
    """
    turns = len(t.turns)
    head = f"**Task {t.task_id}** (step {t.policy_version + 1}, reward {t.reward}"
    lines = [head + (f", {turns} turns)" if turns > 1 else ")"), ""]
    for k, turn in enumerate(t.turns[:_EXAMPLE_TURNS]):
        context = _turn_context(t, k)
        if turns > 1:
            lines += [f"Turn {k + 1} (reward {turn.reward}):", ""]
        lines += _text_block("Response:", turn.response, 800)
        feedback = "\n".join(f.text for f in turn.feedback)
        lines += _text_block("Feedback:", feedback, 800) if feedback else ["Feedback: none", ""]
        if context:
            text = context[-1]["content"] if isinstance(context, list) else str(context)
            lines += _text_block("Teacher context (last message):", text, 1200)
        else:
            lines += ["Teacher context: none (no solution and no feedback for this turn)", ""]
    if turns > _EXAMPLE_TURNS:
        lines.append(f"({turns - _EXAMPLE_TURNS} more turns not shown)")
    return "\n".join(lines).rstrip()


def _examples(run: RunMetrics, limit: int = 2) -> list[str]:
    path = run.path / "trajectories.jsonl"
    if not path.is_file():
        return []
    shown: list[str] = []
    for record in read_trajectories(path):
        trajectories = record.trajectories if isinstance(record, Group) else [record]
        for t in trajectories:
            if not isinstance(t, Trajectory) or not t.feedback:
                continue
            if not any(_turn_context(t, k) for k in range(len(t.turns))):
                continue
            shown.append(_example(t))
            if len(shown) >= limit:
                return shown
    return shown


def _stability(run: RunMetrics) -> list[str]:
    """The monitored signals' summary and the alarms of one run, as Markdown lines."""
    rows = []
    for key in MONITORED:
        _, ys = run.series(key)
        if ys:
            rows.append(
                f"| `{key}` | {_fmt(ys[0])} | {_fmt(ys[-1])} | {_fmt(min(ys))} | {_fmt(max(ys))} |"
            )
    if not rows:
        return []
    lines = [f"## {run.name}: stability monitors", ""]
    lines += ["| signal | first | last | min | max |", "| --- | --- | --- | --- | --- |", *rows, ""]
    alarms = scan(live_records(run.records))  # a rollback's discarded steps are not replayed
    if alarms:
        lines += [f"- **warning**, {a.message()}" for a in alarms]
    else:
        lines.append(
            "No alarm: no entropy collapse, length blow-up or divergence spike, and no "
            "streak without reward signal, gradient, trained rows or weight movement "
            "(thresholds in `algorithms/engine/monitors.py`)."
        )
    actions = _actions(run)
    if actions:
        lines += ["", "What the run did about its alarms (`on_alarm`):", "", *actions]
    return [*lines, ""]


def _actions(run: RunMetrics) -> list[str]:
    """One Markdown line per ``alarm/action`` record (warn, stop, rollback; guard.py)."""
    lines = []
    for r in run.records:
        action = r.get(ACTION)
        if not isinstance(action, str):
            continue
        what = f"- step {r.get('step')}: {r.get('alarm/kind')} (step {r.get('alarm/step')}) -> "
        if action == "rollback":
            effects = r.get("alarm/effects") or []
            what += (
                f"**rolled back** to step {r.get('alarm/restored_step')} (rollback "
                f"{r.get('alarm/rollbacks')}"
                + (f"; {', '.join(map(str, effects))}" if effects else "")
                + ")"
            )
        elif action == "stop":
            what += f"**stopped**: {r.get('alarm/reason')}"
        else:
            what += action
        lines.append(what)
    return lines


def write_report(
    runs: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str] | None = None
) -> Path:
    """Write ``report.md`` and the PNG plots for ``runs``; return the report's path.

    With one run, the report goes to ``RUN/report/`` unless ``out`` is given; with several,
    ``out`` is required and the runs are overlaid.
    """
    if not runs:
        raise RLRFError("give at least one run folder")
    loaded = [load_run(r) for r in runs]
    names = [run.name for run in loaded]
    for run in loaded:
        if names.count(run.name) > 1:  # e.g. two SDPO variants: tell them apart by folder
            run.name = run.path.name
    if out is None:
        if len(loaded) > 1:
            raise RLRFError("comparing several runs needs --output-dir DIR for the combined report")
        out = loaded[0].path / "report"
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = _plot(loaded, out_dir)
    lines = ["# rlrf run report", ""]
    lines += [
        "| run | generations | held-out accuracy (first → last) | train reward (first → last) |"
    ]
    lines += ["| --- | --- | --- | --- |"]
    for run in loaded:
        finite = [g for g in map(_generations, run.records) if math.isfinite(g)]
        gens = int(max(finite, default=0))
        acc = run.first_last("eval/accuracy")
        rew = run.first_last("rollout/reward_mean")
        lines.append(
            f"| {run.name} | {gens} | {_fmt(acc and acc[0])} → {_fmt(acc and acc[1])} | "
            f"{_fmt(rew and rew[0])} → {_fmt(rew and rew[1])} |"
        )
    lines.append("")
    for run in loaded:  # the alarms up front; the details are in each run's stability section
        lines += [
            f"> **{_ALARM_LABEL.get(a.kind, 'Stability warning')} ({run.name})**: {a.message()}"
            for a in scan(live_records(run.records))
        ]
    if lines[-1].startswith(">"):
        lines.append("")
    for image in images:
        lines += [f"![{image}]({image})", ""]
    for run in loaded:
        if run.config:
            keys = (
                "algorithm",
                "env",
                "model",
                "steps",
                "questions_per_step",
                "rollouts_per_question",
            )
            shown = {k: run.config[k] for k in keys if k in run.config}
            if shown:
                lines += [f"## {run.name}: configuration", "", "```yaml"]
                lines += [f"{k}: {v}" for k, v in shown.items()] + ["```", ""]
        lines += _stability(run)
        examples = _examples(run)
        if examples:
            lines += [f"## {run.name}: example rollouts with feedback", ""]
            for ex in examples:
                lines += [ex, ""]
    report = out_dir / "report.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    return report
