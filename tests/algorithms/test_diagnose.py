"""``rlrf diagnose``: does the self-teacher answer better than the student, before training?

Two cases the project already has, where the answer is known from training:

- the tiny hint-reading model of the end-to-end SDPO test (SDPO learns there): the verdict
  must be "helps";
- the embedded SmolLM2-135M on one-digit addition (pure SDPO does not learn there: held-out
  0.266 -> 0.234 in the README): the verdict must not be "helps".

Plus fast checks of the wiring with scripted backends (the teacher prompts reach the
backend, answers are graded on the real task), the statistics, the CLI and bad input.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import torch

import rlrf
from algorithms.diagnose import (
    MIN_GAIN,
    DiagnoseConfig,
    bootstrap_ci,
    diagnose,
    format_summary,
    verdict,
    wilson_interval,
)
from algorithms.sampling.hf import HFPolicy
from algorithms.sdpo import FEEDBACK_HEADER, SOLUTION_HEADER, TEACHER_INSTRUCTION
from algorithms.testing import TargetCharEnv, save_tiny, tiny_tokenizer
from rlrf.cli import main as rlrf_main
from rlrf.errors import ConfigError
from rlrf.sampling import Sample, SamplingParams
from rlrf.trajectory import Group, read_trajectories

rlrf.register("diagtest/TargetChar-v0", "algorithms.testing:TargetCharEnv", override=True)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # small models gain nothing from intra-op threads on a busy 2-core machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class OracleBackend:
    """A SamplingBackend that answers TargetCharEnv with the character its prompt names.

    ``reads_context``: the feedback ("Use only the character 'c'.") or a sibling's "ccc"
    under "Correct solution:" in a teacher prompt makes it answer "ccc"; else (and always
    when False) it answers "zzz", which no target is. Records every prompt it was asked.
    """

    def __init__(self, reads_context: bool) -> None:
        self.reads_context = reads_context
        self.prompts: list[list[dict]] = []

    def sample(self, prompts, n: int, params: SamplingParams) -> list[list[Sample]]:
        out = []
        for p in prompts:
            self.prompts.append([dict(m) for m in p])
            text, answer = p[-1]["content"], "zzz"
            for mark in ("Use only the character '", f"{SOLUTION_HEADER}\n\n"):
                if self.reads_context and mark in text:
                    answer = text.split(mark)[1][0] * 3
                    break
            out.append([Sample(answer, None, None, "stop")] * n)
        return out


def _groups(out: Path) -> list[Group]:
    return [g for g in read_trajectories(out / "rollouts.jsonl") if isinstance(g, Group)]


# ---- statistics and the rule ----------------------------------------------------------------


def test_wilson_interval_matches_the_closed_form_and_is_bounded():
    low, high = wilson_interval(14, 64)
    assert low < 14 / 64 < high
    # Wilson (1927) by hand for 14/64, z = 1.95996: centre 0.23468, half-width 0.09965
    assert (low, high) == pytest.approx((0.13502, 0.33433), abs=1e-4)
    assert wilson_interval(0, 10)[0] == pytest.approx(0.0, abs=1e-12)
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_bootstrap_ci_resamples_clusters_and_is_seeded():
    rng = random.Random(0)
    clusters = [[rng.random() for _ in range(rng.randint(1, 6))] for _ in range(30)]
    flat = [x for c in clusters for x in c]
    a = bootstrap_ci(clusters, resamples=500, seed=3)
    assert a == bootstrap_ci(clusters, resamples=500, seed=3)
    assert a[0] < sum(flat) / len(flat) < a[1]
    # a wider confidence level gives a wider interval
    b = bootstrap_ci(clusters, resamples=500, seed=3, confidence=0.5)
    assert a[0] < b[0] < b[1] < a[1]
    assert bootstrap_ci([[], []]) is None


def test_verdict_rule():
    assert verdict(0.9, 0.5, (0.3, 0.7)) == "helps"
    # the context control (right minus wrong context) decides only when the teacher helps
    assert verdict(0.9, 0.5, (0.3, 0.7), context_delta=0.4, context_ci=(0.2, 0.6)) == "helps"
    assert (
        verdict(0.9, 0.5, (0.3, 0.7), context_delta=0.0, context_ci=(-0.06, MIN_GAIN * 0.9))
        == "context_independent"
    )
    assert verdict(0.9, 0.5, (0.3, 0.7), context_delta=0.1, context_ci=(-0.1, 0.3)) == (
        "inconclusive"
    )
    assert verdict(0.9, 0.5, (0.3, 0.7), context_delta=0.05, context_ci=(0.01, 0.2)) == (
        "inconclusive"
    )  # right beats wrong, but by less than MIN_GAIN and not surely below it
    assert verdict(0.9, 0.0, (-0.1, 0.05), context_delta=0.0, context_ci=(0, 0)) == "not_better"
    assert verdict(0.9, MIN_GAIN / 2, (0.01, MIN_GAIN * 0.9)) == "not_better"  # > 0, too small
    assert verdict(0.9, 0.0, (-0.1, 0.05)) == "not_better"
    assert verdict(0.9, 0.15, (-0.02, 0.3)) == "inconclusive"
    assert verdict(0.1, 0.5, (0.3, 0.7)) == "no_signal"
    assert verdict(0.9, None, None) == "inconclusive"


# ---- the wiring, with scripted backends ------------------------------------------------------


def test_a_teacher_that_reads_its_context_helps(tmp_path):
    backend = OracleBackend(reads_context=True)
    config = DiagnoseConfig(env="diagtest/TargetChar-v0", tasks=6, group_size=4, out=str(tmp_path))
    env = TargetCharEnv(n_tasks=6, targets="abcdef")  # every task its own target
    result = diagnose(config, env=env, backend=backend, progress=False)
    r = result.report
    # every student rollout fails ("zzz") and gets feedback: all get a teacher signal
    assert r["student"]["success"] == 0.0
    assert r["teacher_signal"]["frac"] == 1.0 and r["teacher_signal"]["feedback"] == 24
    ans = r["teacher_answers"]
    assert ans["teacher_success"] == 1.0 and ans["student_success"] == 0.0
    assert ans["delta_success"] == 1.0 and ans["delta_success_ci"] == [1.0, 1.0]
    # the control: told another task's target, the teacher answers it, which is wrong here
    ctl = r["context_control"]
    assert ctl["measured"] and ctl["rollouts"] == 24 and ctl["unmatched"] == 0
    assert ctl["wrong_success"] == 0.0 and ctl["right_success"] == 1.0
    assert ctl["delta_success"] == 1.0 and ctl["delta_success_ci"] == [1.0, 1.0]
    assert result.verdict == "helps" and "SDPO should help" in result.message
    assert "because its context is right" in result.message
    # the teacher prompts the backend saw are SDPO's: prompt, feedback section, instruction;
    # 24 with the rollout's own feedback, 24 with another task's
    teacher = [p for p in backend.prompts if TEACHER_INSTRUCTION in p[-1]["content"]]
    assert len(teacher) == 48
    assert all(FEEDBACK_HEADER in p[-1]["content"] for p in teacher)
    assert not r["divergence"]["measured"]  # a scripted backend has no logits
    assert not ctl["divergence"]["measured"]
    # rollouts.jsonl: each teacher group's task id is the key of the rollout it re-asks,
    # then the wrong-context answers under "<key>:wrong"
    groups = _groups(tmp_path)
    students = [t for g in groups[:6] for t in g.trajectories]
    keys = [t.info["teacher_key"] for t in students]
    assert [g.task_id for g in groups[6:30]] == keys and len(set(keys)) == 24
    assert [g.task_id for g in groups[30:]] == [f"{k}:wrong" for k in keys]
    for t in students:  # same prompt and sections, another task's target
        own, wrong = t.info["teacher_context"][-1]["content"], t.info["wrong_context"]
        target = env._target(t.task_id)
        assert (
            f"character '{target}'" in own and f"character '{target}'" not in wrong[-1]["content"]
        )
        assert wrong[-1]["content"].startswith(t.prompt[-1]["content"] + "\n\n" + FEEDBACK_HEADER)
    on_disk = json.loads((tmp_path / "diagnose.json").read_text())
    assert on_disk["verdict"] == "helps" and on_disk["teacher_answers"] == ans
    assert on_disk["context_control"] == ctl
    assert "(d) context control, a wrong context (another task's): success 0.000" in (
        format_summary(r)
    )


class FormatCue(OracleBackend):
    """Answers "aaa" to any teacher prompt (it ends with the instruction), "zzz" to the rest:
    a teacher lifted by the prompt's form, whatever its context says."""

    def sample(self, prompts, n, params):
        return [[Sample("aaa" if p[-1]["content"].endswith(TEACHER_INSTRUCTION) else "zzz",
                        None, None, "stop")] * n for p in prompts]  # fmt: skip


def test_a_teacher_that_any_context_lifts_is_context_independent(tmp_path):
    config = DiagnoseConfig(env="diagtest/TargetChar-v0", tasks=6, group_size=4, out=str(tmp_path))
    env = TargetCharEnv(n_tasks=6, targets="a")
    result = diagnose(config, env=env, backend=FormatCue(False), progress=False)
    r = result.report
    assert r["teacher_answers"]["delta_success"] == 1.0  # the teacher beats the student ...
    ctl = r["context_control"]  # ... and as much with another task's context
    assert ctl["wrong_success"] == ctl["right_success"] == 1.0
    assert ctl["delta_success"] == 0.0 and ctl["delta_success_ci"] == [0.0, 0.0]
    assert ctl["wrong_minus_student"] == 1.0
    assert result.verdict == "context_independent"
    assert "does about as well with a wrong context" in result.message
    assert "should help" not in result.message
    assert "verdict: context_independent" in format_summary(r)


def test_the_context_control_needs_another_task(tmp_path):
    # one task: no other task lends a context, so the control is not measured, and said so
    config = DiagnoseConfig(env="diagtest/TargetChar-v0", tasks=1, group_size=4, out=str(tmp_path))
    result = diagnose(
        config, env=TargetCharEnv(n_tasks=1), backend=OracleBackend(True), progress=False
    )
    ctl = result.report["context_control"]
    assert not ctl["measured"] and ctl["unmatched"] == 4 and "raise --tasks" in ctl["why_not"]
    assert result.verdict == "helps" and "the context control was not measured" in result.message
    assert "(d) context control not measured: no rollout got a wrong context" in format_summary(
        result.report
    )


def test_a_teacher_that_ignores_its_context_is_not_better(tmp_path):
    config = DiagnoseConfig(env="diagtest/TargetChar-v0", tasks=6, group_size=4, out=str(tmp_path))
    result = diagnose(
        config, env=TargetCharEnv(n_tasks=6), backend=OracleBackend(False), progress=False
    )
    assert result.report["teacher_signal"]["frac"] == 1.0
    assert result.report["teacher_answers"]["delta_success"] == 0.0
    assert result.verdict == "not_better"
    assert "expect GRPO to win" in result.message


def test_without_feedback_only_rollouts_with_a_successful_sibling_get_a_teacher(tmp_path):
    class HalfRight(OracleBackend):
        def sample(self, prompts, n, params):  # the first sample of each prompt is right
            return [[Sample("aaa" if i == 0 else "bbb", None, None, "stop") for i in range(n)]
                    for _ in prompts]  # fmt: skip

    env = TargetCharEnv(n_tasks=4)
    config = DiagnoseConfig(
        env="diagtest/TargetChar-v0", algo="sdpo-srf", tasks=4, group_size=3, out=str(tmp_path)
    )
    r = diagnose(config, env=env, backend=HalfRight(False), progress=False).report
    # rollouts 1 and 2 of each group have a successful sibling (0); rollout 0 has none
    assert r["teacher_signal"]["solution"] == 8 and r["teacher_signal"]["frac"] == 8 / 12
    assert r["sdpo"]["use_feedback"] is False
    students = [g for g in _groups(tmp_path) if g.task_id.startswith("t")]
    contexts = [t.info["teacher_context"] for g in students for t in g.trajectories]
    assert [c is not None for c in contexts] == [False, True, True] * 4
    assert all(SOLUTION_HEADER in c[-1]["content"] for c in contexts if c)


# ---- a real model through the CLI ------------------------------------------------------------


def test_tiny_model_through_the_cli(tmp_path, capsys):
    folder = save_tiny(tmp_path / "tiny")
    out = tmp_path / "diag"
    args = ["diagnose", "--env", "diagtest/TargetChar-v0", "--model", str(folder),
            "--tasks", "3", "--rollouts-per-question", "3", "--max-new-tokens", "5", "--output-dir", str(out),
            "--no-progress", "--set", "top_k=7"]  # fmt: skip
    assert rlrf_main(args) == 0
    printed = capsys.readouterr().out
    r = json.loads((out / "diagnose.json").read_text())
    assert f"verdict: {r['verdict']}" in printed
    students = [g for g in _groups(out) if g.task_id.startswith("t")]
    contexts = [t.info["teacher_context"] for g in students for t in g.trajectories]
    assert r["teacher_signal"]["frac"] == pytest.approx(
        sum(c is not None for c in contexts) / len(contexts)
    )
    div = r["divergence"]
    assert div["measured"] and div["top_k"] == 7
    distilled = [t for g in students for t in g.trajectories if t.info["teacher_context"]]
    assert div["tokens"] == sum(len(t.turns[0].response_token_ids) for t in distilled)
    assert div["divergence_mean"] > 0 and 0 <= div["top1_disagreement"] <= 1


def _fails_cleanly(capsys, tmp_path: Path, args: Sequence[str], *needles: str) -> None:
    out = tmp_path / "out"
    assert rlrf_main(["diagnose", *args, "--output-dir", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("rlrf diagnose: error: "), err
    for needle in needles:
        assert needle in err, err
    assert not out.exists()


def test_bad_input(capsys, tmp_path):
    _fails_cleanly(capsys, tmp_path, ["--env", "rlrf/Arithmetc-v0"], "Did you mean")
    _fails_cleanly(capsys, tmp_path, ["--env", "rlrf/Arithmetic-v0", "--set", "alpah=0.5"], "alpah")
    _fails_cleanly(
        capsys, tmp_path, ["--env", "rlrf/Arithmetic-v0", "--model", str(tmp_path / "no")],
        "does not exist",
    )  # fmt: skip
    with pytest.raises(ConfigError, match="alpha"):
        DiagnoseConfig(env="x", sdpo={"alpha": 2.0})


# ---- the two known cases ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def hint_model():
    """The SDPO end-to-end test's pretrained hint-reading model (pretrained once here)."""
    from tests.algorithms.sdpo.test_e2e_sdpo import SEED, _pretrained_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tok = tiny_tokenizer()
        return _pretrained_model(tok, SEED), tok
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_hint_reading_model_where_sdpo_learns_is_diagnosed_as_helped(tmp_path, hint_model):
    from tests.algorithms.sdpo.test_e2e_sdpo import LENGTH, HintEnv

    model, tok = hint_model
    config = DiagnoseConfig(
        env="hint", model="tiny-hint", tasks=8, group_size=8, max_tokens=LENGTH + 1,
        out=str(tmp_path),
    )  # fmt: skip
    result = diagnose(config, env=HintEnv(), backend=HFPolicy(model, tok), progress=False)
    r = result.report
    print(result.message)
    assert result.verdict == "helps", result.message
    assert r["teacher_signal"]["frac"] > 0.9
    assert r["teacher_answers"]["delta_success_ci"][0] > MIN_GAIN
    div = r["divergence"]
    assert div["measured"] and div["divergence_mean"] > 0.1
    # the teacher, told the symbol, puts less mass than the student on wrong answers
    assert div["logprob_gap_failed"] < 0
    # told another task's symbol, it writes that one: the lift needs the right context
    ctl = r["context_control"]
    # (a context with a sibling's solution has no wrong one when no other task had a success)
    assert ctl["measured"] and ctl["rollouts"] >= 0.8 * r["teacher_signal"]["rollouts"]
    assert ctl["wrong_success"] < 0.1 and ctl["delta_success_ci"][0] > MIN_GAIN
    assert ctl["divergence"]["measured"] and ctl["divergence"]["divergence_mean"] > 0.1


@pytest.mark.slow
def test_hint_reading_model_lifted_by_any_hint_is_context_independent(tmp_path, hint_model):
    from tests.algorithms.sdpo.test_e2e_sdpo import LENGTH, SYMBOLS, HintEnv

    class AnyRepeatedSymbol(HintEnv):
        """HintEnv whose answer is any symbol written LENGTH times (the feedback still names
        the task's): the model copies whichever symbol its hint names, so another task's
        hint lifts it exactly as much as the right one."""

        def evaluate(self, task_id, response, history=()):
            share = max(sum(c == s for c in response) for s in SYMBOLS) / max(1, len(response))
            outcome = super().evaluate(task_id, response, history)
            return dataclasses.replace(outcome, reward=1.0 if share >= 1.0 else share)

    model, tok = hint_model
    config = DiagnoseConfig(
        env="hint-any", model="tiny-hint", tasks=8, group_size=8, teacher_samples=4,
        max_tokens=LENGTH + 1, out=str(tmp_path),
    )  # fmt: skip
    env = AnyRepeatedSymbol()
    result = diagnose(config, env=env, backend=HFPolicy(model, tok), progress=False)
    r = result.report
    print(result.message)
    assert r["teacher_answers"]["delta_success_ci"][0] > MIN_GAIN  # the teacher beats the student
    ctl = r["context_control"]
    assert ctl["measured"] and ctl["wrong_minus_student_ci"][0] > MIN_GAIN  # so does a wrong hint
    assert ctl["delta_success_ci"][1] < MIN_GAIN
    assert result.verdict == "context_independent", result.message
    # the wrong hints did name other symbols: the control changed the context's content
    students = [g for g in _groups(tmp_path) if not g.task_id.count(":")][:8]
    for g in students:
        own = SYMBOLS[int(g.task_id[1:])]
        for t in g.trajectories:
            if t.info["wrong_context"]:
                assert own * 8 not in t.info["wrong_context"][-1]["content"]


@pytest.mark.slow
def test_embedded_model_on_one_digit_addition_is_not_diagnosed_as_helped(tmp_path):
    config = DiagnoseConfig(
        env="rlrf/Arithmetic-v0", env_kwargs={"digits": 1, "ops": "+"}, tasks=8,
        group_size=4, max_tokens=48, out=str(tmp_path),
    )  # fmt: skip
    result = diagnose(config, progress=False)
    print(format_summary(result.report))
    assert result.verdict != "helps", result.message
    assert "should help" not in result.message
    assert result.report["divergence"]["measured"]


# ---- Gymnasium-style envs: the teacher's answers by replay (issue 27 item 4) ---------------


class GymTarget(rlrf.RLRFEnv):
    """Gymnasium style: the seed picks the target character; one turn, final observation []."""

    resets = 0
    drift_after: int | None = None  # after this many resets the prompt changes (not replayable)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        type(self).resets += 1
        self.target = "abc"[int(self.np_random.integers(0, 3))]
        text = "Reply with three characters."
        if self.drift_after is not None and type(self).resets > self.drift_after:
            text += " Quickly."
        self.chat = [{"role": "user", "content": text}]
        return list(self.chat), {"task_id": f"target-{self.target}"}

    def step(self, action):
        ok = action == self.target * 3
        text = f"Use only the character '{self.target}'."
        feedback = () if ok else (rlrf.Feedback(rlrf.FeedbackKind.WRONG_ANSWER, text),)
        return [], float(ok), True, False, {"feedback": feedback}


class ReadsFeedback:
    """Answers ``xxx`` when its prompt says "Use only the character 'x'", else ``zzz``."""

    def __init__(self, reads: bool = True) -> None:
        self.reads = reads

    def sample(self, prompts, n, params):
        out = []
        for p in prompts:
            text = p[-1]["content"]
            mark = "Use only the character '"
            answer = text.split(mark)[1][0] * 3 if self.reads and mark in text else "zzz"
            out.append([Sample(answer, None, None, "stop")] * n)
        return out


def test_a_gymnasium_style_env_is_measured_by_replaying_the_seed(tmp_path):
    config = DiagnoseConfig(env="diagtest/GymTarget-v0", tasks=5, group_size=3, out=str(tmp_path))
    result = diagnose(config, env=GymTarget(), backend=ReadsFeedback(), progress=False)
    ans = result.report["teacher_answers"]
    assert ans["measured"] and ans["how"].startswith("replayed: a fresh env reset with the")
    assert ans["replay_mismatches"] == 0 and ans["compared_rollouts"] == 15
    assert ans["teacher_success"] == 1.0 and ans["student_success"] == 0.0
    assert result.verdict == "helps"
    # each teacher answer was graded on its rollout's own task (the seed's target)
    groups = _groups(tmp_path)
    students = {t.info["teacher_key"]: t for g in groups[:5] for t in g.trajectories}
    for g in groups[5:20]:
        target = students[g.task_id].task_id.removeprefix("target-")
        assert {t.turns[0].response for t in g.trajectories} == {target * 3}
        assert all(t.success for t in g.trajectories)
    # the control's answers, replayed the same way: told another target, graded on their own
    ctl = result.report["context_control"]
    assert ctl["measured"] and ctl["replay_mismatches"] == 0 and ctl["wrong_success"] == 0.0
    for g in groups[20:]:
        student = students[g.task_id.removesuffix(":wrong")]
        target = student.task_id.removeprefix("target-")
        assert {t.turns[0].response for t in g.trajectories} != {target * 3}
        assert not any(t.success for t in g.trajectories)
    assert len(groups) == 20 + ctl["rollouts"]


def test_a_gymnasium_style_env_that_does_not_replay_is_named(tmp_path):
    class Drifting(GymTarget):
        resets = 0
        drift_after = 6  # the 6 student rollouts see one prompt, their replays another

    config = DiagnoseConfig(env="diagtest/Drift-v0", tasks=2, group_size=3, out=str(tmp_path))
    result = diagnose(config, env=Drifting(), backend=ReadsFeedback(), progress=False)
    ans = result.report["teacher_answers"]
    assert not ans["measured"] and ans["replay_mismatches"] == 6 * config.teacher_samples
    assert "not deterministic given the seed and the earlier actions" in ans["why_not"]
    assert result.verdict != "helps"
    assert "(b) not measured: the env is not deterministic" in format_summary(result.report)
