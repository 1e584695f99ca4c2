"""rlrf/CodeRepair-v0: a stateful multi-turn env on a real sandbox."""

import random

import pytest

import rlrf
from envs.code_repair import CodeRepairEnv, apply_edits
from rlrf import Sample, SamplingParams
from rlrf.rollout import collect_groups, turn_prompts

WRONG = "```python\na, b = map(int, input().split())\nprint(a - b)\n```"
FIX = "<<<<<<< SEARCH\nprint(a - b)\n=======\nprint(a + b)\n>>>>>>> REPLACE"
BAD_EDIT = "<<<<<<< SEARCH\nprint(b - a)\n=======\nprint(a + b)\n>>>>>>> REPLACE"


@pytest.fixture(scope="module")
def env():
    env = rlrf.make("rlrf/CodeRepair-v0")
    yield env
    env.close()


def test_registered_gymnasium_style_and_passes_check_env(env):
    assert rlrf.env.env_style(env) == "gymnasium"
    assert env.env_id == "rlrf/CodeRepair-v0" and env.max_turns == 3
    rlrf.check_env(env)


def test_an_edit_needs_the_program_the_env_kept(env):
    chat, info = env.reset(options={"task_id": "sum-two"})
    assert info["task_id"] == "sum-two" and "SEARCH" in chat[-1]["content"]
    first = env.step_result(WRONG)
    assert (first.reward, first.done) == (0.0, False)
    assert first.feedback[0].kind.value == "wrong_answer"
    assert first.observation[-1]["content"].startswith(first.feedback[0].text)
    # an edit that does not match leaves the program alone and says so
    bad = env.step_result(BAD_EDIT)
    assert bad.feedback[0].kind.value == "format" and "was not applied" in bad.feedback[0].text
    assert env.program == "a, b = map(int, input().split())\nprint(a - b)"
    fixed = env.step_result(FIX)
    assert (fixed.reward, fixed.terminated, fixed.success) == (1.0, True, True)
    assert fixed.info["edits"] == 1 and fixed.info["tests_passed"] == fixed.info["tests_total"]


def test_the_same_edit_without_the_state_is_not_a_program(env):
    env.reset(options={"task_id": "sum-two"})
    alone = env.step_result(FIX)  # nothing to edit yet: graded as a response without code
    assert alone.reward == 0.0 and alone.feedback[0].kind.value == "format"


def test_episode_is_cut_after_max_turns_and_twins_do_not_share_state(env):
    a, b = env.spawn(), env.spawn()
    assert a.grader is env.grader  # one grader and sandbox for every twin
    a.reset(options={"task_id": "sum-two"})
    b.reset(options={"task_id": "sum-two"})
    a.step(WRONG)
    assert b.program is None
    results = [a.step_result(WRONG), a.step_result(WRONG)]
    assert results[-1].truncated and not results[-1].terminated
    a.close()  # a twin does not close the grader it borrowed: the template still grades
    env.reset(options={"task_id": "sum-two"})
    assert env.step_result(WRONG).feedback[0].kind.value == "wrong_answer"


def test_seed_picks_the_problem_and_gold_response_solves_it(env):
    chat1, info1 = env.reset(seed=5)
    chat2, info2 = env.spawn().reset(seed=5)
    assert (chat1, info1) == (chat2, info2)
    gold = env.gold_response(info1["task_id"])
    assert env.step_result(gold).reward == 1.0
    assert apply_edits("x", "no edits here") is None


class ScriptedRepairs:
    """A backend that first writes a wrong program, then (sometimes) the fixing edit."""

    def sample(self, prompts, n, params):
        out = []
        for i, p in enumerate(prompts):
            first = len(p) == 1
            texts = [WRONG] if first else [FIX, BAD_EDIT]
            rng = random.Random(f"{params.seed}:{p}:{i}")
            out.append([Sample(rng.choice(texts), [1, 2], [-0.1, -0.2], "stop") for _ in range(n)])
        return out


def test_rollout_loop_plays_repairs_on_the_sandbox(env):
    groups, stats = collect_groups(
        env, ScriptedRepairs(), ["sum-two", "sum-two"], 3, SamplingParams(seed=1), env_workers=3
    )
    trajs = [t for g in groups for t in g.trajectories]
    assert stats.generations == stats.turns == sum(len(t.turns) for t in trajs) > len(trajs)
    for t in trajs:
        assert t.error is None and t.turns[0].response == WRONG
        assert t.turns[0].info["tests_total"] > 0  # the sandbox ran the tests
        solved = any(turn.response == FIX for turn in t.turns)
        assert t.success == solved and t.reward == float(solved)
        assert len(turn_prompts(t)) == len(t.turns)
    assert any(t.success for t in trajs)


@pytest.mark.slow
def test_trains_two_grpo_steps_through_the_trainer(tmp_path):
    from algorithms.engine.trainer import Trainer
    from algorithms.grpo.config import GRPOTrainConfig
    from algorithms.testing import tiny_model, tiny_tokenizer

    env = CodeRepairEnv(max_turns=2, limit=4)
    cfg = GRPOTrainConfig(
        output_dir=str(tmp_path),
        steps=2,
        questions_per_step=2,
        rollouts_per_question=2,
        max_new_tokens=8,
        eval_every=0,
        checkpoint_every=0,
        progress=False,
        lr=1e-3,
        env_workers=2,
    )
    trainer = Trainer(cfg, env=env, model=tiny_model(), tokenizer=tiny_tokenizer())
    for step in range(2):
        groups, rstats = trainer.collect()
        # random weights write no code block: each turn gets format feedback and the episode
        # goes on to its second (last) turn; every sampled turn is counted and trained
        assert all(t.error is None and len(t.turns) == 2 for g in groups for t in g.trajectories)
        assert rstats.generations == rstats.turns == 8 and rstats.episodes_truncated == 4
        metrics = trainer.learn(groups, rstats)
        assert metrics["rollout/trained_rows"] == 8.0 and metrics["rollout/missing_rewards"] == 0
        assert metrics["train/optimizer_steps"] >= 1
        assert trainer.step == step + 1
    env.close()
