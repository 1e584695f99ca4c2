"""Rollout collection: G episodes per task, played through any :class:`rlrf.RLRFEnv`.

:func:`collect_groups` is the one rollout loop of training, evaluation and test-time
self-distillation (``rlrf sample`` plays scripted episodes through the same ``reset``/``step``
contract). It returns one :class:`rlrf.Group` per task in the
common trajectory format, with the sampler's token ids and log-probs in each
:class:`rlrf.Turn`. A task is a task id (``str``) or a reset seed (``int``; the same seed
picks the same task, which is how the G rollouts of a group share one).

Two paths, one contract (``reset`` then ``step`` until ``terminated`` or ``truncated``):

* **Task protocol, the fast path.** An env written in the task style whose ``reset``/``step``
  are the base class's (possibly inside rlrf's feedback wrappers) is driven through
  ``prompt`` and ``evaluate_many``: the G responses of a task are graded in one call (the
  env's hook for concurrent grading; groups of different tasks are graded concurrently when
  ``env_workers > 1``), later turns through ``evaluate`` with the chat so far. It gives the
  same trajectories as stepping the env would (tested).
* **Stepping, for every other env** (Gymnasium style, or an env or wrapper that overrides
  ``reset``/``step``): every running rollout gets its own env instance (``env_factory``, by
  default :meth:`rlrf.RLRFEnv.spawn`), so stateful envs never share state; envs are reset
  and stepped on a thread pool of ``env_workers`` threads (one thread when the env declares
  ``thread_safe = False``); each env is closed as soon as its episode ends.

Either way, all running rollouts of a turn are sampled in ONE ``backend.sample`` call (the
first turn as ``group_size`` samples of each distinct prompt), an episode ends when the env
says ``terminated`` or ``truncated``, when its reward is missing, or after ``max_turns``
turns (the env's ``max_turns`` by default). What the env returns is checked by
:func:`rlrf.env.validate_outcome` / :func:`rlrf.env.validate_step` (finite rewards, typed
feedback, a chat observation that continues the chat); a step's ``info`` entries other than
the ones the trajectory types (feedback, success, ...) are kept in :attr:`rlrf.Turn.info` when
they are JSON-serializable, and left out otherwise. An env that raises or breaks its
contract ends THAT rollout only: the trajectory records a :class:`rlrf.trajectory.RolloutError`
(its reward is then missing, so trainers skip it), :attr:`RolloutStats.env_errors` counts it
and one :class:`RolloutErrorWarning` per call says so.

Which tasks to sample is the trainer's business: :func:`task_sampler` gives a seeded,
resumable sampler of task ids (task-style envs) or of reset seeds (Gymnasium-style envs);
:func:`eval_tasks` the held-out tasks.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import random
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import gymnasium

from rlrf.env import (
    Message,
    Outcome,
    RLRFEnv,
    appended_messages,
    env_style,
    validate_outcome,
    validate_reset,
    validate_step,
)
from rlrf.errors import EnvError, GroupMismatchError, RLRFWarning
from rlrf.sampling import Sample, SamplingBackend, SamplingParams
from rlrf.trajectory import Group, RolloutError, Trajectory, Turn
from rlrf.wrappers import FeedbackWrapper, Wrapper

__all__ = [
    "RolloutErrorWarning",
    "RolloutStats",
    "SeedSampler",
    "Task",
    "TaskSampler",
    "collect_groups",
    "eval_tasks",
    "grade_responses",
    "task_sampler",
    "turn_prompts",
]

#: A task: a task id (``reset(options={"task_id": ...})``) or a reset seed (``reset(seed=...)``).
Task = str | int

#: Offset of the seeds :func:`eval_tasks` gives Gymnasium-style envs (far from training's).
EVAL_SEED = 1_000_000_007

# Keys of a step's info that the trajectory already records as typed fields.
_MODELLED_INFO = frozenset({"feedback", "success", "reward_missing", "task_id", "turn"})

_T = TypeVar("_T")


class RolloutErrorWarning(RLRFWarning):
    """Some rollouts of a :func:`collect_groups` call ended because the env failed."""


@dataclass
class RolloutStats:
    """Counts and timings of one :func:`collect_groups` call.

    Attributes:
        rollouts: Number of trajectories (episodes).
        missing_rewards: Trajectories whose reward is None (skipped by trainers), env
            errors included.
        generation_s: Seconds spent sampling.
        env_s: Seconds spent in the env (making, resetting, stepping, grading, closing).
        response_tokens: Total sampled tokens (all turns).
        truncated: Turns that hit ``max_new_tokens`` without EOS.
        turns: Total turns recorded in the trajectories.
        generations: Responses sampled: every turn of every rollout (the x-axis of learning
            efficiency; for single-turn envs it equals ``rollouts``).
        env_errors: Rollouts ended by an env failure (a :class:`RolloutError` recorded).
        episodes_truncated: Episodes cut by ``max_turns`` or truncated by the env.
        sandbox_errors: Rollouts the grader's own sandbox failed on (a turn's info holds
            ``sandbox_error``; the reward is missing): counted apart from the policy's
            failures, which score 0, so a rising share is visible.

    """

    rollouts: int = 0
    missing_rewards: int = 0
    generation_s: float = 0.0
    env_s: float = 0.0
    response_tokens: int = 0
    truncated: int = 0
    turns: int = 0
    generations: int = 0
    env_errors: int = 0
    episodes_truncated: int = 0
    sandbox_errors: int = 0


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


class SeedSampler:
    """Reset seeds for envs that pick their task from the seed (Gymnasium style).

    The ``k``-th seed is a fixed function of ``(seed, k)``, so a run resumed from
    :meth:`state_dict` draws the same seeds as an uninterrupted one. Same interface as
    :class:`TaskSampler`.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.epoch = 0
        self.cursor = 0

    def next(self, n: int) -> list[int]:
        """Return the next ``n`` reset seeds."""
        out = [random.Random(f"{self.seed}:{self.cursor + i}").getrandbits(31) for i in range(n)]
        self.cursor += n
        return out

    def state_dict(self) -> dict[str, int]:
        """Return the position for a checkpoint."""
        return {"epoch": self.epoch, "cursor": self.cursor, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore a position from :meth:`state_dict`."""
        self.seed, self.epoch, self.cursor = state["seed"], state["epoch"], state["cursor"]


def task_sampler(env: RLRFEnv | Wrapper, seed: int = 0) -> TaskSampler | SeedSampler:
    """The training-task sampler of ``env``: its train task ids, or reset seeds.

    Task-style envs list their tasks (:class:`TaskSampler` over ``task_ids("train")``);
    Gymnasium-style envs pick a task from the reset seed (:class:`SeedSampler`).
    """
    if env_style(env) == "task":
        return TaskSampler(env.task_ids("train"), seed=seed)
    return SeedSampler(seed)


def eval_tasks(env: RLRFEnv | Wrapper, n: int) -> list[Task]:
    """Up to ``n`` held-out tasks: the first ids of the ``"test"`` split, or ``n`` fixed seeds.

    For a Gymnasium-style env, pass ``split="test"`` to :func:`collect_groups` with them (the
    env receives it as ``options["split"]``). Task-style envs without a ``"test"`` split have
    no held-out tasks (``[]``).
    """
    if env_style(env) == "task":
        if "test" not in env.splits:
            return []
        return list(env.task_ids("test"))[:n]
    return [EVAL_SEED + i for i in range(n)]


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


def grade_responses(env: RLRFEnv | Wrapper, task_id: str, responses: list[str]) -> list[Outcome]:
    """``env.evaluate_many``, checked: one valid :class:`Outcome` per response, else EnvError."""
    name = _name(env)
    outcomes = env.evaluate_many(task_id, responses)
    if len(outcomes) != len(responses):
        raise EnvError(
            f"{name}.evaluate_many returned {len(outcomes)} outcomes for "
            f"{len(responses)} responses to task {task_id!r}; return one per response"
        )
    for o in outcomes:
        validate_outcome(o, f"{name}.evaluate_many (task {task_id!r})")
    return outcomes


def collect_groups(
    env: RLRFEnv | Wrapper,
    backend: SamplingBackend,
    task_ids: Sequence[Task],
    group_size: int,
    params: SamplingParams,
    *,
    env_id: str | None = None,
    policy_version: int = 0,
    env_workers: int = 1,
    env_factory: Callable[[], RLRFEnv | Wrapper] | None = None,
    split: str = "train",
    max_turns: int | None = None,
) -> tuple[list[Group], RolloutStats]:
    """Play ``group_size`` episodes of each task and return them as groups.

    Args:
        env: The environment (task-style envs are graded through it directly; for the
            others it is the template of the per-rollout instances).
        backend: Any :class:`rlrf.sampling.SamplingBackend`.
        task_ids: Tasks to roll out, one group each, in this order: task ids (``str``) or
            reset seeds (``int``).
        group_size: G, rollouts per task.
        params: Sampling parameters (with ``seed`` for reproducible rollouts).
        env_id: Recorded in the trajectories (defaults to the env's id).
        policy_version: Recorded in the trajectories (the optimizer step).
        env_workers: Threads grading groups (task protocol) or stepping envs (others);
            one when the env declares ``thread_safe = False``.
        env_factory: Builds one independent env per running rollout (stepped envs only);
            default ``env.spawn`` (the same constructor arguments).
        split: Passed to ``reset`` as ``options["split"]`` (``"test"`` for evaluation).
        max_turns: Turn limit of every episode (default: the env's ``max_turns``).

    Returns:
        ``(groups, stats)``.

    """
    env_id = env_id or getattr(env, "env_id", None) or type(env).__name__
    limit = int(max_turns or getattr(env, "max_turns", 1) or 1)
    workers = env_workers if getattr(env, "thread_safe", True) else 1
    stats = RolloutStats()
    if _uses_task_protocol(env):
        t0 = time.perf_counter()
        ids = [t if isinstance(t, str) else _task_of_seed(env, t, split) for t in task_ids]
        stats.env_s += time.perf_counter() - t0
        groups = _collect_task_groups(
            env, backend, ids, group_size, params, env_id, policy_version, workers, limit, stats
        )
    else:
        factory = env_factory or _default_factory(env)
        groups = _collect_episodes(
            env, factory, backend, list(task_ids), group_size, params, env_id,
            policy_version, workers, limit, split, stats,
        )  # fmt: skip

    for g in groups:
        for traj in g.trajectories:
            stats.rollouts += 1
            stats.missing_rewards += traj.reward is None
            stats.env_errors += traj.error is not None
            stats.sandbox_errors += any("sandbox_error" in turn.info for turn in traj.turns)
            for turn in traj.turns:
                stats.turns += 1
                stats.response_tokens += len(turn.response_token_ids or ())
                stats.truncated += turn.info.get("finish_reason") == "length"
    if stats.env_errors:
        first = next(t.error for g in groups for t in g.trajectories if t.error is not None)
        warnings.warn(
            f"{stats.env_errors} of {stats.rollouts} rollouts of {env_id} ended because the "
            f"env failed (recorded in Trajectory.error, reward missing); first: {first}",
            RolloutErrorWarning,
            stacklevel=2,
        )
    return groups, stats


# ---- shared pieces --------------------------------------------------------------------------


def _name(env: Any) -> str:
    return getattr(env, "env_id", None) or type(env).__name__


def _uses_task_protocol(env: RLRFEnv | Wrapper) -> bool:
    """Whether stepping ``env`` is exactly prompt + evaluate (so the fast path is exact)."""
    layer: Any = env
    while isinstance(layer, gymnasium.Wrapper):
        cls = type(layer)
        if not isinstance(layer, Wrapper) or cls.reset is not gymnasium.Wrapper.reset:
            return False
        if cls.step not in (gymnasium.Wrapper.step, FeedbackWrapper.step):
            return False
        layer = layer.env
    if not isinstance(layer, RLRFEnv):
        raise EnvError(
            f"collect_groups needs an rlrf.RLRFEnv (possibly wrapped), got {type(layer).__name__}"
        )
    cls = type(layer)
    return env_style(layer) == "task" and cls.reset is RLRFEnv.reset and cls.step is RLRFEnv.step


def _default_factory(env: Any) -> Callable[[], Any]:
    spawn = getattr(env, "spawn", None)
    if spawn is None:
        raise EnvError(
            f"{_name(env)} is wrapped in {type(env).__name__}, which cannot build a twin for "
            "each rollout; pass env_factory= (a callable returning a fresh env) to "
            "collect_groups, or use rlrf.Wrapper subclasses"
        )
    return spawn


def _task_of_seed(env: RLRFEnv | Wrapper, seed: int, split: str) -> str:
    _, info = validate_reset(
        env.reset(seed=seed, options={"split": split}), f"{_name(env)}.reset(seed={seed})"
    )
    return str(info["task_id"])


def _map(pool: concurrent.futures.Executor | None, fn: Callable[..., _T], *its: Iterable) -> list:
    if pool is None:
        return [fn(*args) for args in zip(*its, strict=True)]
    return list(pool.map(fn, *its))


def _turn(sample: Sample, reward: float | None, **kw: Any) -> Turn:
    info = {"finish_reason": sample.finish_reason, **kw.pop("info", {})}
    dropped = sample.info.get("prompt_tokens_dropped")
    if dropped:
        # the sampler saw the chat's tokens without their first `dropped` (a vLLM engine's
        # context cut); training scores the response against that same prompt
        info["prompt_tokens_dropped"] = int(dropped)
    return Turn(
        response=sample.text,
        reward=reward,
        response_token_ids=None if sample.token_ids is None else tuple(sample.token_ids),
        logprobs=None if sample.logprobs is None else tuple(sample.logprobs),
        info=info,
        **kw,
    )


def _outcome_turn(sample: Sample, outcome: Outcome) -> Turn:
    return _turn(
        sample,
        None if outcome.reward is None else float(outcome.reward),
        feedback=outcome.feedback_items,
        observation=tuple(outcome.observation),
        info=outcome.info,
    )


# ---- the task protocol: prompt + evaluate_many ---------------------------------------------


def _collect_task_groups(
    env: RLRFEnv | Wrapper,
    backend: SamplingBackend,
    task_ids: list[str],
    group_size: int,
    params: SamplingParams,
    env_id: str,
    policy_version: int,
    workers: int,
    max_turns: int,
    stats: RolloutStats,
) -> list[Group]:
    name = _name(env)
    prompts: list[list[Message] | RolloutError] = []
    for t in task_ids:
        try:  # prompt() is the task protocol's reset: a failure ends that group only
            prompts.append(validate_reset((list(env.prompt(t)), {}), f"{name}.prompt({t!r})")[0])
        except Exception as e:
            prompts.append(RolloutError.from_exception("prompt", 0, e))
    ready = [i for i, p in enumerate(prompts) if not isinstance(p, RolloutError)]
    t0 = time.perf_counter()
    sampled = backend.sample([prompts[i] for i in ready], group_size, params) if ready else []
    stats.generation_s += time.perf_counter() - t0
    stats.generations += sum(len(s) for s in sampled)
    samples: list[list[Sample]] = [[] for _ in task_ids]
    for i, group_samples in zip(ready, sampled, strict=True):
        samples[i] = group_samples

    def grade(task_id: str, texts: list[str]) -> list[Outcome] | RolloutError:
        try:
            return grade_responses(env, task_id, texts)
        except Exception as e:  # recorded in the group's trajectories, not fatal to the run
            return RolloutError.from_exception("evaluate_many", 1, e)

    t0 = time.perf_counter()
    texts = [[s.text for s in samples[i]] for i in ready]
    ids = [task_ids[i] for i in ready]
    if workers > 1 and len(ready) > 1:
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            graded_ready = _map(pool, grade, ids, texts)
    else:
        graded_ready = _map(None, grade, ids, texts)
    stats.env_s += time.perf_counter() - t0
    graded: list[list[Outcome] | RolloutError] = list(prompts)  # type: ignore[arg-type]
    for i, outcomes in zip(ready, graded_ready, strict=True):
        graded[i] = outcomes

    groups: list[Group] = []
    running: list[tuple[Trajectory, Outcome]] = []
    for task_id, prompt, group_samples, outcomes in zip(
        task_ids, prompts, samples, graded, strict=True
    ):
        if isinstance(prompt, RolloutError):
            failed = [
                Trajectory(env_id, task_id, (), [], params.seed, policy_version=policy_version)
                for _ in range(group_size)
            ]
            for traj in failed:
                traj.error = prompt
            groups.append(Group(env_id=env_id, task_id=task_id, trajectories=failed))
            continue
        trajectories = []
        for i, s in enumerate(group_samples):
            traj = Trajectory(
                env_id=env_id,
                task_id=task_id,
                prompt=tuple(prompt),
                turns=[],
                seed=params.seed,
                policy_version=policy_version,
            )
            if isinstance(outcomes, RolloutError):
                traj.turns.append(_turn(s, None))
                traj.error = outcomes
            else:
                traj.turns.append(_outcome_turn(s, outcomes[i]))
                traj.success = outcomes[i].solved
                running.append((traj, outcomes[i]))
            trajectories.append(traj)
        groups.append(Group(env_id=env_id, task_id=task_id, trajectories=trajectories))

    for turn_index in range(1, max_turns):
        running = [(t, o) for t, o in running if not o.done and o.reward is not None]
        if not running:
            break
        chats = [turn_prompts(t)[-1] for t, _ in running]
        for chat, (traj, _) in zip(chats, running, strict=True):
            chat.append({"role": "assistant", "content": traj.turns[-1].response})
            chat.extend(dict(m) for m in traj.turns[-1].observation)  # type: ignore[misc]
        later = _sample_one_each(backend, chats, params, turn_index, stats)
        t0 = time.perf_counter()
        still = []
        for (traj, _), chat, sample in zip(running, chats, later, strict=True):
            where = f"{name}.evaluate (task {traj.task_id!r}, turn {turn_index + 1})"
            try:
                outcome = env.evaluate(traj.task_id, sample.text, chat)
                validate_outcome(outcome, where)
            except Exception as e:
                traj.turns.append(_turn(sample, None))
                traj.error = RolloutError.from_exception("evaluate", turn_index + 1, e)
                continue
            traj.turns.append(_outcome_turn(sample, outcome))
            traj.success = outcome.solved
            still.append((traj, outcome))
        stats.env_s += time.perf_counter() - t0
        running = still
    stats.episodes_truncated += sum(not o.done and o.reward is not None for _, o in running)
    return groups


def _sample_one_each(
    backend: SamplingBackend,
    chats: list[list[Message]],
    params: SamplingParams,
    turn_index: int,
    stats: RolloutStats,
) -> list[Sample]:
    """One sample per chat in one call; turn ``k`` > 0 uses seed ``seed + 7919 k``."""
    seed = None if params.seed is None else params.seed + 7919 * turn_index
    t0 = time.perf_counter()
    samples = backend.sample(chats, 1, dataclasses.replace(params, seed=seed))
    stats.generation_s += time.perf_counter() - t0
    stats.generations += len(chats)
    return [s for (s,) in samples]


# ---- every other env: one instance per rollout, reset + step -------------------------------


@dataclass
class _Episode:
    group: int
    task: Task
    traj: Trajectory
    env: Any = None
    chat: list[Message] = field(default_factory=list)
    done: bool = False
    cut: bool = False  # truncated (by the env or by max_turns)


def _collect_episodes(
    template: RLRFEnv | Wrapper,
    factory: Callable[[], Any],
    backend: SamplingBackend,
    tasks: list[Task],
    group_size: int,
    params: SamplingParams,
    env_id: str,
    policy_version: int,
    workers: int,
    max_turns: int,
    split: str,
    stats: RolloutStats,
) -> list[Group]:
    name = _name(template)
    episodes = [
        _Episode(
            group=g,
            task=task,
            traj=Trajectory(
                env_id=env_id,
                task_id=task if isinstance(task, str) else f"seed-{task}",
                prompt=(),
                turns=[],
                seed=task if isinstance(task, int) else params.seed,
                policy_version=policy_version,
            ),
        )
        for g, task in enumerate(tasks)
        for _ in range(group_size)
    ]

    def start(ep: _Episode) -> None:
        try:
            ep.env = factory()
        except Exception as e:
            ep.traj.error, ep.done = RolloutError.from_exception("make", 0, e), True
            return
        if isinstance(ep.task, str):
            seed, options = None, {"task_id": ep.task, "split": split}
        else:
            seed, options = ep.task, {"split": split}
        try:
            chat, info = validate_reset(ep.env.reset(seed=seed, options=options), f"{name}.reset")
        except Exception as e:
            ep.traj.error, ep.done = RolloutError.from_exception("reset", 0, e), True
            return
        ep.chat = chat
        ep.traj.prompt = tuple(chat)
        if info.get("task_id") is not None:
            ep.traj.task_id = str(info["task_id"])

    def advance(ep: _Episode, sample: Sample, turn: int) -> None:
        where = f"{name}.step (turn {turn})"
        try:
            result = validate_step(ep.env.step(sample.text), where)
        except Exception as e:
            ep.traj.turns.append(_turn(sample, None))
            ep.traj.error, ep.done = RolloutError.from_exception("step", turn, e), True
            return
        added = appended_messages(ep.chat, sample.text, result.observation)
        ended = result.terminated or result.truncated
        extra = {k: v for k, v in result.info.items() if k not in _MODELLED_INFO and _json_ok(v)}
        ep.traj.turns.append(
            _turn(
                sample,
                None if result.reward_missing else result.reward,
                feedback=result.feedback,
                observation=added or (),
                info=extra,
            )
        )
        ep.traj.success = result.success
        if added is None and not ended:
            ep.traj.error = RolloutError.from_exception(
                "step",
                turn,
                EnvError(
                    f"{where} returned an observation that does not continue the chat; it "
                    "must be the previous chat, then the response as an assistant message, "
                    "then the env's own messages"
                ),
            )
            ep.done = True
            return
        ep.chat = list(result.observation)
        ep.done = ended or result.reward_missing
        ep.cut = result.truncated and not result.terminated

    def close(ep: _Episode) -> None:
        if ep.env is None:
            return
        env, ep.env = ep.env, None  # closed once, as soon as its episode is over
        try:
            env.close()
        except Exception as e:
            warnings.warn(
                f"{name}.close raised {type(e).__name__}: {e}", RolloutErrorWarning, stacklevel=3
            )

    pool = concurrent.futures.ThreadPoolExecutor(workers) if workers > 1 else None
    try:
        t0 = time.perf_counter()
        _map(pool, start, episodes)
        stats.env_s += time.perf_counter() - t0
        _check_groups_share_a_task(name, episodes)
        for k in range(max_turns):
            active = [ep for ep in episodes if not ep.done]
            if not active:
                break
            samples = _sample_turn(backend, episodes, active, group_size, params, k, stats)
            t0 = time.perf_counter()
            _map(pool, advance, active, samples, [k + 1] * len(active))
            _map(pool, close, [ep for ep in active if ep.done])
            stats.env_s += time.perf_counter() - t0
        for ep in episodes:
            if not ep.done and ep.traj.error is None:
                ep.cut = True  # reached max_turns without the env ending the episode
            stats.episodes_truncated += ep.cut
    finally:
        t0 = time.perf_counter()
        _map(pool, close, episodes)
        if pool is not None:
            pool.shutdown()
        stats.env_s += time.perf_counter() - t0

    groups = []
    for g in range(len(tasks)):
        trajs = [ep.traj for ep in episodes if ep.group == g]
        task_id = next((t.task_id for t in trajs if t.error is None), trajs[0].task_id)
        groups.append(Group(env_id=env_id, task_id=task_id, trajectories=trajs))
    return groups


def _check_groups_share_a_task(name: str, episodes: list[_Episode]) -> None:
    """Every started rollout of a group got its group's task and prompt, else raise.

    A group compares its G rollouts' rewards, so rollouts of different tasks in one group
    would make every advantage meaningless: the run stops instead.
    """
    first: dict[int, _Episode] = {}
    for ep in episodes:
        if ep.traj.error is not None:
            continue
        ref = first.setdefault(ep.group, ep)
        if ref.traj.task_id == ep.traj.task_id and ref.chat == ep.chat:
            continue
        call = (
            f"reset(seed={ep.task})"
            if isinstance(ep.task, int)
            else f"reset(options={{'task_id': {ep.task!r}}})"
        )
        if ref.traj.task_id != ep.traj.task_id:
            what = f"tasks {ref.traj.task_id!r} and {ep.traj.task_id!r}"
        else:
            what = f"task {ep.traj.task_id!r} with different prompts"
        raise GroupMismatchError(
            f"{name}.{call} gave the rollouts of one group {what}: each rollout resets its "
            "own env with the group's seed, and a group's rewards are compared only if they "
            "answer the same task. Make reset pick the task and the prompt from the seed "
            "(and options) alone: draw from self.np_random after super().reset(seed=seed), "
            "never from global random state, the clock or a counter kept across instances "
            "(`rlrf check` tests this)"
        )


def _sample_turn(
    backend: SamplingBackend,
    episodes: list[_Episode],
    active: list[_Episode],
    group_size: int,
    params: SamplingParams,
    k: int,
    stats: RolloutStats,
) -> list[Sample]:
    """Sample every active episode's next response in one backend call."""
    if k == 0 and len(active) == len(episodes):
        # The first turn as G samples of each group's prompt, as the task protocol samples
        # it (same seeds, same prefix sharing): valid when a group's G resets agree.
        firsts = [active[i].chat for i in range(0, len(active), group_size)]
        same = all(
            ep.chat == firsts[i // group_size] for i, ep in enumerate(active)
        )  # the same seed must give the same prompt; if not, one sample per episode
        if same:
            t0 = time.perf_counter()
            samples = backend.sample(firsts, group_size, params)
            stats.generation_s += time.perf_counter() - t0
            stats.generations += len(active)
            return [s for group in samples for s in group]
    return _sample_one_each(backend, [ep.chat for ep in active], params, k, stats)


def _json_ok(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True
