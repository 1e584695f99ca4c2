"""on_alarm (algorithms/engine/guard.py): a collapse is caught, rolled back and recovers where
``warn`` does not; a healthy run never triggers; stop and the impossible rollbacks stop with
the state saved; resuming after a rollback is exact; bad remedies are refused by name."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from algorithms.engine.checkpoint import RunInterrupted, latest_checkpoint, load_checkpoint
from algorithms.engine.guard import AlarmStop, live_records
from algorithms.engine.trainer import Trainer
from algorithms.grpo.config import GRPOTrainConfig
from algorithms.registry import resolve_config
from algorithms.testing import TargetCharEnv, favour_tokens, tiny_model, tiny_tokenizer
from rlrf.errors import ConfigError
from rlrf.trajectory import read_trajectories

# A learning rate far too high, reached by warmup: lr = 0.025 x step. The run learns for a
# few steps (reward 0.3-0.4), then the entropy and the divergence go (entropy 0.15-0.5 from
# step 10 on with on_alarm: warn).
COLLAPSE = dict(
    steps=20, questions_per_step=4, rollouts_per_question=4, max_new_tokens=12, eval_every=0,
    checkpoint_every=0, progress=False, lr=1.0, warmup_steps=40, seed=0, max_rollbacks=3,
)  # fmt: skip
HEALTHY = {**COLLAPSE, "lr": 1e-2, "warmup_steps": 0, "steps": 16}


def _trainer(out: Path, **overrides) -> Trainer:
    tok = tiny_tokenizer()
    model = favour_tokens(tiny_model(0), tok, ("a", "b", "<|im_end|>"))
    config = resolve_config(
        None, algorithm="sdpo", overrides={**COLLAPSE, "output_dir": str(out), **overrides}
    )
    return Trainer(config, env=TargetCharEnv(targets="ab"), model=model, tokenizer=tok)


def _train(trainer: Trainer) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()


def _records(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _actions(out: Path) -> list[dict]:
    return [r for r in _records(out) if "alarm/action" in r]


# --- config ---------------------------------------------------------------------------------


def test_a_remedy_the_algorithm_lacks_is_refused_naming_the_algorithm():
    with pytest.raises(ConfigError, match=r"'raise_grpo_mix' does not apply to algorithm 'grpo'"):
        GRPOTrainConfig(on_alarm="rollback", rollback_remedies=["lower_lr", "raise_grpo_mix"])
    with pytest.raises(ConfigError, match=r"'freeze_teacher' does not apply to algorithm 'sdpo'"):
        resolve_config(None, algorithm="sdpo", overrides={"rollback_remedies": ["freeze_teacher"],
                                                           "teacher": "frozen"})  # fmt: skip
    sdpo = resolve_config(
        None,
        algorithm="sdpo",
        overrides={"rollback_remedies": ["raise_grpo_mix", "freeze_teacher"]},
    )
    assert sdpo.rollback_remedies == ["raise_grpo_mix", "freeze_teacher"]
    with pytest.raises(ConfigError, match="on_alarm"):
        GRPOTrainConfig(on_alarm="panic")


def test_on_alarm_is_a_flag():
    from algorithms.commands.train import build_parser

    args = build_parser("grpo", "rlrf train").parse_args(
        ["--on-alarm", "rollback", "--max-rollbacks", "1", "--rollback-window", "2"]
    )
    assert (args.on_alarm, args.max_rollbacks, args.rollback_window) == ("rollback", 1, 2)


def test_live_records_drop_the_steps_a_rollback_discarded():
    records = [{"step": s, "x": s} for s in range(1, 8)]
    records += [{"step": 7, "alarm/action": "rollback", "alarm/restored_step": 4}]
    records += [{"step": s, "x": 10 + s} for s in range(5, 7)]
    assert [r["x"] for r in live_records(records)] == [1, 2, 3, 4, 15, 16]


# --- runs -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_collapse_is_rolled_back_and_recovers_where_warn_does_not(tmp_path):
    """Recovers: after its last rollback, every step's entropy is above the alarm's floor
    (25 % of the first steps' average); the same run with warn spends most of its last 11
    steps below it."""
    warned = _trainer(tmp_path / "warn", on_alarm="warn")
    _train(warned)
    rolled = _trainer(tmp_path / "rollback", on_alarm="rollback")
    _train(rolled)

    def below_floor(out: Path) -> tuple[int, int]:
        live = [r for r in live_records(_records(out)) if "train/entropy" in r]
        floor = 0.25 * sum(r["train/entropy"] for r in live[:5]) / 5
        tail = live[-11:]
        return sum(r["train/entropy"] < floor for r in tail), len(tail)

    assert {a["alarm/action"] for a in _actions(tmp_path / "warn")} == {"warn"}
    assert below_floor(tmp_path / "warn") >= (8, 11)  # measured: 10 of 11
    actions = _actions(tmp_path / "rollback")
    assert [a["alarm/action"] for a in actions] == ["rollback", "rollback"]
    assert [(a["step"], a["alarm/restored_step"]) for a in actions] == [(7, 2), (15, 10)]
    assert [a["alarm/effects"] for a in actions] == [["lr 0.5"], ["lr 0.25"]]
    assert below_floor(tmp_path / "rollback") == (0, 11)
    assert rolled.step == 20 and rolled.guard.rollbacks == 2
    # policy versions never repeat: the step plus the steps thrown away
    versions = [
        g.trajectories[0].policy_version
        for g in read_trajectories(tmp_path / "rollback" / "trajectories.jsonl")
    ]
    # steps 1-7 sampled with versions 0-6; re-run steps 3-15 with 7-19; steps 11-20 with 20-29
    assert list(dict.fromkeys(versions)) == list(range(30))
    # the report lists the actions
    from algorithms.report import write_report

    text = write_report([tmp_path / "rollback"]).read_text()
    assert "**rolled back** to step 2 (rollback 1; lr 0.5)" in text


@pytest.mark.slow
def test_a_healthy_run_never_triggers(tmp_path):
    trainer = _trainer(tmp_path, on_alarm="rollback", **HEALTHY)
    _train(trainer)
    records = _records(tmp_path)
    assert _actions(tmp_path) == [] and trainer.guard.rollbacks == 0
    rewards = [r["rollout/reward_mean"] for r in records if "rollout/reward_mean" in r]
    assert sum(rewards[-3:]) > sum(rewards[:3])  # it learns: measured 0.29 -> 0.36


@pytest.mark.slow
def test_stop_checkpoints_and_names_the_resume_command(tmp_path):
    trainer = _trainer(tmp_path, on_alarm="stop")
    with pytest.raises(AlarmStop, match=r"stopped at step 7: step 7: divergence spike") as e:
        _train(trainer)
    assert "Resume with: rlrf train --config" in str(e.value) and "--resume true" in str(e.value)
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step_000007"
    assert [a["alarm/action"] for a in _actions(tmp_path)] == ["stop"]


@pytest.mark.slow
def test_nothing_to_roll_back_to_and_exhausted_rollbacks_stop_with_the_state_saved(tmp_path):
    early = _trainer(tmp_path / "early", on_alarm="rollback", rollback_window=12)
    with pytest.raises(AlarmStop, match=r"nothing to roll back to: no checkpoint at or before"):
        _train(early)
    assert latest_checkpoint(tmp_path / "early" / "checkpoints").name == "step_000007"
    spent = _trainer(tmp_path / "spent", on_alarm="rollback", max_rollbacks=1)
    with pytest.raises(AlarmStop, match=r"already rolled back 1 times \(max_rollbacks=1\)"):
        _train(spent)
    assert latest_checkpoint(tmp_path / "spent" / "checkpoints").name == "step_000015"


@pytest.mark.slow
def test_resuming_after_a_rollback_is_bit_identical(tmp_path):
    steps = {"steps": 12, "on_alarm": "rollback"}
    reference = _trainer(tmp_path / "ref", **steps)
    _train(reference)
    killed = _trainer(tmp_path / "run", **steps)
    original = killed.train_step

    def stop_after_10() -> dict:
        if killed.step == 10:  # after the rollback at step 7 (to step 2) and a checkpoint
            raise KeyboardInterrupt
        return original()

    killed.train_step = stop_after_10  # type: ignore[method-assign]
    with pytest.raises(RunInterrupted):
        _train(killed)
    _train(_trainer(tmp_path / "run", resume=True, **steps))
    a = load_checkpoint(latest_checkpoint(tmp_path / "ref" / "checkpoints"))
    b = load_checkpoint(latest_checkpoint(tmp_path / "run" / "checkpoints"))
    assert a["guard"]["rollbacks"] == b["guard"]["rollbacks"] == 1
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["guard"] == b["guard"] and a["scheduler"] == b["scheduler"]

    def strip(out: Path) -> list[dict]:
        return [{k: v for k, v in r.items() if not k.startswith("timing/")} for r in _records(out)]

    assert strip(tmp_path / "ref") == strip(tmp_path / "run")
