import random

import pytest

import rlrf
from rlrf import (
    CapFeedback,
    DropFeedback,
    Feedback,
    FeedbackKind,
    Outcome,
    RedactFeedback,
    check_env,
)
from rlrf.checker import check_gold_not_leaked, check_reset_determinism, check_responses_handled
from rlrf.errors import EnvCheckError
from tests.toy_envs import CountdownEnv, EchoEnv


def test_good_envs_pass():
    check_env(EchoEnv())
    check_env(CountdownEnv())
    check_env(rlrf.make("rlrf/Arithmetic-v0"))


class RandomPrompt(EchoEnv):
    def prompt(self, task_id):
        return [{"role": "user", "content": f"{task_id} {random.random()}"}]


class Crashes(EchoEnv):
    def evaluate(self, task_id, response, history=()):
        response.encode("utf-8")  # raises on the lone surrogate check_env sends
        return Outcome(0.0)


class Leaky(EchoEnv):
    def prompt(self, task_id):
        return [{"role": "user", "content": f"Say {task_id}."}]


class Verbose(EchoEnv):
    def evaluate(self, task_id, response, history=()):
        return Outcome(0.0, Feedback(FeedbackKind.OTHER, "x" * 5000))


class NaNReward(EchoEnv):
    def evaluate(self, task_id, response, history=()):
        return Outcome(float("nan"))


class StringIds(EchoEnv):
    def task_ids(self, split="train"):
        return [1, 2]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            RandomPrompt(),
            "EchoEnv: reset(seed=123) twice gave different tasks or prompts; prompt(task_id) must be deterministic",
        ),
        (
            Crashes(),
            "Crashes: evaluate raised UnicodeEncodeError: 'utf-8' codec can't encode character '\\udce9'",
        ),
        (Leaky(), "EchoEnv: the gold answer of task 't0' appears in its prompt"),
        (
            Verbose(),
            "EchoEnv: evaluate on response '' returned other feedback of 5000 characters, over the env's feedback_max_chars=2000",
        ),
        (
            NaNReward(),
            "NaNReward: evaluate on response '' returned reward nan; rewards must be finite (use None for a missing reward)",
        ),
        (StringIds(), "EchoEnv: task_ids('train') must return strings; got ['int']"),
    ],
)
def test_broken_envs_get_a_clear_message(env, message):
    with pytest.raises(EnvCheckError) as info:
        check_env(env)
    assert str(info.value).startswith(message.replace("EchoEnv", type(env).__name__))


def test_crash_message_suggests_the_fix():
    with pytest.raises(
        EnvCheckError, match="return an Outcome with reward 0.0 and FORMAT feedback instead"
    ):
        check_responses_handled(Crashes())


def test_individual_checks_and_skip():
    check_reset_determinism(EchoEnv())
    with pytest.raises(EnvCheckError):
        check_gold_not_leaked(Leaky())
    check_env(Leaky(), skip=("check_gold_not_leaked",))


def test_wrappers_pass_check_env_and_transform_feedback():
    base = rlrf.make("rlrf/Arithmetic-v0")
    for env in (DropFeedback(base), CapFeedback(base, 30), RedactFeedback(base, [r"\d+"])):
        check_env(env)
    env = CapFeedback(Verbose(), 100)
    check_env(env)
    assert len(env.evaluate("t0", "x").feedback_items[0].text) <= 100
    red = RedactFeedback(base, [r"too (high|low)"], "off")
    red.reset(options={"task_id": "train-00000"})
    text = red.step_result("<answer>100000</answer>").feedback[0].text
    assert "too high" not in text and " off " in text
    dropped = DropFeedback(base).evaluate_many("train-00000", ["1", "2"])
    assert [o.feedback_items for o in dropped] == [(), ()]
