"""Rollout collection: G samples per task from a sampling backend, graded by the env.

:func:`collect_groups` takes task ids of an :class:`rlrf.RLRFEnv`, samples G responses per
task in one batched call, grades each task's responses with ``env.evaluate_many`` (the
env's hook for concurrent grading; groups of different tasks are graded concurrently when
``env_workers > 1``), and returns one :class:`rlrf.Group` per task in the common trajectory format
with the sampler's token ids and log-probs in each :class:`rlrf.Turn`.

Multi-turn envs (``max_turns > 1``) are stepped turn by turn: after a response whose outcome
says ``done=False``, the response and the env's observation messages are appended to the
chat and the next response is sampled (all still-running rollouts at once), until ``done``
or ``max_turns``. A missing reward (``Outcome.reward is None``) ends the episode and is
counted in :attr:`RolloutStats.missing_rewards`; trainers skip such rollouts.

Which task ids to sample is the trainer's business (:class:`TaskSampler` is a seeded,
resumable epoch-wise shuffler).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

from rlrf.env import Message, Outcome, RLRFEnv
from rlrf.errors import EnvError
from rlrf.sampling import Sample, SamplingBackend, SamplingParams
from rlrf.trajectory import Group, Trajectory, Turn

__all__ = ["RolloutStats", "TaskSampler", "collect_groups", "grade_responses", "turn_prompts"]


@dataclass
class RolloutStats:
    """Counts and timings of one :func:`collect_groups` call.

    Attributes:
        rollouts: Number of trajectories.
        missing_rewards: Trajectories whose reward is None (skipped by trainers).
        generation_s: Seconds spent sampling.
        env_s: Seconds spent in the env's grading.
        response_tokens: Total sampled tokens (all turns).
        truncated: Turns that hit ``max_new_tokens`` without EOS.
        turns: Total turns.

    """

    rollouts: int = 0
    missing_rewards: int = 0
    generation_s: float = 0.0
    env_s: float = 0.0
    response_tokens: int = 0
    truncated: int = 0
    turns: int = 0


class TaskSampler:
    """Draw task ids epoch by epoch in a seeded shuffled order; its position can be saved.

    Args:
        task_ids: The split's task ids.
        seed: Seed of the shuffles (epoch ``e`` uses ``seed + e``).

    """

    def __init__(self, task_ids: Sequence[str], seed: int = 0) -> None:
        if len(task_ids) == 0:
            raise EnvError("the env's train split has no tasks; nothing to train on")
        self.task_ids = list(task_ids)
        self.seed = seed
        self.epoch = 0
        self.cursor = 0
        self._order = self._shuffled(0)

    def _shuffled(self, epoch: int) -> list[str]:
        order = list(self.task_ids)
        random.Random(self.seed + epoch).shuffle(order)
        return order

    def next(self, n: int) -> list[str]:
        """Return the next ``n`` task ids, reshuffling at each epoch boundary."""
        out: list[str] = []
        while len(out) < n:
            if self.cursor >= len(self._order):
                self.epoch += 1
                self.cursor = 0
                self._order = self._shuffled(self.epoch)
            take = min(n - len(out), len(self._order) - self.cursor)
            out.extend(self._order[self.cursor : self.cursor + take])
            self.cursor += take
        return out

    def state_dict(self) -> dict[str, int]:
        """Return the position (epoch, cursor) for a checkpoint."""
        return {"epoch": self.epoch, "cursor": self.cursor, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore a position from :meth:`state_dict`."""
        self.seed, self.epoch, self.cursor = state["seed"], state["epoch"], state["cursor"]
        self._order = self._shuffled(self.epoch)


def turn_prompts(trajectory: Trajectory) -> list[list[Message]]:
    """Return the chat each turn of a trajectory was sampled from.

    Turn ``k``'s chat is the prompt, then for every earlier turn its response (as an
    assistant message) and the observation messages the env appended after it.
    """
    chat: list[Message] = [dict(m) for m in trajectory.prompt]  # type: ignore[misc]
    chats = []
    for turn in trajectory.turns:
        chats.append(list(chat))
        chat.append({"role": "assistant", "content": turn.response})
        chat.extend(dict(m) for m in turn.observation)  # type: ignore[misc]
    return chats


def _turn(sample: Sample, outcome: Outcome) -> Turn:
    return Turn(
        response=sample.text,
        reward=None if outcome.reward is None else float(outcome.reward),
        feedback=outcome.feedback_items,
        response_token_ids=None if sample.token_ids is None else tuple(sample.token_ids),
        logprobs=None if sample.logprobs is None else tuple(sample.logprobs),
        observation=tuple(outcome.observation),
        info={"finish_reason": sample.finish_reason, **outcome.info},
    )


def grade_responses(env: RLRFEnv, task_id: str, responses: list[str]) -> list[Outcome]:
    """``env.evaluate_many``, checked: one :class:`Outcome` per response, else an EnvError."""
    outcomes = env.evaluate_many(task_id, responses)
    if len(outcomes) != len(responses):
        raise EnvError(
            f"{type(env).__name__}.evaluate_many returned {len(outcomes)} outcomes for "
            f"{len(responses)} responses to task {task_id!r}"
        )
    for o in outcomes:
        if not isinstance(o, Outcome):
            raise EnvError(
                f"{type(env).__name__}.evaluate_many must return Outcome objects, got "
                f"{type(o).__name__}"
            )
    return outcomes


def collect_groups(
    env: RLRFEnv,
    backend: SamplingBackend,
    task_ids: Sequence[str],
    group_size: int,
    params: SamplingParams,
    *,
    env_id: str | None = None,
    policy_version: int = 0,
    env_workers: int = 1,
) -> tuple[list[Group], RolloutStats]:
    """Sample ``group_size`` rollouts for each task and grade them.

    Args:
        env: The environment (its ``prompt``/``evaluate_many``/``evaluate`` are used).
        backend: Any :class:`rlrf.sampling.SamplingBackend`.
        task_ids: Tasks to roll out (one group each, in this order).
        group_size: G, rollouts per task.
        params: Sampling parameters (with ``seed`` for reproducible rollouts).
        env_id: Recorded in the trajectories (defaults to the env's id).
        policy_version: Recorded in the trajectories (the optimizer step).
        env_workers: Groups graded concurrently (keep 1 for envs that are not thread-safe).

    Returns:
        ``(groups, stats)``.

    """
    env_id = env_id or getattr(env, "env_id", None) or type(env).__name__
    stats = RolloutStats()
    prompts = [list(env.prompt(t)) for t in task_ids]
    t0 = time.perf_counter()
    samples = backend.sample(prompts, group_size, params)
    stats.generation_s += time.perf_counter() - t0

    t0 = time.perf_counter()
    texts = [[s.text for s in group] for group in samples]
    if env_workers > 1 and len(task_ids) > 1:
        with concurrent.futures.ThreadPoolExecutor(env_workers) as pool:
            pairs = zip(task_ids, texts, strict=True)
            outcomes = list(pool.map(lambda a: grade_responses(env, *a), pairs))
    else:
        outcomes = [grade_responses(env, t, r) for t, r in zip(task_ids, texts, strict=True)]
    stats.env_s += time.perf_counter() - t0

    groups: list[Group] = []
    for task_id, prompt, group_samples, group_outcomes in zip(
        task_ids, prompts, samples, outcomes, strict=True
    ):
        trajectories = [
            Trajectory(
                env_id=env_id,
                task_id=task_id,
                prompt=tuple(prompt),
                turns=[_turn(s, o)],
                seed=params.seed,
                success=o.solved,
                policy_version=policy_version,
            )
            for s, o in zip(group_samples, group_outcomes, strict=True)
        ]
        groups.append(Group(env_id=env_id, task_id=task_id, trajectories=trajectories))

    max_turns = int(getattr(env, "max_turns", 1) or 1)
    if max_turns > 1:
        _continue_episodes(env, backend, groups, outcomes, params, max_turns, stats)

    for g in groups:
        for traj in g.trajectories:
            stats.rollouts += 1
            stats.missing_rewards += traj.reward is None
            for turn in traj.turns:
                stats.turns += 1
                stats.response_tokens += len(turn.response_token_ids or ())
                stats.truncated += turn.info.get("finish_reason") == "length"
    return groups, stats


def _continue_episodes(
    env: RLRFEnv,
    backend: SamplingBackend,
    groups: list[Group],
    first_outcomes: list[list[Outcome]],
    params: SamplingParams,
    max_turns: int,
    stats: RolloutStats,
) -> None:
    """Step every rollout whose episode is not done, all running rollouts per sampling call."""
    active = [
        (traj, outcome)
        for g, outs in zip(groups, first_outcomes, strict=True)
        for traj, outcome in zip(g.trajectories, outs, strict=True)
    ]
    for turn_index in range(1, max_turns):
        active = [(t, o) for t, o in active if not o.done and o.reward is not None]
        if not active:
            return
        chats = [turn_prompts(t)[-1] for t, _ in active]
        for chat, (traj, _) in zip(chats, active, strict=True):
            chat.append({"role": "assistant", "content": traj.turns[-1].response})
            chat.extend(dict(m) for m in traj.turns[-1].observation)  # type: ignore[misc]
        seed = None if params.seed is None else params.seed + 7919 * turn_index
        t0 = time.perf_counter()
        samples = backend.sample(chats, 1, dataclasses.replace(params, seed=seed))
        stats.generation_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        new_active = []
        for (traj, _), chat, (sample,) in zip(active, chats, samples, strict=True):
            outcome = env.evaluate(traj.task_id, sample.text, chat)
            if not isinstance(outcome, Outcome):
                raise EnvError(f"{type(env).__name__}.evaluate must return an Outcome")
            traj.turns.append(_turn(sample, outcome))
            traj.success = outcome.solved
            new_active.append((traj, outcome))
        stats.env_s += time.perf_counter() - t0
        active = new_active
