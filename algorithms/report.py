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

A run folder may come from anyone, so its files are read as untrusted: a line or a file
that is not what rlrf writes (not UTF-8, not a JSON object, a number no float holds, nesting
deeper than :data:`MAX_DEPTH`, a YAML tag, a config that is not a mapping) is an
:class:`~rlrf.errors.RLRFError` naming ``file:line``, never a traceback; and the report is
written only into a real output folder: a folder or a file there that is a symbolic link is
refused, and each file is written beside its name and renamed into place, never through a
link.
"""

from __future__ import annotations

import contextlib
import io
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

__all__ = ["MAX_DEPTH", "PLOTS", "PLOTTABLE", "RunMetrics", "load_run", "write_report"]

#: Deepest nesting of arrays and objects a metrics line or ``config.yaml`` may have.
MAX_DEPTH = 100

#: Largest magnitude of a metric (or generation count) that is plotted and summarized.
PLOTTABLE = 1e100


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
        """Return (generations, values) of every record holding a finite ``key``.

        Values (and generations) beyond :data:`PLOTTABLE` are left out: no metric reaches
        them, and matplotlib cannot lay out an axis that wide.
        """
        xs, ys = [], []
        for r in self.records:
            v = r.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) <= PLOTTABLE:
                x = _generations(r)
                if not abs(x) > PLOTTABLE:  # NaN: not logged (matplotlib leaves a gap)
                    xs.append(x)
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
    """Read a run folder's ``metrics.jsonl`` (and ``config.yaml`` when present).

    Raises:
        RLRFError: the folder has no ``metrics.jsonl``, or a line of it or ``config.yaml``
            is not what rlrf writes (the message names ``file:line``).

    """
    root = Path(path)
    metrics = root / "metrics.jsonl"
    if not metrics.is_file():
        raise RLRFError(
            f"{root} is not a run folder: {metrics.name} is missing (pass the folder that "
            "`rlrf train` or `make demo` printed)"
        )
    records = _read_metrics(metrics)
    config: dict[str, Any] = {}
    cfg_path = root / "config.yaml"
    if cfg_path.is_file():
        config = _read_config(cfg_path)
    name = next(
        (_scalar(config[k]) for k in ("run_name", "algorithm") if _scalar(config.get(k))),
        root.name,
    )
    return RunMetrics(root, name, records, config)


def _scalar(value: Any) -> str:
    """A config value as one short line of text ("" for a list, a mapping, None...)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return ""
    text = value if isinstance(value, str) else repr(value)
    return " ".join(text.split())[:200]


def _too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether ``value`` nests lists and dicts deeper than ``limit`` (no recursion).

    Each container is visited once: YAML's aliases can share one (a "billion laughs") or
    make one hold itself.
    """
    stack, seen = [(value, 1)], set()
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)) and id(item) not in seen:
            if depth > limit:
                return True
            seen.add(id(item))
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


def _read_metrics(metrics: Path) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl``; a torn last line (a killed run) is left out."""
    try:
        data = metrics.read_bytes()
    except OSError as e:
        raise RLRFError(f"cannot read {metrics}: {e}") from e
    lines = data.split(b"\n")
    records = []
    for lineno, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        last = lineno == len(lines)  # no newline after it: maybe torn by a killed run
        try:
            record = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError) as e:  # bad JSON or UTF-8, 5000 digits, nesting
            if last and isinstance(e, (json.JSONDecodeError, UnicodeDecodeError)):
                break  # a run killed mid-write (maybe inside a character): keep the rest
            raise RLRFError(
                f"{metrics}:{lineno}: not a JSON line ({type(e).__name__}: {str(e)[:200]}); "
                "metrics.jsonl holds one JSON object per line as `rlrf train` writes it"
            ) from None
        problem = _bad_record(record)
        if problem:
            raise RLRFError(
                f"{metrics}:{lineno}: {problem}; metrics.jsonl holds one JSON object per line "
                "(`step` and named numbers) as `rlrf train` writes it. Was it edited?"
            )
        records.append(record)
    return records


def _bad_record(record: Any) -> str | None:
    """What makes a parsed metrics line unusable, or None."""
    if not isinstance(record, dict):
        return f"a {type(record).__name__}, not a JSON object"
    if _too_deep(record):
        return f"nested deeper than {MAX_DEPTH} levels"
    for key, value in record.items():
        if isinstance(value, int) and not isinstance(value, bool):
            try:
                float(value)
            except OverflowError:
                digits = len(str(abs(value))) if value.bit_length() < 14_000 else "over 4000"
                return f"{key[:80]!r} is an integer of {digits} digits, more than a float holds"
    return None


def _read_config(path: Path) -> dict[str, Any]:
    """``config.yaml`` as a mapping (YAML's safe subset: no tags that build objects)."""
    import yaml

    from algorithms.config import yaml_loader

    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise RLRFError(f"{path}:{line}: not valid UTF-8 ({e.reason})") from None
    except OSError as e:
        raise RLRFError(f"cannot read {path}: {e}") from e
    try:
        config = yaml.load(text, Loader=yaml_loader())  # as training reads it: 1e-5 a float
    except yaml.YAMLError as e:  # a !!python tag, bad syntax
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise RLRFError(
            f"{where}: not the YAML `rlrf train` writes ({problem[:200]}); tags such as "
            "!!python/... are never loaded"
        ) from None
    except (ValueError, RecursionError) as e:  # 5000-digit integers, deep nesting
        raise RLRFError(f"{path}: unreadable YAML ({type(e).__name__}: {str(e)[:200]})") from None
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise RLRFError(
            f"{path}:1: a {type(config).__name__}, not a mapping of options as `rlrf train` "
            "writes it"
        )
    if _too_deep(config):
        raise RLRFError(f"{path}: nested deeper than {MAX_DEPTH} levels; not an rlrf config")
    return config


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
                    label = label.replace("$", r"\$")  # not matplotlib's math markup
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
        png = io.BytesIO()
        fig.savefig(png, format="png")
        plt.close(fig)
        _write(out, filename, png.getvalue())
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


def _metrics_step(run: RunMetrics, version: int) -> int:
    """The metrics.jsonl step whose update rollouts of ``policy_version`` ``version`` fed.

    One after the updates made before they were sampled: ``version + 1`` less the steps
    earlier rollbacks threw away (the version counts them; guard.py). A rollback recorded
    at step s back to step r is earlier when ``version`` is at least s plus the steps
    discarded before it (the first version it sampled). With vLLM weights synced less often
    than every step, the version is the engine's, older than the step.
    """
    discarded, seen = 0, set()
    for r in run.records:
        step, restored = r.get("step"), r.get("alarm/restored_step")
        if r.get(ACTION) != "rollback" or not (isinstance(step, int) and isinstance(restored, int)):
            continue
        event = (str(r.get("alarm/rollbacks")), step, restored)  # one record per alarm acted on
        if event in seen:
            continue
        seen.add(event)
        if version < step + discarded:
            break
        discarded += step - restored
    return version - discarded + 1


def _example(t: Trajectory, step: int) -> str:
    """One rollout as Markdown: each turn with its own response, feedback and teacher context.

    ``step`` is metrics.jsonl's (:func:`_metrics_step`).
    """
    turns = len(t.turns)
    head = f"**Task {t.task_id}** (step {step}, reward {t.reward}"
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
            shown.append(_example(t, _metrics_step(run, t.policy_version)))
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
    out_dir = _output_dir(Path(out))
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
            shown = {k: _scalar(run.config[k]) for k in keys if _scalar(run.config.get(k))}
            if shown:
                lines += [f"## {run.name}: configuration", "", "```yaml"]
                lines += [f"{k}: {v}" for k, v in shown.items()] + ["```", ""]
        lines += _stability(run)
        examples = _examples(run)
        if examples:
            lines += [f"## {run.name}: example rollouts with feedback", ""]
            for ex in examples:
                lines += [ex, ""]
    _write(out_dir, "report.md", "\n".join(lines).encode("utf-8"))
    return out_dir / "report.md"


_OUTPUTS = ("report.md", *(filename for filename, *_ in PLOTS))


def _output_dir(out: Path) -> Path:
    """Create ``out``; refuse it, or a report file in it, when it is a symbolic link."""
    if out.is_symlink():
        raise RLRFError(
            f"output folder {out} is a symbolic link (to {os.readlink(out)}); rlrf report "
            "writes only into a real folder, so that a run folder from someone else cannot "
            "make it write elsewhere. Remove the link, or pass the folder you mean with "
            "--output-dir"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RLRFError(f"cannot create the output folder {out}: {e}") from e
    for name in _OUTPUTS:
        if (out / name).is_symlink():
            raise RLRFError(
                f"{out / name} is a symbolic link (to {os.readlink(out / name)}); rlrf report "
                "never writes through a link. Remove it and run again"
            )
    return out


def _write(out: Path, name: str, data: bytes) -> None:
    """Write ``out/name`` as a new file renamed into place: never through a symbolic link.

    The folder is opened without following a link (a folder swapped for one since
    :func:`_output_dir` is refused), and ``os.replace`` replaces a link at ``name`` rather
    than writing where it points.
    """
    tmp = f".{name}.{os.getpid()}.tmp"
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | nofollow
    folder = None
    try:
        if {os.open, os.replace} <= os.supports_dir_fd:
            folder = os.open(out, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | nofollow)
            fd = os.open(tmp, flags, 0o644, dir_fd=folder)
        else:
            fd = os.open(out / tmp, flags, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        if folder is None:
            os.replace(out / tmp, out / name)
        else:
            os.replace(tmp, name, src_dir_fd=folder, dst_dir_fd=folder)
    except OSError as e:
        with contextlib.suppress(OSError):
            if folder is None:
                os.unlink(out / tmp)
            else:
                os.unlink(tmp, dir_fd=folder)
        raise RLRFError(f"cannot write {out / name}: {e}") from e
    finally:
        if folder is not None:
            os.close(folder)
