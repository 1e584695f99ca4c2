"""What a run does when a stability alarm fires: warn, stop, or roll back and go on.

The trainer owns one :class:`AlarmGuard` for every algorithm. It feeds each step's logged
metrics to a :class:`~algorithms.engine.monitors.StabilityMonitor` (any
:class:`~algorithms.engine.monitors.Alarm` it raises counts, whatever its kind) and applies
``on_alarm``:

- ``warn`` (the default): a :class:`~algorithms.engine.monitors.StabilityWarning`; the run
  goes on.
- ``stop``: a checkpoint of the current state, then :class:`AlarmStop`, whose message names
  the alarm and the command that resumes (``rlrf train`` exits with status 2). The monitor
  is in the checkpoint: a resumed run is not stopped again by the same kind of alarm.
- ``rollback``: restore the newest checkpoint written at least ``rollback_window`` steps
  before the alarm's step (weights, optimizer, scheduler, the objective's state such as
  SDPO's teacher, the task sampler, the RNG states, the monitor's history), apply every
  remedy of ``rollback_remedies``, and go on; at most ``max_rollbacks`` times, after which
  an alarm stops the run as ``stop`` does. So does an alarm with no checkpoint old enough
  to return to.

Remedies (each rollback applies each listed remedy once more; the levels are absolute, so a
rollback past an earlier rollback keeps every remedy applied so far):

==================  =====================================================  ==============
``lower_lr``        halve the learning rate (x 0.5 per rollback)            every algorithm
``raise_grpo_mix``  halve SDPO's distance to pure GRPO: λ ← (1 + λ) / 2      SDPO
``freeze_teacher``  stop the EMA teacher's updates                          SDPO, ``ema``
==================  =====================================================  ==============

A config lists the remedies it supports (:meth:`algorithms.config.TrainConfig.alarm_remedies`);
any other is refused when the config is built, naming the algorithm. The trainer applies
``lower_lr`` itself; any other remedy is the objective's ``apply_remedy(name, level)``.

Rolling back needs a state from before the window. The guard uses the run's own on-disk
checkpoints rather than copies in memory: with ``on_alarm: rollback`` a checkpoint is
written at least every ``rollback_window / 2`` steps and enough are kept
(:attr:`AlarmGuard.checkpoint_every`, :attr:`AlarmGuard.keep_checkpoints`), which costs no
memory (an in-memory window of 3 states would hold 3 x 16 bytes per parameter on the host
for SDPO in fp32: 6.5 GB at 135M, 384 GB at 8B) and makes resuming after a rollback exact
for free: a checkpoint written after a rollback holds the guard's state (rollbacks, remedy
levels, the steps thrown away) and resumes bit-identical to an uninterrupted run (tested).
The cost is the checkpoints' disk space and write time (docs/training.md).

Every action is recorded: an ``alarm/action`` record in ``metrics.jsonl`` (its ``step``,
``alarm/kind``, ``alarm/action`` = ``warn`` / ``stop`` / ``rollback``, the restored step,
the remedies and their effect), the trajectories' ``policy_version`` (it counts every
update the run made, the discarded ones too, so a rolled-back policy never shares a version
with the branch it replaced: equal to the step until the first rollback, then the step plus
the steps thrown away; the rollout seed follows it, so the re-run steps sample afresh), and
the run report (:mod:`algorithms.report`). The discarded steps' records stay in the logs;
:func:`live_records` drops them for a replay of the monitors.
"""

from __future__ import annotations

import shutil
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from algorithms.config import OnAlarm
from algorithms.engine.monitors import (
    Alarm,
    LearningSignalMonitor,
    StabilityMonitor,
    StabilityWarning,
)
from rlrf.errors import ConfigError, RLRFError

if TYPE_CHECKING:
    from algorithms.config import TrainConfig
    from algorithms.engine.trainer import Trainer

__all__ = ["ACTION", "AlarmGuard", "AlarmStop", "OnAlarm", "live_records"]

ACTION = "alarm/action"
"""The key of an action record in ``metrics.jsonl``."""

LOWER_LR = "lower_lr"


class AlarmStop(RLRFError):
    """A stability alarm stopped the run (``on_alarm: stop``, or no rollback possible).

    The message names the alarm, the checkpoint written and the command that resumes.
    """


class AlarmGuard:
    """The live monitor and the ``on_alarm`` policy of one run.

    Args:
        config: the run's config (``on_alarm``, ``rollback_window``, ``rollback_remedies``,
            ``max_rollbacks``, ``checkpoint_every``, ``keep_checkpoints``).
        objective: the run's objective; must have ``apply_remedy`` when a remedy other than
            ``lower_lr`` is configured.
        main: whether this process warns and prints (every process decides the same: the
            metrics it watches are summed over processes).

    """

    def __init__(
        self,
        config: TrainConfig,
        objective: Any = None,
        main: bool = True,
        signal: LearningSignalMonitor | None = None,
    ) -> None:
        self.config = config
        self.signal = signal  # the trainer's learning-signal monitor: checkpointed here
        self.mode: OnAlarm = config.on_alarm
        self.main = main
        self.monitor = StabilityMonitor(warn=False)
        self.pending: list[Alarm] = []
        self.rollbacks = 0
        self.discarded = 0  # steps thrown away by rollbacks (policy_version = step + this)
        self.levels: dict[str, int] = {}
        others = [r for r in config.rollback_remedies if r != LOWER_LR]
        if self.mode == "rollback" and others and not hasattr(objective, "apply_remedy"):
            raise ConfigError(
                f"rollback_remedies {others} need the objective's apply_remedy(name, level), "
                f"which {type(objective).__name__} lacks; use rollback_remedies: [lower_lr]"
            )

    # --- checkpoints the rollback needs ----------------------------------------------------

    @property
    def checkpoint_every(self) -> int:
        """Checkpoint interval: ``checkpoint_every``; on rollback at most half the window.

        Half: an alarm at step s then finds a checkpoint within ``rollback_window / 2`` steps
        before s - ``rollback_window`` (and one exists from an alarm at ``1.5 x window`` on).
        """
        every, half = self.config.checkpoint_every, max(1, self.config.rollback_window // 2)
        if self.mode != "rollback":
            return every
        return min(every, half) if every else half

    @property
    def keep_checkpoints(self) -> int:
        """Checkpoints kept: enough that one predates any window that can end at this step."""
        keep = self.config.keep_checkpoints
        if self.mode != "rollback":
            return keep
        every = self.checkpoint_every
        return max(keep, (self.config.rollback_window + every - 1) // every + 1)

    def version(self, step: int) -> int:
        """The ``policy_version`` of rollouts sampled after ``step`` steps (see above)."""
        return step + self.discarded

    # --- watching ---------------------------------------------------------------------------

    def observe(self, step: int, metrics: Mapping[str, Any]) -> list[Alarm]:
        """Feed one step's metrics to the monitor; its new alarms wait for :meth:`act`."""
        new = self.monitor.update(step, metrics)
        if self.main:
            for alarm in new:
                warnings.warn(
                    f"{alarm.message()} (on_alarm={self.mode})", StabilityWarning, stacklevel=3
                )
        self.pending.extend(new)
        return new

    def act(self, trainer: Trainer, log: Callable[[int, dict[str, Any]], None] | None) -> bool:
        """Apply ``on_alarm`` to the alarms observed this step; True when it rolled back.

        ``log`` writes a ``metrics.jsonl`` record (None on the other processes).

        Raises:
            AlarmStop: ``stop``; or ``rollback`` with nothing to roll back to or rollbacks
                exhausted. A checkpoint of the current state is written first.

        """
        alarms, self.pending = self.pending, []
        acc = trainer.accelerator
        if self.mode != "warn" and acc.num_processes > 1:  # every process acts on main's
            from accelerate.utils import broadcast_object_list

            alarms = broadcast_object_list([alarms], from_process=0)[0]
        if not alarms:
            return False
        step = trainer.step
        alarm = alarms[0]
        if self.mode == "warn":
            for a in alarms:
                self._record(log, step, a, "warn")
            return False
        if self.mode == "stop":
            self._stop(trainer, log, alarms, "on_alarm=stop")
        if self.rollbacks >= self.config.max_rollbacks:
            self._stop(
                trainer,
                log,
                alarms,
                f"on_alarm=rollback, but the run already rolled back {self.rollbacks} times "
                f"(max_rollbacks={self.config.max_rollbacks}); raise max_rollbacks, or lower "
                "lr and resume",
            )
        limit = alarm.step - self.config.rollback_window
        target = _newest_at_or_before(trainer.checkpoint_dir, limit)
        if target is None:
            self._stop(
                trainer,
                log,
                alarms,
                f"on_alarm=rollback, but nothing to roll back to: no checkpoint at or before "
                f"step {limit} (rollback_window={self.config.rollback_window} steps before "
                f"the alarm; the first checkpoint is written at step {self.checkpoint_every}). "
                "Lower rollback_window, or lower lr and start again",
            )
        self._rollback(trainer, log, alarms, target)
        return True

    # --- the actions -------------------------------------------------------------------------

    def _record(
        self,
        log: Callable[[int, dict[str, Any]], None] | None,
        step: int,
        alarm: Alarm,
        action: str,
        **extra: Any,
    ) -> None:
        if log is not None:
            fields = {f"alarm/{k}": v for k, v in asdict(alarm).items() if k != "step"}
            log(step, {ACTION: action, **fields, "alarm/step": alarm.step, **extra})

    def _stop(
        self,
        trainer: Trainer,
        log: Callable[[int, dict[str, Any]], None] | None,
        alarms: list[Alarm],
        why: str,
    ) -> NoReturn:
        from algorithms.engine.checkpoint import resume_hint

        for a in alarms:
            self._record(log, trainer.step, a, "stop", **{"alarm/reason": why})
        trainer.save()  # after the records: the checkpoint's log sizes include them
        others = "; ".join(a.message() for a in alarms[1:])
        raise AlarmStop(
            f"stopped at step {trainer.step}: {alarms[0].message()}"
            + (f"; also {others}" if others else "")
            + f". {why}. The state was saved: "
            + resume_hint(trainer.output_dir, self.checkpoint_every)
        )

    def _rollback(
        self,
        trainer: Trainer,
        log: Callable[[int, dict[str, Any]], None] | None,
        alarms: list[Alarm],
        target: tuple[int, Path],
    ) -> None:
        from algorithms.engine.checkpoint import complete_checkpoints, load_checkpoint

        restored_step, path = target
        step = trainer.step
        rollbacks, discarded = self.rollbacks + 1, self.discarded + step - restored_step
        levels = dict(self.levels)
        for remedy in self.config.rollback_remedies:
            levels[remedy] = levels.get(remedy, 0) + 1
        generations = trainer.generations  # samples spent stay spent
        trainer.accelerator.wait_for_everyone()
        trainer._restore(path, load_checkpoint(path))  # also loads the guard of that step
        self.rollbacks, self.discarded, self.levels = rollbacks, discarded, levels
        effects = self.apply_remedies(trainer)
        trainer.generations = generations
        trainer.accelerator.wait_for_everyone()
        if trainer.accelerator.is_main_process:  # the discarded branch: never resumed from
            for newer in complete_checkpoints(trainer.checkpoint_dir):
                if _step_of(newer) > restored_step:
                    shutil.rmtree(newer, ignore_errors=True)
        for a in alarms:
            self._record(
                log,
                step,
                a,
                "rollback",
                **{
                    "alarm/restored_step": restored_step,
                    "alarm/rollbacks": rollbacks,
                    "alarm/remedies": list(self.config.rollback_remedies),
                    "alarm/effects": effects,
                },
            )
        if self.main:
            print(
                f"rlrf: {alarms[0].message()}; rolled back to step {restored_step} ({path}), "
                f"rollback {rollbacks} of {self.config.max_rollbacks}"
                + (f"; {', '.join(effects)}" if effects else ""),
                file=sys.stderr,
                flush=True,
            )

    def apply_remedies(self, trainer: Trainer) -> list[str]:
        """Set every configured remedy to its current level; return what each set.

        Absolute, so applying twice changes nothing (it runs after every restore).
        """
        effects = []
        for remedy in self.config.rollback_remedies:
            level = self.levels.get(remedy, 0)
            if remedy == LOWER_LR:
                effects.append(_scale_lr(trainer, 0.5**level))
            else:
                effects.append(str(trainer.objective.apply_remedy(remedy, level)))
        return effects

    # --- checkpoints ----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Plain Python (JSON-friendly): the monitor, the rollbacks and the remedy levels."""
        signal = None
        if self.signal is not None:
            signal = {
                "alarms": [asdict(a) for a in self.signal.alarms],
                "streaks": {k: [list(x) for x in v] for k, v in self.signal.streaks.items()},
            }
        return {
            "monitor": self.monitor.state_dict(),
            "signal": signal,
            "rollbacks": self.rollbacks,
            "discarded": self.discarded,
            "levels": dict(self.levels),
        }

    def load_state_dict(self, state: Mapping[str, Any] | None, trainer: Trainer) -> None:
        """Restore :meth:`state_dict` and set the remedies' levels on ``trainer`` again.

        ``state`` None: a checkpoint from before the guard (nothing happened yet).
        """
        state = state or {}
        self.monitor.load_state_dict(state.get("monitor") or {})
        signal = state.get("signal") or {}
        if self.signal is not None:
            self.signal.alarms = [Alarm(**a) for a in signal.get("alarms", [])]
            self.signal.streaks = {
                k: [(int(s), float(v)) for s, v in x] for k, x in signal.get("streaks", {}).items()
            }
        self.rollbacks = int(state.get("rollbacks", 0))
        self.discarded = int(state.get("discarded", 0))
        self.levels = {str(k): int(v) for k, v in (state.get("levels") or {}).items()}
        self.pending = []
        if self.levels:
            self.apply_remedies(trainer)


def _scale_lr(trainer: Trainer, scale: float) -> str:
    """Set the scheduler's base rates to ``scale`` x the configured ones (and the current lr)."""
    scheduler, optimizer = trainer.scheduler, trainer.optimizer
    for i, group in enumerate(optimizer.param_groups):
        scheduler.base_lrs[i] = group["initial_lr"] * scale
        group["lr"] = scheduler.base_lrs[i] * scheduler.lr_lambdas[i](scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    return f"lr {scheduler.base_lrs[0]:.3g}"


def _step_of(path: Path) -> int:
    return int(path.name.removeprefix("step_"))


def _newest_at_or_before(directory: Path, step: int) -> tuple[int, Path] | None:
    from algorithms.engine.checkpoint import complete_checkpoints

    for path in complete_checkpoints(directory):  # newest first
        if _step_of(path) <= step:
            return _step_of(path), path
    return None


def live_records(records: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The step records of the branch a run kept: those a rollback discarded are dropped.

    A rollback record (``alarm/action: rollback`` with ``alarm/restored_step``) removes the
    records of the steps after the restored one; replaying the rest through
    :func:`algorithms.engine.monitors.scan` gives the live monitor's alarms.
    """
    kept: list[Mapping[str, Any]] = []
    for record in records:
        if record.get(ACTION) == "rollback":
            restored = record.get("alarm/restored_step")
            if isinstance(restored, int):
                kept = [r for r in kept if not _after(r, restored)]
            continue
        if ACTION not in record:
            kept.append(record)
    return kept


def _after(record: Mapping[str, Any], step: int) -> bool:
    return isinstance(record.get("step"), int) and record["step"] > step
