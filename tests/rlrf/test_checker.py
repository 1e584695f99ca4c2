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
from tests.toy_envs import CountdownEnv, EchoEnv, GuessEnv


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


# ---- Gymnasium-style envs and leaks in feedback ------------------------------------------


def test_gymnasium_style_env_passes():
    check_env(GuessEnv())
    check_env(CapFeedback(GuessEnv(), 50))


class EmptyFinalObservation(GuessEnv):
    """Returns ``[]`` (or ``None``) as the observation of the step that ends the episode."""

    def __init__(self, final=()):
        super().__init__()
        self.final = list(final) if final is not None else None

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        if terminated or truncated:
            return self.final, reward, terminated, truncated, info
        return obs, reward, terminated, truncated, info


@pytest.mark.parametrize("final", [(), None])
def test_a_final_observation_may_be_anything(final):
    env = EmptyFinalObservation(final)
    check_env(env)
    env.reset(seed=0)
    env.step("1")
    env.step("2")
    r = rlrf.env.validate_step(env.step("3"), "EmptyFinalObservation.step")
    assert r.truncated and r.observation == []


def test_a_non_final_observation_must_still_be_a_chat():
    env = _Guess("not_chat")
    env.reset(seed=0)
    with pytest.raises(rlrf.errors.EnvError, match="is not a chat"):
        rlrf.env.validate_step(env.step("1"), "_Guess.step")


class AnswerInFeedback(EchoEnv):
    def evaluate(self, task_id, response, history=()):
        if response.strip() == task_id:
            return Outcome(1.0)
        return Outcome(0.0, Feedback(FeedbackKind.WRONG_ANSWER, f"The answer is {task_id}"))


class AnswerAsDemonstration(EchoEnv):
    def evaluate(self, task_id, response, history=()):
        if response.strip() == task_id:
            return Outcome(1.0)
        return Outcome(0.0, Feedback(FeedbackKind.DEMONSTRATION, f"A solution: {task_id}"))


class _Guess(GuessEnv):
    """GuessEnv with one defect, chosen by name."""

    def __init__(self, defect):
        super().__init__()
        self.defect = defect

    def reset(self, *, seed=None, options=None):
        if self.defect == "reset_raises":
            raise KeyError("no such level")
        chat, info = super().reset(seed=seed, options=options)
        if self.defect == "reset_arity":
            return chat
        if self.defect == "reset_random":
            self.secret = int(random.randint(10, 99))
            info = {"task_id": f"secret-{self.secret}"}
        return chat, info

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        d = self.defect
        if d == "raises" and self.turn == 2:
            raise RuntimeError("lost the game state")
        if d == "arity":
            return obs, reward, terminated, info
        if d == "nan":
            reward = float("nan")
        if d == "text_feedback":
            info = {"feedback": "Higher"}
        if d == "not_chat":
            obs = "Higher"
        if d == "forgets_chat":
            obs = obs[-1:]
        if d == "never_ends":
            terminated = truncated = False
        if d == "leaks":
            info = {"feedback": (Feedback(FeedbackKind.WRONG_ANSWER, f"It is {self.secret}."),)}
        return obs, reward, terminated, truncated, info


@pytest.mark.parametrize(
    ("defect", "message"),
    [
        (
            "reset_raises",
            "_Guess: reset(seed=123) raised KeyError: 'no such level'; reset must start an "
            "episode for any seed",
        ),
        (
            "reset_arity",
            "_Guess: reset(seed=123) returned list; reset must return (observation, info)",
        ),
        (
            "reset_random",
            "_Guess: reset(seed=123) twice gave different tasks or prompts; reset must pick the "
            "task from the seed alone",
        ),
        (
            "raises",
            "_Guess: step (turn 2) on response '0' raised RuntimeError: lost the game state",
        ),
        (
            "arity",
            "_Guess: step (turn 1) on response '' returned a 4-tuple; step must return "
            "(observation, reward, terminated, truncated, info) (the old Gym API's done flag",
        ),
        ("nan", "_Guess: step (turn 1) on response '' returned reward nan; rewards must be finite"),
        (
            "text_feedback",
            "_Guess: step (turn 1) on response '' returned bad feedback: a plain str; wrap the "
            "text as rlrf.Feedback(FeedbackKind.OTHER, text)",
        ),
        (
            "not_chat",
            "_Guess: step (turn 1) on response '' returned an observation that is not a chat: "
            "'Higher'",
        ),
        (
            "forgets_chat",
            "_Guess: step (turn 1) returned an observation that does not continue the chat",
        ),
        (
            "never_ends",
            "_Guess: the episode did not end within max_turns=3: step (turn 3) must return "
            "terminated or truncated",
        ),
        (
            "leaks",
            "_Guess: the gold answer of task 'secret-86' appears in the wrong_answer feedback "
            "on the wrong response 'I do not know.'",
        ),
    ],
)
def test_broken_gymnasium_style_envs_get_a_clear_message(defect, message):
    with pytest.raises(EnvCheckError) as info:
        check_env(_Guess(defect))
    assert str(info.value).startswith(message)


def test_gold_answer_in_feedback_is_a_leak_unless_a_demonstration():
    env = AnswerInFeedback()
    with pytest.raises(EnvCheckError, match=r"appears in the wrong_answer feedback"):
        check_gold_not_leaked(env)
    check_gold_not_leaked(AnswerAsDemonstration())


def test_neither_style_is_named_by_check_env():
    with pytest.raises(EnvCheckError, match=r"^RLRFEnv: an RLRFEnv implements .* neither$"):
        check_env(rlrf.RLRFEnv())
