"""ReasoningGymEnv: seeded splits, score_answer rewards, optional expected-answer feedback."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reasoning_gym.utils import extract_answer

import rlrf
from envs._text import last_tagged
from envs.reasoning import ReasoningGymEnv
from rlrf import FeedbackKind


@pytest.fixture(scope="module")
def env() -> ReasoningGymEnv:
    return ReasoningGymEnv("chain_sum", n_train=50, n_test=20, seed=3)


def test_passes_check_env(env):
    rlrf.check_env(env)


@pytest.mark.parametrize("name", ["basic_arithmetic", "leg_counting", "family_relationships"])
def test_other_datasets_pass_check_env(name):
    rlrf.check_env(ReasoningGymEnv(name, n_train=20, n_test=5))


def test_gold_answer_scores_one_and_wrong_answer_zero(env):
    for task_id in env.task_ids("train")[:10]:
        gold = env.gold_answer(task_id)
        assert env.evaluate(task_id, f"So: <answer>{gold}</answer>").reward == 1.0
        wrong = env.evaluate(task_id, "<answer>not a number</answer>")
        assert wrong.reward == 0.0 and wrong.feedback_items == ()  # no give-away by default


def test_splits_differ_and_are_reproducible(env):
    train = [env.prompt(t)[0]["content"] for t in env.task_ids("train")]
    test = [env.prompt(t)[0]["content"] for t in env.task_ids("test")]
    assert len(set(train) & set(test)) < 3  # different seeds: (almost) disjoint
    again = ReasoningGymEnv("chain_sum", n_train=50, n_test=20, seed=3)
    assert [again.prompt(t)[0]["content"] for t in again.task_ids("train")] == train


def test_missing_answer_tag_is_format_feedback(env):
    (fb,) = env.evaluate("train-00000", "the answer is 5").feedback_items
    assert fb.kind is FeedbackKind.FORMAT and "<answer>" in fb.text


def test_expected_answer_feedback_is_opt_in():
    env = ReasoningGymEnv("chain_sum", n_train=5, n_test=1, expected_answer_feedback=True)
    gold = env.gold_answer("train-00001")
    (fb,) = env.evaluate("train-00001", "<answer>zzz</answer>").feedback_items
    assert fb.kind is FeedbackKind.WRONG_ANSWER and repr(gold) in fb.text


def test_config_reaches_the_dataset():
    env = ReasoningGymEnv(
        "chain_sum", {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}
    )
    for task_id in env.task_ids("train")[:20]:
        assert len(env.entry(task_id)["metadata"]["expression"].split()) == 3


def test_bad_names_and_configs_are_clear_errors():
    with pytest.raises(rlrf.ConfigError, match="Did you mean: chain_sum"):
        ReasoningGymEnv("chain_sums")
    with pytest.raises(rlrf.ConfigError, match="rejected the config"):
        ReasoningGymEnv("chain_sum", {"min_terms": 5, "max_terms": 2})


def test_registered_id_makes_the_env():
    env = rlrf.make("rlrf/ReasoningGym-v0", dataset="leg_counting", n_train=10, n_test=2)
    assert env.dataset_name == "leg_counting" and env.env_id == "rlrf/ReasoningGym-v0"


# ---- hostile responses (issue 16) ---------------------------------------------------------


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(st.sampled_from(["<answer>", "</answer>", "<", ">", "/", " ", "\n", "7"])))
def test_answer_extraction_agrees_with_reasoning_gym(parts):
    text = "".join(parts)
    assert last_tagged(text, "answer") == extract_answer(text, tag_name="answer")


def test_unclosed_answer_tags_are_linear(env):
    start = time.perf_counter()
    outcome = env.evaluate(env.task_ids()[0], "<answer>" * 20_000)  # ~100 s before
    assert outcome.feedback_items[0].kind is FeedbackKind.FORMAT
    assert time.perf_counter() - start < 5.0  # slack for 2 shared cores


@pytest.mark.parametrize("task_id", ["train-²", "train-" + "9" * 5000, "train--1", "nope-1"])
def test_malformed_task_ids_are_key_errors(env, task_id):
    with pytest.raises(KeyError, match="ids look like 'train-00000'"):
        env.entry(task_id)  # ValueError from int() before, for the first two
