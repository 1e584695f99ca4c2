"""The one rollout loop: task protocol fast path and stepped envs give one trajectory format."""

import random
import threading
import time
from typing import ClassVar

import pytest

import rlrf
from rlrf import Outcome, Sample, SamplingParams
from rlrf.rollout import (
    RolloutErrorWarning,
    SeedSampler,
    collect_groups,
    eval_tasks,
    task_sampler,
    turn_prompts,
)
from tests.toy_envs import CountdownEnv, EchoEnv, GuessEnv


class ScriptedBackend:
    """A deterministic sampling backend: each sample is drawn from ``pool`` by a seeded RNG
    keyed on (sampling seed, chat, index), and every call is recorded."""

    def __init__(self, pool):
        self.pool = pool
        self.calls = []

    def sample(self, prompts, n, params):
        self.calls.append((len(prompts), n))
        return [
            [
                Sample(
                    text=random.Random(f"{params.seed}:{p}:{j}").choice(self.pool),
                    token_ids=[5, 6, 7],
                    logprobs=[-0.5, -0.25, -1.0],
                    finish_reason="stop",
                )
                for j in range(n)
            ]
            for p in prompts
        ]


class Stepped(rlrf.Wrapper):
    """A wrapper that overrides step (doing nothing else): forces the stepping path."""

    def step(self, action):
        return self.env.step(action)


def _records(groups):
    return [g.to_dict() for g in groups]


@pytest.mark.parametrize(
    ("make_env", "pool"),
    [
        (EchoEnv, ["t0", "t1", "x"]),
        (CountdownEnv, ["go", "wait", "later"]),
        (
            lambda: rlrf.make("rlrf/Arithmetic-v0"),
            ["<answer>3</answer>", "12", "no idea", "<answer>-4</answer>"],
        ),
    ],
)
def test_task_protocol_and_stepping_give_identical_trajectories(make_env, pool):
    env = make_env()
    tasks = list(env.task_ids("train"))[:3]
    params = SamplingParams(seed=11)
    fast, fast_stats = collect_groups(env, ScriptedBackend(pool), tasks, 4, params)
    stepped, step_stats = collect_groups(
        Stepped(make_env()), ScriptedBackend(pool), tasks, 4, params
    )
    assert _records(fast) == _records(stepped)
    assert (fast_stats.turns, fast_stats.generations) == (step_stats.turns, step_stats.generations)
    assert fast_stats.episodes_truncated == step_stats.episodes_truncated


def test_countdown_multi_turn_counts_every_generation():
    backend = ScriptedBackend(["wait", "go"])
    groups, stats = collect_groups(CountdownEnv(), backend, ["only"], 6, SamplingParams(seed=0))
    turns = [len(t.turns) for t in groups[0].trajectories]
    assert max(turns) > 1  # some episodes went on
    assert stats.generations == stats.turns == sum(turns) > stats.rollouts == 6
    cut = sum(
        n == 3 and t.turns[-1].response != "go"
        for n, t in zip(turns, groups[0].trajectories, strict=True)
    )
    assert stats.episodes_truncated == cut


class CountingGuess(GuessEnv):
    """GuessEnv that records every instance, its resets, steps and closing."""

    made: ClassVar[list] = []

    def __init__(self):
        super().__init__()
        self.steps = 0
        self.closed = False
        CountingGuess.made.append(self)

    def step(self, action):
        self.steps += 1
        return super().step(action)

    def close(self):
        self.closed = True
        super().close()


def test_stateful_env_one_instance_per_rollout_one_sample_call_per_turn():
    CountingGuess.made = []
    template = CountingGuess()
    backend = ScriptedBackend(["42", "55", "70", "hmm"])
    groups, stats = collect_groups(
        template, backend, [1, 2], 3, SamplingParams(seed=3), env_workers=4
    )
    made = CountingGuess.made[1:]
    assert len(made) == 6 and template.steps == 0  # one twin per rollout, the template unused
    assert all(e.closed for e in made)
    # same seed, same task: each group's three rollouts play one secret
    for g, seed in zip(groups, [1, 2], strict=True):
        secret = GuessEnv().reset(seed=seed)[1]["task_id"]
        assert g.task_id == secret and {t.task_id for t in g.trajectories} == {secret}
        assert all(t.seed == seed for t in g.trajectories)
    # turn 1: 3 samples of each group's prompt; later turns: one sample per running rollout
    assert backend.calls[0] == (2, 3)
    assert all(n == 1 for _, n in backend.calls[1:]) and len(backend.calls) <= 3
    assert stats.generations == sum(len(t.turns) for g in groups for t in g.trajectories)
    assert sum(e.steps for e in made) == stats.generations
    for g in groups:
        for t in g.trajectories:
            # the chats the policy saw are recoverable from the trajectory alone
            chats = turn_prompts(t)
            for k in range(1, len(t.turns)):
                assert chats[k][-1]["content"] == t.turns[k - 1].feedback[0].text
            assert t.reward == (1.0 if t.success else 0.0)


class NeverEnds(GuessEnv):
    max_turns = 50

    def step(self, action):
        obs, _, _, _, info = super().step(action)
        return obs, 0.0, False, False, info


def test_an_env_that_never_ends_is_cut_at_max_turns():
    groups, stats = collect_groups(
        NeverEnds(), ScriptedBackend(["1"]), [0], 2, SamplingParams(seed=0), max_turns=4
    )
    assert [len(t.turns) for t in groups[0].trajectories] == [4, 4]
    assert stats.episodes_truncated == 2 and stats.generations == 8


class FlakyGuess(GuessEnv):
    """Raises in step on the second turn of episodes whose first guess was 20."""

    def step(self, action):
        if self.turn == 1 and self.chat[1]["content"] == "20":
            raise ConnectionError("game server went away")
        return super().step(action)


def test_an_env_that_raises_ends_only_that_rollout():
    backend = ScriptedBackend(["20", "30", "13"])
    with pytest.warns(RolloutErrorWarning, match=r"rollouts of FlakyGuess ended because"):
        groups, stats = collect_groups(FlakyGuess(), backend, [0, 1, 2], 4, SamplingParams(seed=2))
    trajs = [t for g in groups for t in g.trajectories]
    failed = [t for t in trajs if t.error is not None]
    assert failed and len(failed) < len(trajs)
    for t in failed:
        assert (t.error.method, t.error.turn, t.error.error_type) == ("step", 2, "ConnectionError")
        assert t.error.message == "game server went away"
        assert t.reward is None and t.turns[0].response == "20" and t.turns[-1].reward is None
    assert stats.env_errors == len(failed) and stats.missing_rewards == len(failed)
    restored = rlrf.Trajectory.from_dict(failed[0].to_dict())
    assert restored == failed[0]
    assert "error" not in trajs[trajs.index(next(t for t in trajs if t.error is None))].to_dict()


class FlakyGrader(EchoEnv):
    """A grader whose sandbox fails on "crash" and whose judge is down on "down"."""

    def evaluate(self, task_id, response, history=()):
        if response == "crash":
            return Outcome(None, info={"sandbox_error": "worker died"})
        if response == "down":
            return Outcome(None)
        return super().evaluate(task_id, response, history)


@pytest.mark.parametrize("wrap", [lambda env: env, Stepped], ids=["task", "stepped"])
def test_sandbox_errors_are_counted_apart_from_other_missing_rewards(wrap):
    groups, stats = collect_groups(
        wrap(FlakyGrader()), ScriptedBackend(["crash", "down", "t0", "x"]), ["t0", "t1"], 8,
        SamplingParams(seed=3),
    )  # fmt: skip
    responses = [t.turns[0].response for g in groups for t in g.trajectories]
    crashed, down = responses.count("crash"), responses.count("down")
    assert crashed and down
    assert stats.sandbox_errors == crashed and stats.missing_rewards == crashed + down
    assert stats.env_errors == 0


class EmptyFinalObservation(GuessEnv):
    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        return ([] if terminated or truncated else obs), reward, terminated, truncated, info


def test_an_empty_final_observation_keeps_the_rollout():
    groups, stats = collect_groups(
        EmptyFinalObservation(), ScriptedBackend(["1", "50"]), [0, 1], 3, SamplingParams(seed=0)
    )
    trajs = [t for g in groups for t in g.trajectories]
    assert stats.env_errors == 0 and stats.missing_rewards == 0
    assert all(t.error is None and t.reward is not None for t in trajs)
    assert all(len(t.turns) == 3 and t.turns[-1].observation == () for t in trajs)


class SeedIgnoringGuess(GuessEnv):
    """Picks the secret from global random state: the seed does not pick the task."""

    def reset(self, *, seed=None, options=None):
        chat, _ = super().reset(seed=seed, options=options)
        self.secret = random.Random().randint(10, 10**6)
        return chat, {"task_id": f"secret-{self.secret}"}


class PromptDrift(GuessEnv):
    """Same task id for a seed, but a prompt counting instances across the process."""

    made = 0

    def reset(self, *, seed=None, options=None):
        chat, info = super().reset(seed=seed, options=options)
        PromptDrift.made += 1
        chat[0] = {"role": "user", "content": f"Game {PromptDrift.made}: guess my number."}
        return chat, info


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        (
            SeedIgnoringGuess(),
            r"SeedIgnoringGuess.reset\(seed=3\) gave the rollouts of one "
            r"group tasks 'secret-\d+' and 'secret-\d+'",
        ),
        (
            PromptDrift(),
            r"PromptDrift.reset\(seed=3\) gave the rollouts of one group task "
            r"'secret-\d+' with different prompts",
        ),
    ],
)
def test_a_group_whose_rollouts_got_different_tasks_stops_the_run(env, needle):
    with pytest.raises(rlrf.errors.GroupMismatchError, match=needle) as info:
        collect_groups(env, ScriptedBackend(["1"]), [3], 4, SamplingParams(seed=0))
    assert "draw from self.np_random after super().reset(seed=seed)" in str(info.value)


class BrokenContract(GuessEnv):
    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        return obs, float("nan"), terminated, truncated, info


def test_a_broken_contract_is_recorded_with_env_method_and_turn():
    with pytest.warns(RolloutErrorWarning):
        groups, stats = collect_groups(
            BrokenContract(), ScriptedBackend(["1"]), [0], 2, SamplingParams(seed=0)
        )
    error = groups[0].trajectories[0].error
    assert (error.method, error.turn, error.error_type) == ("step", 1, "EnvError")
    assert error.message.startswith("BrokenContract.step (turn 1) returned reward nan")


class ExplodingGrader(EchoEnv):
    def evaluate_many(self, task_id, responses):
        if task_id == "t1":
            raise RuntimeError("grader crashed")
        return super().evaluate_many(task_id, responses)


def test_task_protocol_errors_are_recorded_per_group():
    with pytest.warns(RolloutErrorWarning):
        groups, stats = collect_groups(
            ExplodingGrader(), ScriptedBackend(["t0", "x"]), ["t0", "t1"], 2, SamplingParams()
        )
    ok, bad = groups
    assert all(t.error is None and t.reward is not None for t in ok.trajectories)
    assert all(t.error.method == "evaluate_many" and t.reward is None for t in bad.trajectories)
    assert stats.env_errors == 2 and stats.generations == 4


class BrokenPrompt(EchoEnv):
    def prompt(self, task_id):
        if task_id == "t0":
            return "not a chat"
        return super().prompt(task_id)


def test_a_prompt_that_breaks_ends_only_its_group():
    backend = ScriptedBackend(["t1"])
    with pytest.warns(RolloutErrorWarning):
        groups, stats = collect_groups(BrokenPrompt(), backend, ["t0", "t1"], 3, SamplingParams())
    bad, ok = groups
    assert backend.calls == [(1, 3)]  # only the good prompt was sampled
    assert all(t.reward == 1.0 for t in ok.trajectories)
    for t in bad.trajectories:
        assert t.turns == [] and t.reward is None
        assert (t.error.method, t.error.turn) == ("prompt", 0)
        assert t.error.message.startswith("BrokenPrompt.prompt('t0') returned an observation")
    assert stats.generations == 3 and stats.env_errors == 3


class SlowGuess(GuessEnv):
    """Records how many instances are inside step at once."""

    lock = threading.Lock()
    inside = 0
    peak = 0

    def step(self, action):
        cls = type(self)
        with cls.lock:
            cls.inside += 1
            cls.peak = max(cls.peak, cls.inside)
        time.sleep(0.02)
        with cls.lock:
            cls.inside -= 1
        return super().step(action)


class UnsafeGuess(SlowGuess):
    thread_safe = False
    lock = threading.Lock()
    inside = 0
    peak = 0


def test_rollouts_are_stepped_concurrently_unless_the_env_is_not_thread_safe():
    backend = ScriptedBackend(["50"])
    collect_groups(SlowGuess(), backend, [0, 1], 4, SamplingParams(seed=0), env_workers=8)
    assert SlowGuess.peak > 1
    collect_groups(UnsafeGuess(), backend, [0, 1], 4, SamplingParams(seed=0), env_workers=8)
    assert UnsafeGuess.peak == 1


def test_seed_tasks_of_a_task_style_env_resolve_to_task_ids():
    env = EchoEnv()
    groups, _ = collect_groups(env, ScriptedBackend(["t0"]), [7, "t2"], 2, SamplingParams())
    assert groups[0].task_id == env.reset(seed=7)[1]["task_id"] and groups[1].task_id == "t2"


def test_samplers_and_eval_tasks_for_both_styles():
    assert task_sampler(EchoEnv(), seed=0).next(3)[0].startswith("t")
    seeds = task_sampler(GuessEnv(), seed=4)
    assert isinstance(seeds, SeedSampler)
    first = seeds.next(3)
    state = seeds.state_dict()
    later = seeds.next(2)
    resumed = SeedSampler()
    resumed.load_state_dict(state)
    assert resumed.next(2) == later and len(set(first + later)) == 5
    assert eval_tasks(EchoEnv(n_test=2), 5) == ["h0", "h1"]
    assert eval_tasks(GuessEnv(), 2) == [1_000_000_007, 1_000_000_008]


class SplitGuess(GuessEnv):
    def reset(self, *, seed=None, options=None):
        chat, info = super().reset(seed=seed)
        return chat, {**info, "task_id": f"{(options or {}).get('split')}-{self.secret}"}


def test_split_reaches_a_gymnasium_style_reset():
    groups, _ = collect_groups(
        SplitGuess(), ScriptedBackend(["1"]), [0], 1, SamplingParams(), split="test"
    )
    assert groups[0].task_id.startswith("test-")


@pytest.mark.slow
def test_a_tiny_model_plays_a_stateful_env_with_token_ids_and_logprobs():
    from algorithms.sampling.hf import HFPolicy
    from algorithms.testing import tiny_model, tiny_tokenizer

    policy = HFPolicy(tiny_model(), tiny_tokenizer())
    params = SamplingParams(max_new_tokens=6, seed=0)
    groups, stats = collect_groups(GuessEnv(), policy, [0, 1], 2, params, env_workers=2)
    assert stats.generations == stats.turns >= 4
    for g in groups:
        for t in g.trajectories:
            assert t.error is None and t.reward is not None
            for turn, chat in zip(t.turns, turn_prompts(t), strict=True):
                assert turn.response_token_ids and len(turn.logprobs) == len(
                    turn.response_token_ids
                )
                assert chat[0] == t.prompt[0]
