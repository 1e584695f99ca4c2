"""SDPO teacher contexts: solution selection, sections, groups, and left truncation."""

from __future__ import annotations

import pytest

from algorithms.sdpo import (
    FEEDBACK_HEADER,
    SOLUTION_HEADER,
    SRF,
    SUCCESS_FEEDBACK_HEADER,
    TEACHER_INSTRUCTION,
    SDPOConfig,
    build_teacher_messages,
    encode_teacher_prompt,
    remove_reasoning,
    select_solution,
    teacher_contexts_for_group,
    truncate_teacher_prompt,
)
from algorithms.testing import tiny_tokenizer
from rlrf import Feedback, FeedbackKind, Group, Trajectory, Turn
from rlrf.errors import ConfigError

PROMPT = [
    {"role": "system", "content": "You write Python."},
    {"role": "user", "content": "Print the sum of two numbers."},
]


def group_of(*rollouts: tuple[str, float | None, str]) -> Group:
    trajs = []
    for response, reward, fb in rollouts:
        feedback = (Feedback(FeedbackKind.WRONG_ANSWER, fb),) if fb else ()
        trajs.append(Trajectory("toy", "t0", tuple(PROMPT), [Turn(response, reward, feedback)]))
    return Group("toy", "t0", trajs)


def user_text(messages) -> str:
    return messages[-1]["content"]


# --- solutions ------------------------------------------------------------------------------


def test_select_solution_takes_the_first_other_success():
    responses = ["a", "b", "c", "d"]
    rewards = [0.0, 1.0, 0.0, 1.0]
    assert select_solution(responses, rewards, 0) == "b"
    assert select_solution(responses, rewards, 1) == "d"  # never its own
    assert select_solution(responses, rewards, 3) == "b"
    assert select_solution(responses, [0.0, 0.6, 0.0, 0.0], 0) is None
    assert select_solution(responses, [0.0, 0.6, 0.0, 0.0], 0, threshold=0.5) == "b"
    assert select_solution(responses, [None, None, 1.0, None], 0) == "c"
    assert select_solution(responses, [1.0, None, None, None], 1) == "a"
    assert select_solution(responses, [None, 1.0, None, None], 1) is None


def test_select_solution_strips_reasoning_and_skips_empty():
    responses = ["x", "<think>only thinking</think>", "<think>plan\nmore</think>\n```print(3)```"]
    assert select_solution(responses, [0, 1, 1], 0) == "```print(3)```"
    assert select_solution(responses, [0, 1, 1], 0, strip=False) == responses[1]
    assert remove_reasoning("step by step</think>answer") == "answer"
    assert remove_reasoning("a<think>x</think>b<think>y</think>c") == "abc"
    assert remove_reasoning("no reasoning") == "no reasoning"


# --- messages -------------------------------------------------------------------------------


def test_teacher_messages_have_sections_in_order_and_keep_the_prompt():
    original = [dict(m) for m in PROMPT]
    msgs = build_teacher_messages(PROMPT, solution="print(a+b)", feedback="Wrong answer on 1 2")
    assert PROMPT == original  # not modified in place
    assert msgs[0] == PROMPT[0] and len(msgs) == 2
    text = user_text(msgs)
    assert text == (
        "Print the sum of two numbers.\n\n"
        f"{SOLUTION_HEADER}\n\nprint(a+b)\n\n"
        f"{FEEDBACK_HEADER}\n\nWrong answer on 1 2\n\n"
        f"{TEACHER_INSTRUCTION}"
    )


def test_teacher_messages_options():
    sol, fb = "print(a+b)", "Wrong answer"
    only_sol = build_teacher_messages(PROMPT, solution=sol, feedback=None)
    assert SOLUTION_HEADER in user_text(only_sol) and FEEDBACK_HEADER not in user_text(only_sol)
    only_fb = build_teacher_messages(PROMPT, solution=None, feedback=fb)
    assert FEEDBACK_HEADER in user_text(only_fb) and SOLUTION_HEADER not in user_text(only_fb)
    assert user_text(only_fb).endswith(TEACHER_INSTRUCTION)

    ref_code = SDPOConfig(feedback_only_without_solution=True)
    both = build_teacher_messages(PROMPT, solution=sol, feedback=fb, config=ref_code)
    assert FEEDBACK_HEADER not in user_text(both)
    fb_only = build_teacher_messages(PROMPT, solution=None, feedback=fb, config=ref_code)
    assert FEEDBACK_HEADER in user_text(fb_only)

    srf = build_teacher_messages(PROMPT, solution=sol, feedback=fb, config=SRF())
    assert FEEDBACK_HEADER not in user_text(srf) and sol in user_text(srf)
    assert build_teacher_messages(PROMPT, solution=None, feedback=fb, config=SRF()) is None
    no_sol = SDPOConfig(use_solution=False)
    assert SOLUTION_HEADER not in user_text(
        build_teacher_messages(PROMPT, solution=sol, feedback=fb, config=no_sol)
    )


def test_no_solution_and_no_feedback_gives_no_context():
    assert build_teacher_messages(PROMPT, solution=None, feedback=None) is None
    assert build_teacher_messages(PROMPT, solution="  ", feedback="") is None


def test_sections_go_into_the_last_user_message():
    chat = [*PROMPT, {"role": "assistant", "content": "x"}, {"role": "user", "content": "again"}]
    msgs = build_teacher_messages(chat, solution=None, feedback="fb")
    assert msgs[1] == chat[1] and msgs[3]["content"].startswith("again\n\n")
    with pytest.raises(ValueError, match="no user message"):
        build_teacher_messages([PROMPT[0]], solution="s", feedback=None)


# --- groups ---------------------------------------------------------------------------------


def test_group_with_a_single_success():
    g = group_of(("wrong1", 0.0, "expected 3"), ("print(a+b)", 1.0, ""), ("wrong2", 0.0, ""))
    ctx = teacher_contexts_for_group(g)
    assert ctx[1] is None  # the only success gets no solution from itself, and has no feedback
    for i in (0, 2):
        text = user_text(ctx[i])
        assert "print(a+b)" in text
        assert "wrong1" not in text and "wrong2" not in text  # own attempt never shown
    assert "expected 3" in user_text(ctx[0]) and FEEDBACK_HEADER not in user_text(ctx[2])


def test_group_with_all_equal_rewards():
    failures = group_of(("a", 0.0, ""), ("b", 0.0, ""), ("c", 0.0, ""))
    assert teacher_contexts_for_group(failures) == [None, None, None]
    with_feedback = group_of(("a", 0.0, "err a"), ("b", 0.0, ""), ("c", 0.0, "err c"))
    ctx = teacher_contexts_for_group(with_feedback)
    assert ctx[1] is None and "err a" in user_text(ctx[0]) and "err c" in user_text(ctx[2])
    assert teacher_contexts_for_group(with_feedback, SRF()) == [None, None, None]
    successes = group_of(("s0", 1.0, ""), ("s1", 1.0, ""), ("s2", 1.0, ""))
    ctx = teacher_contexts_for_group(successes)
    assert [c is not None for c in ctx] == [True, True, True]
    assert "s1" in user_text(ctx[0]) and "s0" in user_text(ctx[1]) and "s0" in user_text(ctx[2])


def test_group_missing_reward_and_feedback_cap():
    g = group_of(("a", None, "err"), ("ok", 1.0, ""), ("b", 0.0, "x" * 500))
    ctx = teacher_contexts_for_group(g, SDPOConfig(feedback_max_chars=100))
    assert ctx[0] is None  # missing reward: skipped, like every trainer does
    assert "truncated" in user_text(ctx[2]) and "x" * 101 not in user_text(ctx[2])


# --- truncation -----------------------------------------------------------------------------


def test_truncate_drops_from_the_left_of_the_body_only():
    ids = list(range(20))
    assert truncate_teacher_prompt(ids, (3, 15), 20) == ids
    out = truncate_teacher_prompt(ids, (3, 15), 16)
    assert out == [0, 1, 2, *range(7, 20)]
    assert truncate_teacher_prompt(ids, (3, 15), 8) == [0, 1, 2, *range(15, 20)]
    with pytest.raises(ConfigError, match="teacher_max_prompt_tokens"):
        truncate_teacher_prompt(ids, (3, 15), 7)
    with pytest.raises(ValueError, match="body_span"):
        truncate_teacher_prompt(ids, (3, 25), 7)


def test_encode_teacher_prompt_truncates_long_prompts_keeping_instruction_and_header():
    tok = tiny_tokenizer()
    long_prompt = [
        PROMPT[0],
        {"role": "user", "content": "BEGIN " + "lorem ipsum " * 40 + "QUESTION END"},
    ]
    msgs = build_teacher_messages(long_prompt, solution="SOLUTION", feedback="FEEDBACK")
    full_text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    full_ids = tok(full_text, add_special_tokens=False)["input_ids"]
    # Under the limit: exactly the template's own tokenization.
    assert encode_teacher_prompt(tok, msgs, max_tokens=10_000) == full_ids

    limit = len(full_ids) - 100
    ids = encode_teacher_prompt(tok, msgs, max_tokens=limit, enable_thinking=False)
    assert len(ids) == limit
    text = tok.decode(ids)
    assert text.startswith("<|im_start|>system\nYou write Python.<|im_end|>\n<|im_start|>user\n")
    assert text.endswith(f"{TEACHER_INSTRUCTION}<|im_end|>\n<|im_start|>assistant\n")
    assert "BEGIN" not in text  # the left of the body went first
    assert "QUESTION END" in text and "SOLUTION" in text and "FEEDBACK" in text
    # Everything kept is a contiguous suffix of the body.
    assert ids[-300:] == full_ids[-300:]

    with pytest.raises(ConfigError, match="teacher_max_prompt_tokens"):
        encode_teacher_prompt(tok, msgs, max_tokens=30)


def test_encode_teacher_prompt_rejects_messages_without_the_instruction():
    with pytest.raises(ValueError, match="build_teacher_messages"):
        encode_teacher_prompt(tiny_tokenizer(), PROMPT, max_tokens=100)


def test_teacher_contexts_for_group_gives_the_first_turns_context():
    from algorithms import sdpo as _sdpo
    from rlrf import Feedback, FeedbackKind, Group, Trajectory, Turn

    prompt = ({"role": "user", "content": "Q"},)
    first = Turn("a", 0.0, (Feedback(FeedbackKind.WRONG_ANSWER, "feedback on turn one"),))
    second = Turn("b", 0.0, (Feedback(FeedbackKind.WRONG_ANSWER, "feedback on turn two"),))
    group = Group("e", "t", [Trajectory("e", "t", prompt, [first, second])])
    [ctx] = _sdpo.teacher_contexts_for_group(group, _sdpo.SDPOConfig())
    text = ctx[-1]["content"]
    assert "feedback on turn one" in text and "feedback on turn two" not in text


# --- the feedback header says whether the attempt succeeded (issue 18 item 4) ----------


def test_feedback_on_a_successful_attempt_is_not_called_unsuccessful():
    g = group_of(("print(a+b)", 1.0, "passed 3 tests in 0.2 s"), ("x", 0.0, "expected 3"))
    ok, failed = teacher_contexts_for_group(g)
    assert f"{SUCCESS_FEEDBACK_HEADER}\n\npassed 3 tests" in user_text(ok)
    assert FEEDBACK_HEADER not in user_text(ok)
    assert f"{FEEDBACK_HEADER}\n\nexpected 3" in user_text(failed)
    assert SUCCESS_FEEDBACK_HEADER not in user_text(failed)
    # the threshold that makes a sibling a "correct solution" makes the attempt successful
    partial = group_of(("p", 0.6, "2 of 3 tests"), ("q", 0.0, ""))
    [ctx, _] = teacher_contexts_for_group(partial, SDPOConfig(success_threshold=0.5))
    assert SUCCESS_FEEDBACK_HEADER in user_text(ctx)
    [ctx, _] = teacher_contexts_for_group(partial)  # threshold 1.0: 0.6 is unsuccessful
    assert FEEDBACK_HEADER in user_text(ctx)


def test_only_the_last_turn_of_a_successful_episode_gets_the_success_header():
    from algorithms.sdpo import turn_teacher_contexts

    obs = ({"role": "user", "content": "Try again."},)
    first = Turn("a", 0.0, (Feedback(FeedbackKind.WRONG_ANSWER, "too low"),), observation=obs)
    last = Turn("b", 1.0, (Feedback(FeedbackKind.OTHER, "solved in 2 tries"),))
    traj = Trajectory("e", "t", tuple(PROMPT), [first, last], success=True)
    [[c0, c1]] = turn_teacher_contexts(Group("e", "t", [traj]))
    assert f"{FEEDBACK_HEADER}\n\ntoo low" in user_text(c0)
    assert f"{SUCCESS_FEEDBACK_HEADER}\n\nsolved in 2 tries" in user_text(c1)


# --- which successful sibling is the demonstration (issue 18 item 3) -------------------


def test_demonstration_first_shortest_random():
    responses = ["own", "a much longer solution", "short", "mid-length one"]
    rewards = [0.0, 1.0, 1.0, 1.0]
    assert select_solution(responses, rewards, 0) == "a much longer solution"
    assert select_solution(responses, rewards, 0, choice="shortest") == "short"
    assert select_solution(["x", "ab", "cd"], [0, 1, 1], 0, choice="shortest") == "ab"  # tie
    import random

    draws = {
        select_solution(responses, rewards, 0, choice="random", rng=random.Random(s))
        for s in range(40)
    }
    assert draws == set(responses[1:])  # every candidate, never the rollout's own
    again = [
        select_solution(responses, rewards, 0, choice="random", rng=random.Random(7))
        for _ in range(3)
    ]
    assert len(set(again)) == 1  # seeded: reproducible
    with pytest.raises(ValueError, match="choice"):
        select_solution(responses, rewards, 0, choice="longest")


def test_demonstration_random_in_groups_is_seeded_by_the_rollout():
    def group(seed, version):
        trajs = [
            Trajectory("toy", "t0", tuple(PROMPT), [Turn(r, w, ())], seed=seed,
                       policy_version=version)
            for r, w in [("fail", 0.0), ("s1", 1.0), ("s2", 1.0), ("s3", 1.0), ("s4", 1.0)]
        ]  # fmt: skip
        return Group("toy", "t0", trajs)

    def pick(seed, version):
        [ctx, *_] = teacher_contexts_for_group(
            group(seed, version), SDPOConfig(demonstration="random")
        )
        return next(s for s in ("s1", "s2", "s3", "s4") if s in user_text(ctx))

    assert pick(3, 1) == pick(3, 1)  # the same rollout draws the same sibling (resumable)
    assert len({pick(seed, v) for seed in range(6) for v in range(3)}) > 1  # not always one
    first = teacher_contexts_for_group(group(3, 1))[0]
    assert "s1" in user_text(first)  # the default stays "first"
    with pytest.raises(ConfigError, match="demonstration"):
        SDPOConfig(demonstration="longest")
