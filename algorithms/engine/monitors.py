"""Stability monitors: the training signals that moved before published RL runs collapsed.

Users of other SDPO implementations report runs that collapse after a few hundred steps
(tool use with an 8B model, math at 3B; issue 18 of this project collects them), and RL on
language models in general is known to collapse through its entropy (the policy becomes
deterministic and stops exploring, Cui et al. 2025, "The Entropy Mechanism of Reinforcement
Learning for Reasoning Language Models"). The signals watched every step:

==============================  =====================================================
``train/divergence``            teacher-student divergence on the distilled tokens (SDPO)
``train/entropy``               student entropy on the distilled tokens (SDPO)
``rollout/response_tokens_mean``  mean response length (the trainer)
``rollout/teacher_signal_frac``   share of rollouts with a teacher signal (SDPO)
``train/grad_norm``             gradient norm before clipping (the trainer)
==============================  =====================================================

:class:`StabilityMonitor` raises an :class:`Alarm` (once per kind, naming the step) when

- **entropy collapse**: the entropy falls below ``entropy_floor`` (25 %) of its average over
  the first ``baseline_steps`` (5) steps that logged it;
- **length blow-up**: the mean response length exceeds ``length_factor`` (2x) its average
  over the first ``baseline_steps`` steps, and by at least ``length_min_increase`` (32)
  tokens, so that 3 -> 7 tokens on a toy task is not an alarm;
- **divergence spike**: the divergence exceeds ``divergence_factor`` (5x) the median of every
  earlier step's value (after ``divergence_history`` (5) of them) and ``divergence_min``
  (0.01 nats: below it the teacher and the student agree whatever the ratio). Five, not
  three: the divergence starts at 0 (the teacher is a copy of the student) and rises for a
  few steps in a healthy run, which a median of three early values called a spike.

:class:`LearningSignalMonitor` raises the alarms of a run that cannot learn, each after
``steps`` (3) steps in a row (once per kind, naming the first step of the streak):

- **no reward signal**: no group had differing rewards (``rollout/signal_groups_frac`` 0),
  so every group-relative advantage was zero;
- **zero gradient**: ``train/grad_norm`` was 0 on every optimizer step;
- **no trained rows**: ``rollout/trained_rows`` was 0 (every rollout failed, lacked a
  reward, or was dropped by the objective);
- **weights barely move**: ``train/update_ratio`` (``||Δθ|| / ||θ||`` of an optimizer step)
  stayed below ``update_ratio_min`` (1e-6). Measured on SmolLM2-135M (fp32, N = 134.5M
  parameters, ``||θ||`` = 2120): AdamW's first step moves it by ``lr·√N/||θ||`` = 5.5e-6 at
  lr 1e-6 and 5.5e-5 at lr 1e-5; a zero gradient leaves only the weight decay, ``lr·wd`` =
  1e-8. Below 1e-6 a thousand steps move the weights by less than 0.1 %.

The trainer runs it live and warns (:class:`LearningSignalWarning`); :func:`scan` replays
both monitors for the report.

The stability thresholds are set from ``benchmarks/alarms.py`` (output in
``benchmarks/results/alarms.txt``, summary in docs/training.md): no false alarm on runs of
every method that learn a toy task, and induced collapses caught within a few steps. The
trainer runs a :class:`StabilityMonitor` live on the logged metrics for every algorithm and
applies ``on_alarm`` to its alarms and the learning-signal ones (:mod:`algorithms.engine.guard`:
warn, stop, or roll back); the run report (:mod:`algorithms.report`) replays the logged
``metrics.jsonl`` through the same classes (:func:`scan`) and lists the alarms.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from rlrf.errors import RLRFWarning

__all__ = [
    "MONITORED",
    "Alarm",
    "LearningSignalMonitor",
    "LearningSignalWarning",
    "MonitorThresholds",
    "SignalThresholds",
    "StabilityMonitor",
    "StabilityWarning",
    "scan",
]

ENTROPY = "train/entropy"
DIVERGENCE = "train/divergence"
LENGTH = "rollout/response_tokens_mean"
TEACHER_SIGNAL = "rollout/teacher_signal_frac"
GRAD_NORM = "train/grad_norm"
UPDATE_RATIO = "train/update_ratio"
SIGNAL_GROUPS = "rollout/signal_groups_frac"
TRAINED_ROWS = "rollout/trained_rows"

MONITORED: tuple[str, ...] = (
    DIVERGENCE,
    ENTROPY,
    LENGTH,
    TEACHER_SIGNAL,
    GRAD_NORM,
    UPDATE_RATIO,
    SIGNAL_GROUPS,
)
"""The metric keys the monitors watch and the report summarises, in display order."""


class StabilityWarning(RLRFWarning):
    """A monitored signal moved the way that preceded collapse in published runs."""


class LearningSignalWarning(RLRFWarning):
    """A run is not learning: no reward signal, no gradient, no rows, or frozen weights."""


@dataclass(frozen=True)
class MonitorThresholds:
    """When a signal counts as having moved toward collapse (see the module docstring).

    Attributes:
        baseline_steps: steps averaged for the entropy's and the length's reference.
        entropy_floor: entropy collapse below this fraction of the reference entropy.
        length_factor: length blow-up above this multiple of the reference length ...
        length_min_increase: ... and at least this many tokens above it.
        divergence_factor: divergence spike above this multiple of the earlier median ...
        divergence_min: ... and above this many nats.
        divergence_history: earlier values needed before a spike can be called.

    """

    baseline_steps: int = 5
    entropy_floor: float = 0.25
    length_factor: float = 2.0
    length_min_increase: float = 32.0
    divergence_factor: float = 5.0
    divergence_min: float = 0.01
    divergence_history: int = 5


@dataclass(frozen=True)
class Alarm:
    """One signal that moved toward collapse: what, when, and against which reference."""

    kind: str
    """``entropy_collapse``, ``length_blowup``, ``divergence_spike`` (stability), or
    ``no_reward_signal``, ``zero_gradient``, ``no_trained_rows``, ``frozen_weights``
    (learning signal)."""
    step: int
    metric: str
    value: float
    reference: float
    steps: int = 1
    """Steps in a row the condition held (learning-signal alarms), from ``step`` on."""

    def message(self) -> str:
        """One line naming the step, the value and the reference it was compared with."""
        if self.kind in _SIGNAL_MESSAGES:
            what, fix = _SIGNAL_MESSAGES[self.kind]
            return (
                f"step {self.step}: {what} ({self.metric} {self.value:.4g}, threshold "
                f"{self.reference:.4g}) for {self.steps} steps in a row; {fix}"
            )
        what = {
            "entropy_collapse": "entropy collapse: student entropy",
            "length_blowup": "length blow-up: mean response length",
            "divergence_spike": "divergence spike: teacher-student divergence",
        }[self.kind]
        ref = {
            "entropy_collapse": "its first-steps average",
            "length_blowup": "its first-steps average",
            "divergence_spike": "the median of the earlier steps",
        }[self.kind]
        return (
            f"step {self.step}: {what} ({self.metric}) is {self.value:.4g} against {ref} "
            f"{self.reference:.4g}; runs that collapsed showed this first"
        )


_SIGNAL_MESSAGES = {
    "no_reward_signal": (
        "no reward signal: no group had differing rewards",
        "every group-relative advantage is zero; make the tasks easier, raise "
        "rollouts_per_question or temperature, or give partial-credit rewards",
    ),
    "zero_gradient": (
        "zero gradient: the gradient norm was 0",
        "the loss does not depend on the weights (all advantages zero, or no teacher "
        "signal); nothing is being learned",
    ),
    "no_trained_rows": (
        "no trained rows: no rollout reached the loss",
        "check rollout/env_errors and rollout/missing_rewards (`rlrf check ENV`)",
    ),
    "frozen_weights": (
        "weights barely move: the relative update ||Δθ||/||θ|| stayed below the threshold",
        "raise lr (the run's rollouts stay what the initial model samples)",
    ),
}


def _finite(metrics: Mapping[str, Any], key: str) -> float | None:
    v = metrics.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


@dataclass
class StabilityMonitor:
    """Watch a run's step metrics; each kind of :class:`Alarm` is raised at most once.

    Args:
        thresholds: when a move counts (:class:`MonitorThresholds`).
        warn: emit a :class:`StabilityWarning` for each new alarm (the live monitor does;
            the report's replay does not).

    """

    thresholds: MonitorThresholds = field(default_factory=MonitorThresholds)
    warn: bool = True
    alarms: list[Alarm] = field(default_factory=list)
    history: dict[str, list[float]] = field(default_factory=dict)

    def update(self, step: int, metrics: Mapping[str, Any]) -> list[Alarm]:
        """Feed one step's metrics (missing or non-finite keys are skipped); return new alarms."""
        th = self.thresholds
        new: list[Alarm] = []
        fired = {a.kind for a in self.alarms}

        def check(kind: str, key: str, value: float, reference: float, moved: bool) -> None:
            if moved and kind not in fired:
                new.append(Alarm(kind, step, key, value, reference))

        entropy = _finite(metrics, ENTROPY)
        if entropy is not None:
            seen = self.history.setdefault(ENTROPY, [])
            if len(seen) >= th.baseline_steps:
                ref = statistics.fmean(seen[: th.baseline_steps])
                check("entropy_collapse", ENTROPY, entropy, ref, entropy < th.entropy_floor * ref)
            seen.append(entropy)
        length = _finite(metrics, LENGTH)
        if length is not None:
            seen = self.history.setdefault(LENGTH, [])
            if len(seen) >= th.baseline_steps:
                ref = statistics.fmean(seen[: th.baseline_steps])
                moved = length > th.length_factor * ref and length >= ref + th.length_min_increase
                check("length_blowup", LENGTH, length, ref, moved)
            seen.append(length)
        div = _finite(metrics, DIVERGENCE)
        if div is not None:
            seen = self.history.setdefault(DIVERGENCE, [])
            if len(seen) >= th.divergence_history:
                ref = statistics.median(seen)
                moved = div > th.divergence_factor * ref and div > th.divergence_min
                check("divergence_spike", DIVERGENCE, div, ref, moved)
            seen.append(div)
        self.alarms.extend(new)
        if self.warn:
            for alarm in new:
                warnings.warn(alarm.message(), StabilityWarning, stacklevel=2)
        return new

    def state_dict(self) -> dict[str, Any]:
        """The history and the alarms raised (plain Python, for a checkpoint)."""
        return {
            "history": {k: list(v) for k, v in self.history.items()},
            "alarms": [asdict(a) for a in self.alarms],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s result (an alarm raised before is not raised again)."""
        self.history = {k: [float(x) for x in v] for k, v in state.get("history", {}).items()}
        self.alarms = [Alarm(**a) for a in state.get("alarms", [])]


@dataclass(frozen=True)
class SignalThresholds:
    """When a run counts as not learning (see the module docstring).

    Attributes:
        steps: consecutive steps a condition must hold before it is an alarm.
        update_ratio_min: ``train/update_ratio`` below this is "weights barely move".

    """

    steps: int = 3
    update_ratio_min: float = 1e-6


@dataclass
class LearningSignalMonitor:
    """Watch a run's step metrics for the absence of a learning signal (once per kind).

    Args:
        thresholds: :class:`SignalThresholds`.
        warn: emit a :class:`LearningSignalWarning` for each new alarm.

    """

    thresholds: SignalThresholds = field(default_factory=SignalThresholds)
    warn: bool = True
    alarms: list[Alarm] = field(default_factory=list)
    streaks: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    def update(self, step: int, metrics: Mapping[str, Any]) -> list[Alarm]:
        """Feed one step's metrics; return the alarms raised by it."""
        th = self.thresholds
        conditions = {
            "no_reward_signal": (SIGNAL_GROUPS, 0.0, lambda v: v <= 0.0),
            "zero_gradient": (GRAD_NORM, 0.0, lambda v: v <= 0.0),
            "no_trained_rows": (TRAINED_ROWS, 0.0, lambda v: v <= 0.0),
            "frozen_weights": (
                UPDATE_RATIO,
                th.update_ratio_min,
                lambda v: v < th.update_ratio_min,
            ),
        }
        fired = {a.kind for a in self.alarms}
        new = []
        for kind, (key, reference, holds) in conditions.items():
            value = _finite(metrics, key)
            if value is None and kind == "zero_gradient" and _finite(metrics, TRAINED_ROWS) == 0:
                continue  # no update this step: the no-rows alarm speaks for it
            streak = self.streaks.setdefault(kind, [])
            if value is None or not holds(value):
                streak.clear()
                continue
            streak.append((step, value))
            if len(streak) >= th.steps and kind not in fired:
                new.append(Alarm(kind, streak[0][0], key, value, reference, len(streak)))
        self.alarms.extend(new)
        if self.warn:
            for alarm in new:
                warnings.warn(alarm.message(), LearningSignalWarning, stacklevel=2)
        return new


def scan(
    records: Iterable[Mapping[str, Any]],
    thresholds: MonitorThresholds | None = None,
    signal: SignalThresholds | None = None,
) -> list[Alarm]:
    """Replay logged step records (``metrics.jsonl`` lines) through silent monitors.

    Records without a positive ``step`` (the step-0 evaluation) are skipped; the alarms are
    those the live monitors (stability, then learning signal) raise on the same values.
    """
    monitor = StabilityMonitor(thresholds or MonitorThresholds(), warn=False)
    learning = LearningSignalMonitor(signal or SignalThresholds(), warn=False)
    for record in records:
        step = record.get("step")
        if isinstance(step, int) and step > 0:
            monitor.update(step, record)
            learning.update(step, record)
    return monitor.alarms + learning.alarms
