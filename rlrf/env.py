"""The RLRF environment: a Gymnasium env whose steps return a reward plus typed feedback.

There are two ways to write one, with one contract for whoever drives it (``reset`` then
``step`` until ``terminated`` or ``truncated``; the feedback in ``info["feedback"]``; the
observation is always the chat to continue from):

**Task style** (stateless; the fast path of the rollout loop). Implement three methods:

* :meth:`RLRFEnv.task_ids` lists the tasks of a split (``"train"``, ``"test"``, ...);
* :meth:`RLRFEnv.prompt` gives a task's prompt as chat messages;
* :meth:`RLRFEnv.evaluate` grades one response and returns an :class:`Outcome`
  (reward, feedback, success, and for multi-turn envs whether the episode goes on).

The framework supplies the Gymnasium API on top: ``reset(seed=..., options=...)`` picks a
task (the same seed picks the same task; ``options={"task_id": ...}`` picks one by id) and
``step(response)`` returns ``(observation, reward, terminated, truncated, info)`` with the
typed feedback in ``info["feedback"]``. :meth:`RLRFEnv.step_result` is the typed view.

**Gymnasium style** (the env keeps its own state: a game, a sandbox, a tool server). Override
``reset`` and ``step`` as Gymnasium documents; ``super().reset(seed=seed)`` then only seeds
``self.np_random``. ``reset`` must return ``(chat, info)`` and let the seed pick the task (the
same seed, the same task: that is how the G rollouts of one group share a task);
``step(response)`` returns ``(chat, reward, terminated, truncated, info)`` where ``chat`` is
the previous chat, then the response as an assistant message, then whatever the env adds,
and ``info["feedback"]`` holds :class:`Feedback` (or nothing). :func:`env_style` tells the
two apart; :func:`validate_step` is the one check of what ``step`` returns, used by the
checker and the rollout loop.

>>> from rlrf import FeedbackKind
>>> class Echo(RLRFEnv):
...     def task_ids(self, split="train"):
...         return ["a", "b"] if split == "train" else ["c"]
...     def prompt(self, task_id):
...         return [{"role": "user", "content": f"Say {task_id}."}]
...     def evaluate(self, task_id, response, history=()):
...         if response.strip() == task_id:
...             return Outcome(reward=1.0)
...         return Outcome(0.0, Feedback(FeedbackKind.WRONG_ANSWER, f"Say exactly {task_id!r}."))
>>> env = Echo()
>>> prompt, info = env.reset(seed=0, options={"task_id": "b"})
>>> prompt[-1]["content"], info["task_id"]
('Say b.', 'b')
>>> result = env.step_result("c")
>>> result.reward, result.feedback[0].text, result.terminated
(0.0, "Say exactly 'b'.", True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, SupportsFloat, TypedDict

import gymnasium
import numpy as np
from gymnasium import spaces

from rlrf.errors import EnvError
from rlrf.feedback import Feedback, as_feedback_tuple

__all__ = [
    "ChatSpace",
    "EnvStyle",
    "Message",
    "Outcome",
    "RLRFEnv",
    "ResponseSpace",
    "StepResult",
    "appended_messages",
    "env_style",
    "user_prompt",
    "validate_outcome",
    "validate_reset",
    "validate_step",
]


class Message(TypedDict):
    """One chat message, as chat templates expect it."""

    role: str
    content: str


_ROLES = ("system", "user", "assistant", "tool")


def user_prompt(content: str, system: str | None = None) -> list[Message]:
    """A one-question chat: an optional system message, then ``content`` as the user's.

    >>> user_prompt("What is 2 + 2?", system="Be brief.")[0]["role"]
    'system'
    """
    messages: list[Message] = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": content})
    return messages


class ChatSpace(spaces.Space):
    """The space of chat transcripts: lists of ``{"role": ..., "content": ...}`` messages."""

    def __init__(self, max_messages: int = 1024, seed: int | None = None) -> None:
        super().__init__(shape=None, dtype=None, seed=seed)
        self.max_messages = max_messages

    @property
    def is_np_flattenable(self) -> bool:
        """Transcripts have no fixed-size numeric form."""
        return False

    def contains(self, x: Any) -> bool:
        """Return whether ``x`` is a non-empty list of well-formed messages."""
        if not isinstance(x, (list, tuple)) or not 0 < len(x) <= self.max_messages:
            return False
        return all(
            isinstance(m, dict) and m.get("role") in _ROLES and isinstance(m.get("content"), str)
            for m in x
        )

    def sample(self, mask: Any = None, probability: Any = None) -> list[Message]:
        """Sample a one-message user transcript of random lowercase text."""
        n = int(self.np_random.integers(1, 40))
        text = "".join(chr(int(c)) for c in self.np_random.integers(97, 123, size=n))
        return [{"role": "user", "content": text}]

    def __repr__(self) -> str:
        return f"ChatSpace(max_messages={self.max_messages})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ChatSpace) and other.max_messages == self.max_messages


class ResponseSpace(spaces.Space):
    """The space of responses: any ``str`` of at most ``max_length`` characters."""

    def __init__(self, max_length: int = 1_000_000, seed: int | None = None) -> None:
        super().__init__(shape=None, dtype=None, seed=seed)
        self.max_length = max_length

    @property
    def is_np_flattenable(self) -> bool:
        """Text has no fixed-size numeric form."""
        return False

    def contains(self, x: Any) -> bool:
        """Return whether ``x`` is a string within the length limit."""
        return isinstance(x, str) and len(x) <= self.max_length

    def sample(self, mask: Any = None, probability: Any = None) -> str:
        """Sample random printable ASCII text (handy for fuzzing an env)."""
        n = int(self.np_random.integers(0, 200))
        return "".join(chr(int(c)) for c in self.np_random.integers(32, 127, size=n))

    def __repr__(self) -> str:
        return f"ResponseSpace(max_length={self.max_length})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ResponseSpace) and other.max_length == self.max_length


@dataclass
class Outcome:
    """What :meth:`RLRFEnv.evaluate` returns for one response.

    Attributes:
        reward: The scalar reward, or ``None`` when it could not be computed (a judge that
            is down): trainers skip such rollouts and count them, never treating them as 0.
        feedback: Rich feedback on the response: one item, several, or ``None``.
        success: Whether the task was solved; ``None`` means ``reward >= 1.0``.
        done: For multi-turn envs: ``False`` when the episode continues.
        observation: For multi-turn envs: messages appended after the response (for example
            a tool's result) that the policy sees on its next turn.
        info: Free-form extra information, copied into the step's ``info``.

    """

    reward: float | None
    feedback: Feedback | tuple[Feedback, ...] | None = None
    success: bool | None = None
    done: bool = True
    observation: tuple[Message, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def feedback_items(self) -> tuple[Feedback, ...]:
        """The feedback as a tuple (possibly empty)."""
        return as_feedback_tuple(self.feedback)

    @property
    def solved(self) -> bool:
        """``success`` if given, else whether the reward reached 1.0."""
        if self.success is not None:
            return bool(self.success)
        return self.reward is not None and self.reward >= 1.0


@dataclass(frozen=True)
class StepResult:
    """Typed view of the Gymnasium 5-tuple that :meth:`RLRFEnv.step` returns."""

    observation: list[Message]
    reward: float
    terminated: bool
    truncated: bool
    feedback: tuple[Feedback, ...]
    success: bool
    reward_missing: bool
    info: dict[str, Any]

    @classmethod
    def from_step(
        cls, step: tuple[list[Message], SupportsFloat, bool, bool, dict[str, Any]]
    ) -> StepResult:
        """Build from ``env.step(...)``'s tuple (works through any wrapper)."""
        obs, reward, terminated, truncated, info = step
        return cls(
            observation=obs,
            reward=float(reward),
            terminated=bool(terminated),
            truncated=bool(truncated),
            feedback=as_feedback_tuple(info.get("feedback")),
            success=bool(info.get("success", False)),
            reward_missing=bool(info.get("reward_missing", False)),
            info=info,
        )

    @property
    def done(self) -> bool:
        """Whether the episode ended (terminated or truncated)."""
        return self.terminated or self.truncated


EnvStyle = Literal["task", "gymnasium"]

_TASK_METHODS = ("task_ids", "prompt", "evaluate")


class RLRFEnv(gymnasium.Env):
    """Base class of every rlrf environment (see the module docstring for both styles).

    Class attributes a subclass may override:
        max_turns: Turns per episode before ``truncated`` (1 = single-turn).
        splits: The named task splits this env offers.
        feedback_max_chars: The cap :func:`rlrf.check_env` enforces on feedback text.
        thread_safe: ``False`` when instances of this env must not be stepped from several
            threads at once (they share a non-thread-safe resource); the rollout loop then
            steps them one at a time.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}
    observation_space = ChatSpace()
    action_space = ResponseSpace()
    max_turns: int = 1
    splits: tuple[str, ...] = ("train", "test")
    feedback_max_chars: int = 2000
    thread_safe: ClassVar[bool] = True

    _task_id: str | None = None
    _split: str = "train"
    _history: list[Message]
    _turn: int = 0
    _rlrf_id: str | None = None

    def __new__(cls, *args: Any, **kwargs: Any) -> RLRFEnv:
        """Create the instance, remembering the constructor's arguments for :meth:`spawn`."""
        # The constructor's arguments are kept so that :meth:`spawn` can build an independent
        # twin: one instance per running rollout, whatever the env keeps on ``self``.
        self = super().__new__(cls)
        self._rlrf_init_args = (args, dict(kwargs))
        return self

    # ---- what a task-style subclass implements ----------------------------------------------

    def task_ids(self, split: str = "train") -> Sequence[str]:
        """Return the ids of the tasks in ``split`` (``"train"``, ``"test"``, ...)."""
        raise NotImplementedError(f"{type(self).__name__} must implement task_ids(split)")

    def prompt(self, task_id: str) -> list[Message]:
        """Return the prompt of ``task_id`` as chat messages."""
        raise NotImplementedError(f"{type(self).__name__} must implement prompt(task_id)")

    def evaluate(self, task_id: str, response: str, history: Sequence[Message] = ()) -> Outcome:
        """Grade ``response`` to ``task_id``; ``history`` holds every earlier message."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement evaluate(task_id, response, history)"
        )

    def evaluate_many(self, task_id: str, responses: Sequence[str]) -> list[Outcome]:
        """Grade several first-turn responses to one task (override to run them concurrently)."""
        history = self.prompt(task_id)
        return [self.evaluate(task_id, r, history) for r in responses]

    # ---- optional, both styles ----------------------------------------------------------------

    def gold_answer(self, task_id: str) -> str | None:
        """Return the reference answer, if the env has one (:func:`check_env` checks leaks).

        A Gymnasium-style env is asked with the ``task_id`` its ``reset`` put in ``info``.
        """
        return None

    def gold_response(self, task_id: str) -> str | None:
        """Return a complete response that solves ``task_id``, formatted as this env grades it.

        ``rlrf sample`` plays it. The default is :meth:`gold_answer` unchanged: override this
        when the env expects the answer wrapped (in a tag, a code block, a tool call).
        """
        return self.gold_answer(task_id)

    def spawn(self) -> RLRFEnv:
        """Build an independent instance like this one (same constructor arguments and id).

        The rollout loop calls it to give every running rollout its own env, so that
        Gymnasium-style envs never share episode state. Objects passed to the constructor (a
        sandbox, a client) are shared by the twins, not copied.
        """
        args, kwargs = self.__dict__.get("_rlrf_init_args", ((), {}))
        try:
            twin = type(self)(*args, **kwargs)
        except Exception as e:
            raise EnvError(
                f"{self.env_id}: could not build another instance with the constructor "
                f"arguments of this one ({type(e).__name__}: {e}); pass env_factory= to "
                "collect_groups, or override spawn()"
            ) from e
        twin._rlrf_id = self._rlrf_id
        if "max_turns" in self.__dict__:  # set per instance by a registration's max_turns
            twin.max_turns = self.max_turns
        return twin

    # ---- the Gymnasium API ----------------------------------------------------------------

    @property
    def env_id(self) -> str:
        """The registered id this env was made from, or its class name."""
        return self._rlrf_id or type(self).__name__

    @property
    def task_id(self) -> str | None:
        """The current episode's task id (``None`` before the first reset)."""
        return self._task_id

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[list[Message], dict[str, Any]]:
        """Start an episode; return the prompt and ``info`` with ``task_id`` and ``split``.

        For a Gymnasium-style env (one that overrides ``reset`` and ``step`` and does not
        implement the task protocol), ``super().reset(seed=seed)`` only seeds
        ``self.np_random`` and returns ``None``, as ``gymnasium.Env.reset`` does.

        Args:
            seed: Seeds the env's RNG; the same seed picks the same task.
            options: ``{"task_id": id}`` picks a task; ``{"split": name}`` draws from a split.

        """
        if env_style(self) == "gymnasium":
            super().reset(seed=seed)
            return None  # type: ignore[return-value]
        super().reset(seed=seed)
        options = dict(options or {})
        split = options.pop("split", "train")
        task_id = options.pop("task_id", None)
        if options:
            raise EnvError(
                f"{self.env_id}.reset: unknown option(s) {sorted(options)}; "
                "supported: 'task_id', 'split'"
            )
        if task_id is None:
            if split not in self.splits:
                raise EnvError(
                    f"{self.env_id}.reset: unknown split {split!r}; this env has {self.splits}"
                )
            ids = self.task_ids(split)
            if len(ids) == 0:
                raise EnvError(f"{self.env_id}.reset: split {split!r} has no tasks")
            task_id = ids[int(self.np_random.integers(len(ids)))]
        self._task_id, self._split, self._turn = str(task_id), split, 0
        self._history = list(self.prompt(self._task_id))
        return list(self._history), {"task_id": self._task_id, "split": split, "turn": 0}

    def step(self, action: str) -> tuple[list[Message], float, bool, bool, dict[str, Any]]:
        """Submit a response; return ``(observation, reward, terminated, truncated, info)``.

        ``info["feedback"]`` is a tuple of :class:`Feedback` (maybe empty), ``info["success"]``
        a bool, ``info["reward_missing"]`` whether the reward could not be computed (the
        returned reward is then 0.0 and must not be trained on).
        """
        if env_style(self) != "task":  # only reachable through super().step()
            raise EnvError(
                f"{self.env_id}.step: RLRFEnv.step grades through evaluate(), which this "
                "Gymnasium-style env does not implement; return the 5-tuple from your own "
                "step instead of calling super().step()"
            )
        if self._task_id is None:
            raise EnvError(f"{self.env_id}: call reset() before step()")
        if not isinstance(action, str):
            raise TypeError(
                f"{self.env_id}.step expects the response as str, got {type(action).__name__}"
                + ("; decode bytes first" if isinstance(action, (bytes, bytearray)) else "")
            )
        outcome = self.evaluate(self._task_id, action, tuple(self._history))
        feedback = validate_outcome(outcome, f"{self.env_id}.evaluate (task {self._task_id!r})")
        self._turn += 1
        self._history.append({"role": "assistant", "content": action})
        self._history.extend(outcome.observation)
        terminated = bool(outcome.done)
        truncated = not terminated and self._turn >= self.max_turns
        info = {
            **outcome.info,
            "feedback": feedback,
            "success": outcome.solved,
            "reward_missing": outcome.reward is None,
            "task_id": self._task_id,
            "turn": self._turn,
        }
        reward = 0.0 if outcome.reward is None else float(outcome.reward)
        return list(self._history), reward, terminated, truncated, info

    def step_result(self, response: str) -> StepResult:
        """Like :meth:`step`, returning the typed, checked :class:`StepResult`."""
        return validate_step(self.step(response), f"{self.env_id}.step")


# ---- which style an env is written in -------------------------------------------------------


def _overrides(cls: type, name: str) -> bool:
    return getattr(cls, name, None) is not getattr(RLRFEnv, name)


def env_style(env: Any) -> EnvStyle:
    """Return ``"task"`` or ``"gymnasium"``: how ``env`` (or the env inside a wrapper) is written.

    ``"task"``: it implements ``task_ids``, ``prompt`` and ``evaluate`` (the base class then
    supplies ``reset``/``step``). ``"gymnasium"``: it overrides ``reset`` and ``step`` and
    keeps its own state. Anything else raises an :class:`EnvError` naming what is missing.

    >>> from rlrf import make
    >>> env_style(make("rlrf/Arithmetic-v0"))
    'task'
    """
    inner = getattr(env, "unwrapped", env)
    cls = type(inner)
    if all(_overrides(cls, n) for n in _TASK_METHODS):
        return "task"
    if _overrides(cls, "reset") and _overrides(cls, "step"):
        return "gymnasium"
    name = getattr(inner, "env_id", cls.__name__)
    has_task = [n for n in _TASK_METHODS if _overrides(cls, n)]
    if has_task:
        missing = [f"{n}()" for n in _TASK_METHODS if n not in has_task]
        hint = f"it implements {', '.join(n + '()' for n in has_task)} but not {', '.join(missing)}"
    elif _overrides(cls, "reset") or _overrides(cls, "step"):
        which = "reset" if _overrides(cls, "reset") else "step"
        other = "step" if which == "reset" else "reset"
        hint = f"it overrides {which}() but not {other}()"
    else:
        hint = "it implements neither"
    raise EnvError(
        f"{name}: an RLRFEnv implements task_ids(split), prompt(task_id) and evaluate(task_id, "
        "response, history) (task style), or overrides reset(seed=, options=) and "
        f"step(response) keeping its own state (Gymnasium style); {hint}"
    )


# ---- the one validation of what an env returns ----------------------------------------------


def _check_reward(reward: Any, where: str) -> float | None:
    if reward is None:
        return None
    if isinstance(reward, (bool, np.bool_)) or not isinstance(
        reward, (int, float, np.floating, np.integer)
    ):
        raise EnvError(
            f"{where} returned reward of type {type(reward).__name__}; "
            "use a float, or None for a missing reward"
        )
    if not math.isfinite(float(reward)):
        raise EnvError(
            f"{where} returned reward {reward}; rewards must be finite "
            "(use None for a missing reward)"
        )
    return float(reward)


def _check_feedback(feedback: Any, where: str) -> tuple[Feedback, ...]:
    if isinstance(feedback, (str, bytes)):
        raise EnvError(
            f"{where} returned bad feedback: a plain {type(feedback).__name__}; wrap the text "
            "as rlrf.Feedback(FeedbackKind.OTHER, text)"
        )
    try:
        return as_feedback_tuple(feedback)
    except TypeError as e:
        raise EnvError(f"{where} returned bad feedback: {e}") from e


def validate_outcome(outcome: Any, where: str) -> tuple[Feedback, ...]:
    """Check an :class:`Outcome` (type, finite or missing reward, typed feedback).

    Returns its feedback as a tuple; raises :class:`EnvError` starting with ``where``
    (for example ``"acme/Sort-v0.evaluate (task 't3')"``).
    """
    if not isinstance(outcome, Outcome):
        raise EnvError(
            f"{where} returned {type(outcome).__name__}; it must return rlrf.Outcome("
            "reward, feedback, ...)"
        )
    _check_reward(outcome.reward, where)
    return _check_feedback(outcome.feedback, where)


def validate_reset(result: Any, where: str) -> tuple[list[Message], dict[str, Any]]:
    """Check what ``reset`` returned: ``(chat, info)``; raise :class:`EnvError` naming ``where``."""
    if not isinstance(result, tuple) or len(result) != 2:
        got = "None" if result is None else f"{type(result).__name__}"
        if isinstance(result, tuple):
            got = f"a {len(result)}-tuple"
        raise EnvError(
            f"{where} returned {got}; reset must return (observation, info), the observation "
            "being the prompt as a list of {'role', 'content'} messages"
        )
    obs, info = result
    _check_chat(obs, where)
    if not isinstance(info, dict):
        raise EnvError(f"{where} returned info of type {type(info).__name__}; info is a dict")
    return list(obs), info


def _check_chat(obs: Any, where: str) -> None:
    if not ChatSpace().contains(obs):
        raise EnvError(
            f"{where} returned an observation that is not a chat: {obs!r:.120}; return a "
            "non-empty list of {'role': 'system'|'user'|'assistant'|'tool', 'content': str} "
            "messages"
        )


def validate_step(result: Any, where: str) -> StepResult:
    """Check what ``step`` returned and give its typed view.

    The tuple must be ``(chat, reward, terminated, truncated, info)``: a chat observation
    (on a step that ends the episode anything, e.g. ``[]``: nothing continues from it, and
    the typed view then holds ``[]``), a finite reward (``None`` or
    ``info["reward_missing"]`` marks a missing one), bools, a
    dict whose ``"feedback"`` is :class:`Feedback` items (or absent) and whose optional
    ``"success"`` is a bool (default: ``reward >= 1``). Raises :class:`EnvError` naming
    ``where`` (for example ``"acme/Guess-v0.step (turn 2)"``).
    """
    if not isinstance(result, tuple) or len(result) != 5:
        got = f"a {len(result)}-tuple" if isinstance(result, tuple) else type(result).__name__
        hint = (
            " (the old Gym API's done flag is now terminated and truncated)"
            if (isinstance(result, tuple) and len(result) == 4)
            else ""
        )
        raise EnvError(
            f"{where} returned {got}; step must return (observation, reward, terminated, "
            f"truncated, info){hint}"
        )
    obs, reward, terminated, truncated, info = result
    for name, flag in (("terminated", terminated), ("truncated", truncated)):
        if not isinstance(flag, (bool, np.bool_)):
            raise EnvError(f"{where} returned {name}={flag!r}; it must be a bool")
    if not (terminated or truncated):
        _check_chat(obs, where)
    elif not ChatSpace().contains(obs):
        obs = []  # nothing continues from a final observation: it may be anything
    value = _check_reward(reward, where)
    if not isinstance(info, dict):
        raise EnvError(f"{where} returned info of type {type(info).__name__}; info is a dict")
    feedback = _check_feedback(info.get("feedback"), where)
    missing = value is None or bool(info.get("reward_missing", False))
    success = info.get("success")
    if success is None:
        success = not missing and value is not None and value >= 1.0
    elif not isinstance(success, (bool, np.bool_)):
        raise EnvError(f"{where} returned info['success']={success!r}; it must be a bool")
    return StepResult(
        observation=list(obs),
        reward=0.0 if value is None else value,
        terminated=bool(terminated),
        truncated=bool(truncated),
        feedback=feedback,
        success=bool(success) and not missing,
        reward_missing=missing,
        info=info,
    )


def appended_messages(
    previous: Sequence[Message], response: str, observation: Sequence[Message]
) -> tuple[Message, ...] | None:
    """The messages an env added after ``response``, or ``None`` if the chat was not extended.

    A step's observation must be ``previous``, then ``{"role": "assistant", "content":
    response}``, then the env's own messages (a tool result, feedback): that is how a
    trajectory records every turn's chat without storing it again.
    """
    n = len(previous)
    if len(observation) <= n or list(observation[:n]) != list(previous):
        return None
    head = observation[n]
    if head.get("role") != "assistant" or head.get("content") != response:
        return None
    return tuple(observation[n + 1 :])
