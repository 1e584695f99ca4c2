"""Stability monitors: the alarms, their wiring into the SDPO objective, and the report."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from algorithms.engine.monitors import (
    Alarm,
    MonitorThresholds,
    StabilityMonitor,
    StabilityWarning,
    scan,
)
from algorithms.sdpo.objective import SDPORow, has_teacher

ENTROPY, LENGTH, DIV = "train/entropy", "rollout/response_tokens_mean", "train/divergence"


def _feed(monitor, series):
    """Feed {step: metrics}; return {step: [alarm kinds raised there]}."""
    raised = {}
    for step, metrics in series.items():
        kinds = [a.kind for a in monitor.update(step, metrics)]
        if kinds:
            raised[step] = kinds
    return raised


def test_entropy_collapse_names_the_first_step_below_the_floor():
    # first five steps average 2.0; 25% of it is 0.5: step 9 (0.45) is the first below
    entropies = [2.2, 1.8, 2.0, 2.1, 1.9, 1.2, 0.8, 0.6, 0.45, 0.3, 0.2]
    monitor = StabilityMonitor(warn=False)
    raised = _feed(monitor, {i + 1: {ENTROPY: e} for i, e in enumerate(entropies)})
    assert raised == {9: ["entropy_collapse"]}  # once, though it stays low
    (alarm,) = monitor.alarms
    assert alarm == Alarm("entropy_collapse", 9, ENTROPY, 0.45, pytest.approx(2.0))
    assert "step 9" in alarm.message() and "entropy collapse" in alarm.message()


def test_steady_or_noisy_runs_raise_nothing():
    g = torch.Generator().manual_seed(0)
    noise = (torch.rand(200, generator=g) - 0.5).tolist()
    series = {
        i + 1: {ENTROPY: 1.0 + 0.3 * n, LENGTH: 40 + 10 * n, DIV: 0.2 + 0.1 * n}
        for i, n in enumerate(noise)
    }
    assert _feed(StabilityMonitor(warn=False), series) == {}


def test_length_blow_up_needs_both_the_factor_and_the_token_increase():
    short = {i + 1: {LENGTH: v} for i, v in enumerate([3, 3, 4, 3, 3, 9, 10])}
    assert _feed(StabilityMonitor(warn=False), short) == {}  # 3x but only +6 tokens
    lengths = [50, 55, 45, 50, 50, 80, 99, 101, 300]
    raised = _feed(
        StabilityMonitor(warn=False), {i + 1: {LENGTH: v} for i, v in enumerate(lengths)}
    )
    assert raised == {8: ["length_blowup"]}  # > 2 x 50 and >= 50 + 32


def test_divergence_spike_against_the_median_of_earlier_steps():
    values = [0.3, 0.2, 0.25, 0.22, 0.21, 1.2, 0.2]  # median of the first five: 0.22
    raised = _feed(StabilityMonitor(warn=False), {i + 1: {DIV: v} for i, v in enumerate(values)})
    assert raised == {6: ["divergence_spike"]}
    tiny = [1e-4, 1e-4, 1e-4, 2e-3]  # 20x, but the teacher and student still agree
    assert _feed(StabilityMonitor(warn=False), {i + 1: {DIV: v} for i, v in enumerate(tiny)}) == {}


def test_missing_and_non_finite_values_are_skipped():
    monitor = StabilityMonitor(MonitorThresholds(baseline_steps=1), warn=False)
    _feed(monitor, {1: {ENTROPY: 1.0}, 2: {ENTROPY: float("nan")}, 3: {}, 4: {ENTROPY: "x"}})
    assert monitor.history[ENTROPY] == [1.0] and monitor.alarms == []


def test_warns_once_per_kind_and_a_restored_monitor_does_not_warn_again():
    monitor = StabilityMonitor(MonitorThresholds(baseline_steps=1))
    monitor.update(1, {ENTROPY: 1.0})
    with pytest.warns(StabilityWarning, match=r"step 2: entropy collapse"):
        monitor.update(2, {ENTROPY: 0.1})
    restored = StabilityMonitor(MonitorThresholds(baseline_steps=1))
    restored.load_state_dict(json.loads(json.dumps(monitor.state_dict())))
    assert restored.alarms == monitor.alarms
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        monitor.update(3, {ENTROPY: 0.05})
        restored.update(3, {ENTROPY: 0.05})


def test_scan_replays_logged_records():
    records = [{"step": 0, "eval/accuracy": 0.1}] + [
        {"step": i + 1, ENTROPY: e} for i, e in enumerate([2, 2, 2, 2, 2, 0.4])
    ]
    (alarm,) = scan(records)
    assert (alarm.kind, alarm.step) == ("entropy_collapse", 6)


# --- the SDPO objective logs the monitors and warns -----------------------------------------


SMALL = dict(
    steps=1, questions_per_step=2, rollouts_per_question=4, max_new_tokens=6, eval_every=0,
    checkpoint_every=0, progress=False, lr=1e-3, logit_chunk_size=3,
)  # fmt: skip


def _trainer(tmp_path, **sdpo_options):
    from algorithms.engine.trainer import Trainer
    from algorithms.sdpo import SDPOConfig
    from algorithms.sdpo.config import SDPOTrainConfig
    from algorithms.testing import TargetCharEnv, tiny_model, tiny_tokenizer

    config = SDPOTrainConfig(output_dir=str(tmp_path), sdpo=SDPOConfig(**sdpo_options), **SMALL)
    trainer = Trainer(
        config, env=TargetCharEnv(targets="ab"), model=tiny_model(0), tokenizer=tiny_tokenizer()
    )
    trainer._trajectory_writer = None
    return trainer


@pytest.mark.slow
@pytest.mark.parametrize("loss_level", ["logit", "token"])
def test_objective_entropy_and_divergence_are_those_of_the_distilled_positions(
    loss_level, tmp_path
):
    """train/entropy is the student's entropy, token-averaged over the distilled positions
    (teacher rows, inside the response); train/divergence the top-K divergence there."""
    from algorithms.engine.batching import collate
    from algorithms.sdpo import distillation_loss

    trainer = _trainer(tmp_path, loss_level=loss_level, alpha=0.5, top_k=8)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in trainer.objective.teacher.module.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    tok = trainer.tokenizer
    q = "Question: which letter comes first? "
    rows = [
        SDPORow(tok.encode(q + "1"), tok.encode("abcdefg"), [-2.0] * 7, 0.5, teacher_prompt_ids=tok.encode(q + "1 a")),
        SDPORow(tok.encode(q + "1"), tok.encode("ab"), [-1.0] * 2, -0.5, teacher_prompt_ids=None),
        SDPORow(tok.encode(q + "2"), tok.encode("xyz"), [-3.0] * 3, 1.0, teacher_prompt_ids=tok.encode(q + "2 b")),
    ]
    batch = collate(rows)
    _, stats = trainer._loss(batch, trainer._normalizers(rows), on_policy=True)

    def logits(model, prompts):
        out = []
        for p, r in zip(prompts, batch.responses, strict=True):
            x = model(input_ids=torch.tensor([p + r])).logits[0, len(p) - 1 : len(p) + len(r) - 1]
            out.append(torch.nn.functional.pad(x, (0, 0, 0, batch.mask.shape[1] - len(r))))
        return torch.stack(out).float()

    with torch.no_grad():
        s = logits(trainer.unwrapped, [r.prompt_ids for r in rows])
        t = logits(
            trainer.objective.teacher.module, [r.teacher_prompt_ids or r.prompt_ids for r in rows]
        )
    tmask = batch.mask & has_teacher(batch)[:, None]
    entropy = -(s.softmax(-1) * s.log_softmax(-1)).sum(-1)
    assert float(stats["entropy"]) == pytest.approx(float(entropy[tmask].mean()), rel=1e-4)
    ref, _ = distillation_loss(s, t, tmask, top_k=8, alpha=0.5)
    assert float(stats["divergence"]) == pytest.approx(float(ref), rel=1e-4)


@pytest.mark.slow
def test_training_logs_the_monitors_every_step_and_warns_with_the_step(tmp_path):
    trainer = _trainer(tmp_path, grpo_mix=0.5)
    # thresholds any run trips at its second step, to see the wiring: a warning naming it
    # (the trainer's guard runs the live monitor on the logged metrics, for every algorithm)
    trainer.guard.monitor = StabilityMonitor(
        MonitorThresholds(baseline_steps=1, entropy_floor=10.0), warn=False
    )
    logged = []
    with pytest.warns(StabilityWarning, match=r"step 2: entropy collapse"):
        for _ in range(3):
            logged.append(trainer.train_step())
    for m in logged:
        for key in (
            "train/divergence", "train/entropy", "train/grad_norm",
            "rollout/response_tokens_mean", "rollout/teacher_signal_frac",
        ):  # fmt: skip
            assert isinstance(m[key], float) and m[key] == m[key], key
    # the live monitor saw exactly what was logged (one process)
    history = trainer.guard.monitor.history
    for key in ("train/entropy", "train/divergence", "rollout/response_tokens_mean"):
        assert history[key] == pytest.approx([m[key] for m in logged], rel=1e-6), key
    assert [a.step for a in trainer.guard.monitor.alarms] == [2]
    # and a checkpoint keeps the monitor
    state = trainer.guard.state_dict()
    fresh = _trainer(tmp_path / "fresh", grpo_mix=0.5)
    fresh.guard.load_state_dict(state, fresh)
    assert fresh.guard.monitor.alarms == trainer.guard.monitor.alarms


def test_report_summarises_the_monitors_and_names_the_alarm_step(tmp_path):
    from algorithms.report import write_report

    run = tmp_path / "run"
    run.mkdir()
    records = [{"step": 0, "generations": 0, "eval/accuracy": 0.2}]
    for step in range(1, 9):
        records.append(
            {
                "step": step,
                "rollout/generations": 8 * step,
                "rollout/reward_mean": 0.5,
                "train/entropy": 2.0 if step <= 5 else 0.3,
                "train/divergence": 0.1,
                "train/grad_norm": 0.5 + step,
                "rollout/response_tokens_mean": 40.0,
                "rollout/teacher_signal_frac": 0.75,
            }
        )
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    text = write_report([run]).read_text()
    assert "stability monitors" in text
    assert "| `train/grad_norm` | 1.500 | 8.500 | 1.500 | 8.500 |" in text
    assert "| `rollout/teacher_signal_frac` | 0.750 | 0.750 | 0.750 | 0.750 |" in text
    assert text.count("step 6: entropy collapse") == 2  # up front and in the section
    assert (run / "report" / "entropy.png").read_bytes()[:4] == b"\x89PNG"

    records = [{**r, "train/entropy": 2.0} for r in records if r["step"] > 0]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    text = write_report([run]).read_text()
    assert "No alarm" in text and "Stability warning" not in text


# ---- learning-signal alarms ----------------------------------------------------------------


def test_learning_signal_alarms_need_a_streak_and_name_its_first_step():
    from algorithms.engine.monitors import LearningSignalMonitor, LearningSignalWarning

    healthy = {
        "rollout/signal_groups_frac": 0.5, "train/grad_norm": 0.3,
        "rollout/trained_rows": 16.0, "train/update_ratio": 2e-5,
    }  # fmt: skip
    dead = {
        "rollout/signal_groups_frac": 0.0, "train/grad_norm": 0.0,
        "rollout/trained_rows": 0.0, "train/update_ratio": 1e-8,
    }  # fmt: skip
    series = {1: dead, 2: dead, 3: healthy, 4: dead, 5: dead, 6: dead, 7: dead}
    monitor = LearningSignalMonitor(warn=False)
    kinds = ["no_reward_signal", "zero_gradient", "no_trained_rows", "frozen_weights"]
    assert _feed(monitor, series) == {6: kinds}  # the streak of steps 1-2 was broken
    assert {a.step for a in monitor.alarms} == {4} and {a.steps for a in monitor.alarms} == {3}
    frozen = monitor.alarms[-1]
    assert frozen.message() == (
        "step 4: weights barely move: the relative update ||Δθ||/||θ|| stayed below the "
        "threshold (train/update_ratio 1e-08, threshold 1e-06) for 3 steps in a row; raise lr "
        "(the run's rollouts stay what the initial model samples)"
    )
    with pytest.warns(LearningSignalWarning, match=r"step 1: no trained rows"):
        live = LearningSignalMonitor()
        for step in (1, 2, 3):
            live.update(step, dead)
    # the report's replay finds the same alarms
    records = [{"step": s, **m} for s, m in series.items()]
    assert [a for a in scan(records) if a.kind in kinds] == monitor.alarms


def test_a_healthy_run_raises_no_learning_signal_alarm():
    from algorithms.engine.monitors import LearningSignalMonitor

    healthy = {
        "rollout/signal_groups_frac": 0.25, "train/grad_norm": 0.1,
        "rollout/trained_rows": 8.0, "train/update_ratio": 5e-6,
    }  # fmt: skip
    assert _feed(LearningSignalMonitor(warn=False), dict.fromkeys(range(1, 50), healthy)) == {}
