"""Multi-turn training: every assistant turn trains, env-written tokens never do.

SDPO gives each turn its own teacher context (the chat up to that turn, the feedback after
THAT turn, a successful sibling's final answer); GRPO gives each turn its episode's
advantage. The toy env here says nothing after the first turn and grades only the second,
so a first-turn-only SDPO has nothing to distil.
"""

from __future__ import annotations

import pytest

from algorithms.engine.batching import Row
from algorithms.engine.trainer import Trainer
from algorithms.grpo.config import GRPOTrainConfig
from algorithms.sampling.hf import encode_chat
from algorithms.sdpo import (
    FEEDBACK_HEADER,
    SOLUTION_HEADER,
    SDPOObjective,
    turn_teacher_contexts,
)
from algorithms.sdpo.config import SDPOConfig, SDPOTrainConfig
from algorithms.sdpo.objective import has_teacher
from algorithms.testing import tiny_model, tiny_tokenizer
from rlrf import Feedback, FeedbackKind, Group, RLRFEnv, Trajectory, Turn
from rlrf.rollout import turn_prompts

PROMPT = ({"role": "user", "content": "Write a line, then revise it."},)
OBS = "Noted. Now send your final line."  # what the env writes after the first turn
HINT = "Use only the character 'a'."


class LateFeedback(RLRFEnv):
    """Gymnasium style, two turns: the first response is only acknowledged (reward 0, no
    feedback, an env message in the chat); the second is graded by its share of ``'a'``
    characters, with feedback unless it is perfect."""

    max_turns = 2

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.turn = 0
        self.chat = [dict(m) for m in PROMPT]
        return list(self.chat), {"task_id": f"seed-{seed}"}

    def step(self, action):
        self.turn += 1
        self.chat.append({"role": "assistant", "content": action})
        if self.turn == 1:
            self.chat.append({"role": "user", "content": OBS})
            return list(self.chat), 0.0, False, False, {"feedback": ()}
        reward = sum(c == "a" for c in action) / max(1, len(action))
        fb = () if reward >= 1.0 else (Feedback(FeedbackKind.WRONG_ANSWER, HINT),)
        return list(self.chat), reward, True, False, {"feedback": fb}


def _episode(first: str, final: str, reward: float, token_base: int) -> Trajectory:
    """A finished LateFeedback episode, by hand (token ids are distinct per turn)."""
    fb = () if reward >= 1.0 else (Feedback(FeedbackKind.WRONG_ANSWER, HINT),)
    t0 = Turn(
        first,
        0.0,
        (),
        response_token_ids=(token_base, token_base + 1),
        logprobs=(-1.0, -1.0),
        observation=({"role": "user", "content": OBS},),
    )
    t1 = Turn(final, reward, fb, response_token_ids=(token_base + 2,), logprobs=(-0.5,))
    return Trajectory("toy/Late", "t", PROMPT, [t0, t1], seed=3, success=reward >= 1.0)


def _group() -> Group:
    return Group(
        "toy/Late",
        "t",
        [
            _episode("x1", "x2", 0.0, 10),  # fails; feedback only after its second turn
            _episode("y1", "aaa", 1.0, 20),  # succeeds at its second turn
            _episode("z1", "z2", 0.0, 30),
        ],
    )


def _text(ctx) -> str:
    return ctx[-1]["content"]


# --- teacher contexts -------------------------------------------------------------------


def test_each_turn_gets_the_chat_so_far_and_the_feedback_after_that_turn():
    feedback_only = SDPOConfig(use_solution=False)
    ctxs = turn_teacher_contexts(_group(), feedback_only)
    # the first turns have no feedback and no solution is shown: nothing to distil there
    assert [c[0] for c in ctxs] == [None, None, None]
    assert ctxs[1][1] is None  # the success got no feedback
    for i, first in ((0, "x1"), (2, "z1")):
        ctx = ctxs[i][1]
        # the chat up to the second turn (the student's own first turn and the env's
        # message), then the feedback on the second turn, in the env's last message
        assert ctx[:2] == [PROMPT[0], {"role": "assistant", "content": first}]
        assert len(ctx) == 3 and _text(ctx).startswith(OBS)
        assert f"{FEEDBACK_HEADER}\n\n{HINT}" in _text(ctx)
        assert "x2" not in str(ctx) and "z2" not in str(ctx)  # never the attempt itself


def test_the_solution_is_the_successful_siblings_final_answer_on_every_turn():
    ctxs = turn_teacher_contexts(_group(), SDPOConfig())
    for i in (0, 2):
        for k in (0, 1):
            assert f"{SOLUTION_HEADER}\n\naaa" in _text(ctxs[i][k])
            assert "y1" not in _text(ctxs[i][k])  # not the sibling's same-index turn
    assert FEEDBACK_HEADER not in _text(ctxs[0][0])  # no feedback after the first turn
    assert ctxs[1] == [None, None]  # no OTHER success, no feedback


def test_a_chat_ending_with_a_tool_result_gets_the_sections_in_a_new_user_message():
    traj = _episode("x1", "x2", 0.0, 10)
    traj.turns[0].observation = ({"role": "tool", "content": "42"},)
    [[_, ctx]] = turn_teacher_contexts(Group("toy/Late", "t", [traj]), SDPOConfig())
    assert [m["role"] for m in ctx] == ["user", "assistant", "tool", "user"]
    assert ctx[0] == PROMPT[0] and _text(ctx).startswith(FEEDBACK_HEADER)


# --- rows: every turn, env tokens only in prompts -------------------------------------


def _rows(config: SDPOConfig):
    tok = tiny_tokenizer()
    objective = SDPOObjective(SDPOTrainConfig(sdpo=config), tiny_model(), tok)
    group = _group()
    rows, stats = objective.rows([group], lambda m: encode_chat(tok, m))
    return tok, group, rows, stats


def test_pure_sdpo_distils_the_later_turns_that_carry_feedback():
    tok, group, rows, stats = _rows(SDPOConfig(use_solution=False))
    # first-turn-only SDPO would have no row at all here
    assert [(r.trajectory, r.turn) for r in rows] == [(0, 1), (2, 1)]
    assert stats["teacher_signal"] == 2 and stats["no_teacher_signal"] == 4  # turns
    for r in rows:
        traj = group.trajectories[r.trajectory]
        assert r.response_ids == list(traj.turns[1].response_token_ids)
        prompt = tok.decode(r.prompt_ids)
        assert OBS in prompt and traj.turns[0].response in prompt  # env text: prompt only
        assert prompt == tok.decode(encode_chat(tok, turn_prompts(traj)[1]))
        teacher = tok.decode(r.teacher_prompt_ids)
        assert OBS in teacher and HINT in teacher and teacher.endswith("assistant\n")
    # what was used is recorded per turn
    assert group.trajectories[0].turns[1].info["teacher_context"][-1]["content"].startswith(OBS)
    assert group.trajectories[0].turns[0].info["teacher_context"] is None


def test_every_turn_trains_with_the_mix_and_each_turn_has_its_own_teacher():
    tok, group, rows, stats = _rows(SDPOConfig(grpo_mix=0.5))
    assert [(r.trajectory, r.turn) for r in rows] == [(t, k) for t in range(3) for k in (0, 1)]
    teachers = {(r.trajectory, r.turn): r.teacher_prompt_ids for r in rows}
    assert teachers[(1, 0)] is None and teachers[(1, 1)] is None
    first, second = (tok.decode(teachers[(0, k)]) for k in (0, 1))
    assert OBS not in first and HINT not in first and "aaa" in first
    assert OBS in second and HINT in second and "aaa" in second
    advantages = {(r.trajectory, r.turn): r.advantage for r in rows}
    for t in range(3):  # the episode's advantage on each of its turns
        assert advantages[(t, 0)] == advantages[(t, 1)]
    assert advantages[(1, 0)] > 0 > advantages[(0, 0)]
    # env-written tokens are never response tokens
    responses = [tok.decode(r.response_ids) for r in rows]
    assert not any(OBS in x or HINT in x for x in responses)
    assert stats["teacher_signal"] == 4 and stats["no_teacher_signal"] == 2


def test_grpo_trains_every_turn_with_the_episode_return():
    from algorithms.grpo import GRPOObjective

    tok = tiny_tokenizer()
    objective = GRPOObjective(GRPOTrainConfig(), tiny_model())
    group = _group()
    rows, _ = objective.rows([group], lambda m: encode_chat(tok, m))
    assert [(r.trajectory, r.turn) for r in rows] == [(t, k) for t in range(3) for k in (0, 1)]
    mean = 1.0 / 3
    for r in rows:
        assert r.advantage == pytest.approx(group.trajectories[r.trajectory].reward - mean)
        expected = group.trajectories[r.trajectory].turns[r.turn].response_token_ids
        assert r.response_ids == list(expected) and type(r) is Row  # no teacher field


# --- through the trainer ----------------------------------------------------------------


def _train_two_steps(config, env):
    trainer = Trainer(config, env=env, model=tiny_model(), tokenizer=tiny_tokenizer())
    trainer._trajectory_writer = None
    batches = []
    loss = trainer.objective.loss

    def recording_loss(batch, norm, scorer, *, on_policy):
        batches.append(batch)
        return loss(batch, norm, scorer, on_policy=on_policy)

    trainer.objective.loss = recording_loss
    steps = []
    for _ in range(2):
        batches.clear()
        groups, rstats = trainer.collect()
        metrics = trainer.learn(groups, rstats)
        steps.append((groups, rstats, metrics, [r for b in batches for r in b.rows], list(batches)))
    return trainer, steps


TRAIN = dict(
    steps=2,
    questions_per_step=2,
    rollouts_per_question=3,
    max_new_tokens=6,
    eval_every=0,
    checkpoint_every=0,
    progress=False,
    lr=1e-3,
)


def _check_rows_are_turns(tok, groups, rows):
    """Each trained row is one turn: its sampled tokens, its chat-so-far as the prompt."""
    for r in rows:
        traj = groups[r.group].trajectories[r.trajectory]
        assert r.response_ids == list(traj.turns[r.turn].response_token_ids)
        assert r.prompt_ids == encode_chat(tok, turn_prompts(traj)[r.turn])
        if r.turn > 0:
            assert OBS in tok.decode(r.prompt_ids)


@pytest.mark.slow
def test_grpo_on_a_stateful_env_trains_every_turn_and_counts_them(tmp_path):
    cfg = GRPOTrainConfig(output_dir=str(tmp_path), **TRAIN)
    trainer, steps = _train_two_steps(cfg, LateFeedback())
    tok = trainer.tokenizer
    generations = 0
    for groups, _, metrics, rows, batches in steps:
        turns = [t for g in groups for traj in g.trajectories for t in traj.turns]
        assert len(turns) == 12 and all(len(tr.turns) == 2 for g in groups for tr in g.trajectories)
        generations += 12
        assert metrics["rollout/turns"] == 12 and metrics["rollout/generations"] == generations
        assert metrics["rollout/env_errors"] == 0 and metrics["rollout/episodes_truncated"] == 0
        trained = [t for t in turns if t.response_token_ids]
        assert metrics["rollout/trained_rows"] == len(trained) == len(rows)
        # the tokens that carry a loss are exactly the sampled ones, every turn's
        masked = sum(int(b.mask.sum()) for b in batches)
        assert masked == sum(len(t.response_token_ids) for t in trained)
        _check_rows_are_turns(tok, groups, rows)
        assert {r.turn for r in rows} == {0, 1}
    assert trainer.generations == 24


@pytest.mark.slow
def test_sdpo_on_a_stateful_env_distils_the_turns_with_feedback(tmp_path):
    cfg = SDPOTrainConfig(output_dir=str(tmp_path), **TRAIN)  # pure SDPO
    trainer, steps = _train_two_steps(cfg, LateFeedback())
    tok = trainer.tokenizer
    for groups, _, metrics, rows, batches in steps:
        trajs = [t for g in groups for t in g.trajectories]
        # a random model never succeeds: the second turn of every episode has the hint
        # after it, the first has nothing, so exactly the second turns are distilled
        assert not any(t.success for t in trajs)
        assert metrics["rollout/trained_rows"] == len(rows) == 6
        assert metrics["rollout/turns"] == 12 and metrics["rollout/no_teacher_signal"] == 6
        _check_rows_are_turns(tok, groups, rows)
        assert {r.turn for r in rows} == {1} and all(r.teacher_prompt_ids for r in rows)
        assert metrics["rollout/teacher_signal_frac"] == pytest.approx(0.5)
        distilled = sum(int((b.mask & has_teacher(b)[:, None]).sum()) for b in batches)
        assert distilled == sum(len(t.turns[1].response_token_ids) for t in trajs)
        for r in rows:
            if r.teacher_prompt_ids is not None:
                teacher = tok.decode(r.teacher_prompt_ids)
                assert OBS in teacher and HINT in teacher
        assert metrics["train/optimizer_steps"] >= 1


@pytest.mark.slow
def test_sdpo_trains_the_shipped_code_repair_env(tmp_path):
    from envs.code_repair import CodeRepairEnv

    env = CodeRepairEnv(max_turns=2, limit=4)
    cfg = SDPOTrainConfig(
        output_dir=str(tmp_path), **{**TRAIN, "rollouts_per_question": 2, "max_new_tokens": 8}
    )
    try:
        trainer, steps = _train_two_steps(cfg, env)
    finally:
        env.close()
    for _, rstats, metrics, rows, _ in steps:
        assert rstats.generations == rstats.turns == 8 and metrics["rollout/turns"] == 8
        assert metrics["rollout/trained_rows"] == len(rows) == 8
        # every turn of a random model gets format feedback: every turn is distilled
        assert {(r.turn, r.teacher_prompt_ids is not None) for r in rows} == {(0, True), (1, True)}


def test_a_long_earlier_chat_is_not_cut_and_the_error_says_so():
    from algorithms.sdpo import encode_teacher_prompt
    from rlrf.errors import ConfigError

    tok = tiny_tokenizer()
    [_, ctx] = turn_teacher_contexts(_group(), SDPOConfig(use_solution=False))[0]
    full = encode_teacher_prompt(tok, ctx, max_tokens=10_000)
    # the body (the env's last message and the feedback) goes first, from its left
    cut = tok.decode(encode_teacher_prompt(tok, ctx, max_tokens=len(full) - len(OBS)))
    assert "x1" in cut and OBS not in cut and HINT in cut
    with pytest.raises(ConfigError, match="earlier turns of a multi-turn chat"):
        encode_teacher_prompt(tok, ctx, max_tokens=40)


class SplitRecorder(LateFeedback):
    """LateFeedback that records the (seed, split) of every reset, across instances."""

    resets: list = []  # noqa: RUF012 (shared on purpose: the rollout loop spawns instances)

    def reset(self, *, seed=None, options=None):
        SplitRecorder.resets.append((seed, (options or {}).get("split")))
        return super().reset(seed=seed, options=options)


@pytest.mark.slow
def test_evaluation_of_a_stateful_env_plays_held_out_seeds_with_split_test(tmp_path):
    from rlrf.rollout import EVAL_SEED

    SplitRecorder.resets = []
    cfg = GRPOTrainConfig(output_dir=str(tmp_path), **{**TRAIN, "eval_tasks": 2, "eval_k": 2})
    trainer = Trainer(cfg, env=SplitRecorder(), model=tiny_model(), tokenizer=tiny_tokenizer())
    metrics = trainer.evaluate()
    assert metrics["eval/tasks"] == 2 and metrics["eval/env_errors"] == 0
    assert sorted(SplitRecorder.resets) == [(EVAL_SEED, "test")] * 2 + [(EVAL_SEED + 1, "test")] * 2
    # training draws other seeds, from the train split
    SplitRecorder.resets = []
    trainer.collect()
    assert {split for _, split in SplitRecorder.resets} == {"train"}
    assert not {seed for seed, _ in SplitRecorder.resets} & {EVAL_SEED, EVAL_SEED + 1}
