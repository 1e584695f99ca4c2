import math

import gymnasium
import pytest

from rlrf import ChatSpace, Feedback, FeedbackKind, Outcome, StepResult
from rlrf.errors import EnvError
from tests.toy_envs import CountdownEnv, EchoEnv


def test_same_seed_same_task(echo_env):
    a = echo_env.reset(seed=7)
    b = echo_env.reset(seed=7)
    assert a == b
    tasks = {echo_env.reset(seed=s)[1]["task_id"] for s in range(30)}
    assert len(tasks) > 1  # the seed actually varies the task


def test_task_id_option_and_split(echo_env):
    obs, info = echo_env.reset(options={"task_id": "t3"})
    assert info["task_id"] == "t3" and obs[-1]["content"] == "Repeat the word 3t reversed."
    _, info = echo_env.reset(seed=1, options={"split": "test"})
    assert info["task_id"] in {"h0", "h1"} and info["split"] == "test"


def test_unknown_split_and_option(echo_env):
    with pytest.raises(EnvError, match="unknown split 'dev'"):
        echo_env.reset(options={"split": "dev"})
    with pytest.raises(EnvError, match=r"unknown option\(s\) \['tsak_id'\]"):
        echo_env.reset(options={"tsak_id": "t1"})


def test_step_returns_typed_feedback(echo_env):
    echo_env.reset(options={"task_id": "t1"})
    obs, reward, terminated, truncated, info = echo_env.step("nope")
    assert (reward, terminated, truncated, info["success"]) == (0.0, True, False, False)
    assert info["feedback"][0].kind is FeedbackKind.WRONG_ANSWER
    assert obs[-1] == {"role": "assistant", "content": "nope"}
    echo_env.reset(options={"task_id": "t1"})
    result = echo_env.step_result("t1")
    assert isinstance(result, StepResult)
    assert result.reward == 1.0 and result.success and result.feedback == () and result.done


def test_step_before_reset_and_wrong_action_type():
    env = EchoEnv()
    with pytest.raises(EnvError, match="call reset"):
        env.step("x")
    env.reset(seed=0)
    with pytest.raises(TypeError, match="decode bytes first"):
        env.step(b"x")


def test_multi_turn_observation_and_truncation():
    env = CountdownEnv()
    env.reset(seed=0)
    r1 = env.step_result("wait")
    assert not r1.done and r1.feedback[0].text == "turn 1: say go"
    assert r1.observation[-1] == {"role": "user", "content": "Still waiting (1)."}
    r2 = env.step_result("wait")
    assert r2.feedback[0].text == "turn 2: say go" and not r2.done
    r3 = env.step_result("wait")
    assert r3.truncated and not r3.terminated
    env.reset(seed=0)
    env.step("wait")
    assert env.step_result("go").terminated


class _Bad(EchoEnv):
    def __init__(self, outcome):
        super().__init__()
        self._outcome = outcome

    def evaluate(self, task_id, response, history=()):
        return self._outcome


@pytest.mark.parametrize(
    ("outcome", "message"),
    [
        ((1.0, None), r"returned tuple; it must return rlrf.Outcome"),
        (Outcome(math.nan), r"returned reward nan; rewards must be finite"),
        (Outcome("1"), r"returned reward of type str"),
        (Outcome(1.0, feedback=["text"]), r"bad feedback: Expected Feedback items, got str"),
    ],
)
def test_contract_violations_name_the_env_and_fix(outcome, message):
    env = _Bad(outcome)
    env.reset(seed=0)
    with pytest.raises(EnvError, match=r"^_Bad\.evaluate \(task '") as info:
        env.step("x")
    assert info.match(message)


def test_missing_reward_is_flagged_not_zeroed_silently():
    env = _Bad(Outcome(None, Feedback(FeedbackKind.OTHER, "judge down")))
    env.reset(seed=0)
    result = env.step_result("x")
    assert result.reward_missing and result.reward == 0.0 and not result.success


def test_spaces():
    space = ChatSpace()
    assert space.contains([{"role": "user", "content": "hi"}])
    assert not space.contains([{"role": "robot", "content": "hi"}])
    assert not space.contains([])
    assert space.contains(space.sample())
    env = EchoEnv()
    assert env.action_space.contains(env.action_space.sample())


def test_evaluate_many_default_matches_evaluate(echo_env):
    outs = echo_env.evaluate_many("t2", ["t2", "x"])
    assert [o.reward for o in outs] == [1.0, 0.0]


def test_is_a_gymnasium_env(echo_env):
    assert isinstance(echo_env, gymnasium.Env)
