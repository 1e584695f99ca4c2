import math
import warnings

import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from gymnasium.wrappers import OrderEnforcing, PassiveEnvChecker, RecordEpisodeStatistics, TimeLimit

import rlrf
from rlrf import ChatSpace, Feedback, FeedbackKind, Outcome, StepResult
from rlrf.env import appended_messages, env_style, validate_step
from rlrf.errors import EnvError
from tests.toy_envs import CountdownEnv, EchoEnv, GuessEnv

_CHAT = [{"role": "user", "content": "q"}]


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


@pytest.mark.parametrize("make", [EchoEnv, GuessEnv], ids=["task-style", "gymnasium-style"])
def test_gymnasium_checker_and_wrappers_accept_it(make):
    # Gymnasium's own checker (spaces, reset/step signatures, seeding determinism), with its
    # warnings as errors, then a stack of Gymnasium's wrappers driving an episode.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gym_check_env(make(), skip_render_check=True)
    env = RecordEpisodeStatistics(
        TimeLimit(OrderEnforcing(PassiveEnvChecker(make())), max_episode_steps=2)
    )
    obs, _ = env.reset(seed=1)
    assert env.observation_space.contains(obs)
    steps, done = 0, False
    while not done:
        obs, reward, terminated, truncated, info = env.step("x")
        steps, done = steps + 1, terminated or truncated
        assert env.observation_space.contains(obs) and math.isfinite(reward)
    assert info["episode"]["l"] == steps <= 2


# ---- Gymnasium-style envs ------------------------------------------------------------------


def test_gymnasium_style_env_keeps_its_own_state_and_seed_picks_the_task():
    env = GuessEnv()
    assert env_style(env) == "gymnasium" and env_style(EchoEnv()) == "task"
    chat, info = env.reset(seed=3)
    again = GuessEnv().reset(seed=3)
    assert (chat, info) == again  # same seed, same task, in another instance
    secret = int(env.gold_answer(info["task_id"]))
    low = env.step_result(str(secret - 1))
    assert low.feedback[0].text == f"Higher than {secret - 1}." and not low.done
    assert low.observation[-2:] == [
        {"role": "assistant", "content": str(secret - 1)},
        {"role": "user", "content": f"Higher than {secret - 1}."},
    ]
    win = env.step_result(str(secret))
    assert win.terminated and win.reward == 1.0 and win.success


def test_super_reset_only_seeds_in_a_gymnasium_style_env():
    env = GuessEnv()
    assert rlrf.RLRFEnv.reset(env, seed=5) is None
    first = env.np_random.integers(1000)
    rlrf.RLRFEnv.reset(env, seed=5)
    assert env.np_random.integers(1000) == first


class _HalfTask(rlrf.RLRFEnv):
    def task_ids(self, split="train"):
        return ["a"]


class _ResetOnly(rlrf.RLRFEnv):
    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return [{"role": "user", "content": "hi"}], {}


@pytest.mark.parametrize(
    ("env", "hint"),
    [
        (_HalfTask(), "it implements task_ids() but not prompt(), evaluate()"),
        (_ResetOnly(), "it overrides reset() but not step()"),
        (rlrf.RLRFEnv(), "it implements neither"),
    ],
)
def test_an_env_in_neither_style_is_told_what_is_missing(env, hint):
    with pytest.raises(EnvError, match=r"or overrides reset\(seed=, options=\) and step") as e:
        env.reset(seed=0)
    assert str(e.value).startswith(type(env).__name__ + ": an RLRFEnv implements")
    assert str(e.value).endswith(hint)


def test_spawn_builds_an_independent_twin_with_the_same_arguments():
    env = rlrf.make("rlrf/Arithmetic-v0", digits=1)
    env.max_turns = 2
    twin = env.spawn()
    assert twin is not env and twin.env_id == "rlrf/Arithmetic-v0" and twin.max_turns == 2
    assert [twin.prompt(t) for t in twin.task_ids()[:3]] == [
        env.prompt(t) for t in env.task_ids()[:3]
    ]
    wrapped = rlrf.CapFeedback(GuessEnv(), 10).spawn()
    assert wrapped.max_chars == 10 and isinstance(wrapped.unwrapped, GuessEnv)
    a, b = GuessEnv(), GuessEnv()
    a.reset(seed=1), b.reset(seed=2)
    a.step("50")
    assert len(b.chat) == 1  # no shared state


@pytest.mark.parametrize(
    ("result", "message"),
    [
        ((_CHAT, 1.0, True, False), r"returned a 4-tuple; step must return \(observation"),
        ((_CHAT, math.inf, True, False, {}), r"returned reward inf; rewards must be finite"),
        ((_CHAT, 1.0, True, False, {"feedback": "no"}), r"returned bad feedback: a plain str"),
        ((_CHAT, 1.0, True, False, {"feedback": [1]}), r"returned bad feedback: Expected Feedback"),
        (("text", 1.0, False, False, {}), r"returned an observation that is not a chat: 'text'"),
        ((_CHAT, 1.0, "yes", False, {}), r"returned terminated='yes'; it must be a bool"),
        ((_CHAT, 1.0, True, False, None), r"returned info of type NoneType"),
    ],
)
def test_validate_step_names_where_and_what(result, message):
    with pytest.raises(EnvError, match=r"^acme/Guess-v0\.step \(turn 2\) " + message):
        validate_step(result, "acme/Guess-v0.step (turn 2)")


def test_validate_step_reads_missing_rewards_and_success():
    missing = validate_step((_CHAT, None, True, False, {}), "x")
    assert missing.reward_missing and missing.reward == 0.0 and not missing.success
    flagged = validate_step((_CHAT, 1.0, True, False, {"reward_missing": True}), "x")
    assert flagged.reward_missing and not flagged.success
    assert validate_step((_CHAT, 1.0, True, False, {}), "x").success  # default: reward >= 1
    assert not validate_step((_CHAT, 1.0, True, False, {"success": False}), "x").success


def test_appended_messages_requires_the_chat_to_continue():
    after = [*_CHAT, {"role": "assistant", "content": "r"}, {"role": "user", "content": "f"}]
    assert appended_messages(_CHAT, "r", after) == ({"role": "user", "content": "f"},)
    assert appended_messages(_CHAT, "other", after) is None
    assert appended_messages(_CHAT, "r", [{"role": "user", "content": "new"}]) is None
