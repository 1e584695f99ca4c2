"""The RLRF environment: a Gymnasium env whose steps return a reward plus typed feedback.

An environment author subclasses :class:`RLRFEnv` and implements three methods:

* :meth:`RLRFEnv.task_ids` lists the tasks of a split (``"train"``, ``"test"``, ...);
* :meth:`RLRFEnv.prompt` gives a task's prompt as chat messages;
* :meth:`RLRFEnv.evaluate` grades one response and returns an :class:`Outcome`
  (reward, feedback, success, and for multi-turn envs whether the episode goes on).

The framework supplies the Gymnasium API on top: ``reset(seed=..., options=...)`` picks a
task (the same seed picks the same task; ``options={"task_id": ...}`` picks one by id) and
``step(response)`` returns ``(observation, reward, terminated, truncated, info)`` with the
typed feedback in ``info["feedback"]``. :meth:`RLRFEnv.step_result` is the typed view.

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
from typing import Any, ClassVar, SupportsFloat, TypedDict

import gymnasium
import numpy as np
from gymnasium import spaces

from rlrf.errors import EnvError
from rlrf.feedback import Feedback, as_feedback_tuple

__all__ = [
    "ChatSpace",
    "Message",
    "Outcome",
    "RLRFEnv",
    "ResponseSpace",
    "StepResult",
    "user_prompt",
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


class RLRFEnv(gymnasium.Env):
    """Base class of every rlrf environment (see the module docstring for an example).

    Class attributes a subclass may override:
        max_turns: Turns per episode before ``truncated`` (1 = single-turn).
        splits: The named task splits this env offers.
        feedback_max_chars: The cap :func:`rlrf.check_env` enforces on feedback text.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}
    observation_space = ChatSpace()
    action_space = ResponseSpace()
    max_turns: int = 1
    splits: tuple[str, ...] = ("train", "test")
    feedback_max_chars: int = 2000

    _task_id: str | None = None
    _split: str = "train"
    _history: list[Message]
    _turn: int = 0
    _rlrf_id: str | None = None

    # ---- what a subclass implements -------------------------------------------------------

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

    def gold_answer(self, task_id: str) -> str | None:
        """Return the reference answer, if the env has one (:func:`check_env` checks leaks)."""
        return None

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

        Args:
            seed: Seeds the env's RNG; the same seed picks the same task.
            options: ``{"task_id": id}`` picks a task; ``{"split": name}`` draws from a split.

        """
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
        if self._task_id is None:
            raise EnvError(f"{self.env_id}: call reset() before step()")
        if not isinstance(action, str):
            raise TypeError(
                f"{self.env_id}.step expects the response as str, got {type(action).__name__}"
                + ("; decode bytes first" if isinstance(action, (bytes, bytearray)) else "")
            )
        outcome = self.evaluate(self._task_id, action, tuple(self._history))
        feedback = self._validate_outcome(outcome)
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
        """Like :meth:`step`, returning the typed :class:`StepResult`."""
        return StepResult.from_step(self.step(response))

    def _validate_outcome(self, outcome: Any) -> tuple[Feedback, ...]:
        where = f"{self.env_id}.evaluate (task {self._task_id!r})"
        if not isinstance(outcome, Outcome):
            raise EnvError(
                f"{where} returned {type(outcome).__name__}; it must return rlrf.Outcome("
                "reward, feedback, ...)"
            )
        if outcome.reward is not None:
            if isinstance(outcome.reward, bool) or not isinstance(
                outcome.reward, (int, float, np.floating, np.integer)
            ):
                raise EnvError(
                    f"{where} returned reward of type {type(outcome.reward).__name__}; "
                    "use a float, or None for a missing reward"
                )
            if not math.isfinite(float(outcome.reward)):
                raise EnvError(
                    f"{where} returned reward {outcome.reward}; rewards must be finite "
                    "(return None to mark a reward as missing)"
                )
        try:
            return outcome.feedback_items
        except TypeError as e:
            raise EnvError(f"{where} returned bad feedback: {e}") from e
