"""Gymnasium-style wrappers for RLRF environments.

:class:`Wrapper` forwards the RLRF task API (``task_ids``, ``prompt``, ``evaluate``, ...) so a
wrapped env still works with rollout collectors. :class:`FeedbackWrapper` has one method to
override, :meth:`FeedbackWrapper.feedback`, applied to both ``step`` and ``evaluate``.

>>> from rlrf import make
>>> env = DropFeedback(make("rlrf/Arithmetic-v0"))
>>> _ = env.reset(seed=0)
>>> env.step("not a number")[4]["feedback"]
()
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import gymnasium

from rlrf.env import Message, Outcome, RLRFEnv, StepResult, validate_step
from rlrf.feedback import Feedback, as_feedback_tuple, truncate_text

__all__ = ["CapFeedback", "DropFeedback", "FeedbackWrapper", "RedactFeedback", "Wrapper"]


class Wrapper(gymnasium.Wrapper):
    """Base wrapper for :class:`RLRFEnv`: forwards the task API to the wrapped env."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Wrapper:
        """Create the wrapper, remembering its constructor's arguments for :meth:`spawn`."""
        self = super().__new__(cls)
        self._rlrf_init_args = (args, dict(kwargs))
        return self

    def __init__(self, env: RLRFEnv | Wrapper) -> None:
        if not isinstance(env.unwrapped, RLRFEnv):
            raise TypeError(
                f"rlrf wrappers need an rlrf.RLRFEnv inside, got {type(env.unwrapped).__name__}"
            )
        super().__init__(env)

    @property
    def env_id(self) -> str:
        """The wrapped env's id."""
        return self.env.env_id

    @property
    def max_turns(self) -> int:
        """The wrapped env's turn limit."""
        return self.env.max_turns

    @property
    def splits(self) -> tuple[str, ...]:
        """The wrapped env's splits."""
        return self.env.splits

    @property
    def feedback_max_chars(self) -> int:
        """The wrapped env's feedback cap."""
        return self.env.feedback_max_chars

    def task_ids(self, split: str = "train") -> Sequence[str]:
        """Forward to the wrapped env."""
        return self.env.task_ids(split)

    def prompt(self, task_id: str) -> list[Message]:
        """Forward to the wrapped env."""
        return self.env.prompt(task_id)

    def evaluate(self, task_id: str, response: str, history: Sequence[Message] = ()) -> Outcome:
        """Forward to the wrapped env."""
        return self.env.evaluate(task_id, response, history)

    def evaluate_many(self, task_id: str, responses: Sequence[str]) -> list[Outcome]:
        """Forward to the wrapped env."""
        return self.env.evaluate_many(task_id, responses)

    def gold_answer(self, task_id: str) -> str | None:
        """Forward to the wrapped env."""
        return self.env.gold_answer(task_id)

    def gold_response(self, task_id: str) -> str | None:
        """Forward to the wrapped env."""
        return self.env.gold_response(task_id)

    @property
    def thread_safe(self) -> bool:
        """The wrapped env's declaration."""
        return bool(getattr(self.env, "thread_safe", True))

    def spawn(self) -> Wrapper:
        """The same wrappers around an independent instance of the wrapped env."""
        args, kwargs = self.__dict__.get("_rlrf_init_args", ((), {}))
        kwargs = dict(kwargs)
        if "env" in kwargs:
            kwargs["env"] = self.env.spawn()
        else:
            args = (self.env.spawn(), *args[1:])
        return type(self)(*args, **kwargs)

    def step_result(self, response: str) -> StepResult:
        """Typed, checked view of this wrapper's :meth:`step`."""
        return validate_step(self.step(response), f"{self.env_id}.step")


class FeedbackWrapper(Wrapper):
    """Transform the feedback of every step and evaluation; override :meth:`feedback`."""

    def feedback(self, feedback: tuple[Feedback, ...]) -> tuple[Feedback, ...]:
        """Return the transformed feedback (default: unchanged)."""
        return feedback

    def step(self, action: str) -> tuple[list[Message], float, bool, bool, dict[str, Any]]:
        """Step the wrapped env and transform ``info["feedback"]``."""
        obs, reward, terminated, truncated, info = self.env.step(action)
        info = {**info, "feedback": self.feedback(as_feedback_tuple(info.get("feedback")))}
        return obs, reward, terminated, truncated, info

    def evaluate(self, task_id: str, response: str, history: Sequence[Message] = ()) -> Outcome:
        """Evaluate through the wrapped env and transform the outcome's feedback."""
        return self._map(self.env.evaluate(task_id, response, history))

    def evaluate_many(self, task_id: str, responses: Sequence[str]) -> list[Outcome]:
        """Evaluate through the wrapped env and transform each outcome's feedback."""
        return [self._map(o) for o in self.env.evaluate_many(task_id, responses)]

    def _map(self, outcome: Outcome) -> Outcome:
        return replace(outcome, feedback=self.feedback(outcome.feedback_items))


class DropFeedback(FeedbackWrapper):
    """Remove all feedback: any env becomes a plain scalar-reward env (for ablations)."""

    def feedback(self, feedback: tuple[Feedback, ...]) -> tuple[Feedback, ...]:
        """Return no feedback."""
        return ()


class CapFeedback(FeedbackWrapper):
    """Cap each feedback item's text at ``max_chars`` characters, visibly."""

    def __init__(self, env: RLRFEnv | Wrapper, max_chars: int) -> None:
        if max_chars < 0:
            raise ValueError(f"max_chars must be >= 0, got {max_chars}")
        super().__init__(env)
        self.max_chars = max_chars

    @property
    def feedback_max_chars(self) -> int:
        """The tighter of this cap and the wrapped env's."""
        return min(self.max_chars, self.env.feedback_max_chars)

    def feedback(self, feedback: tuple[Feedback, ...]) -> tuple[Feedback, ...]:
        """Return the items with their text truncated."""
        return tuple(replace(f, text=truncate_text(f.text, self.max_chars)) for f in feedback)


class RedactFeedback(FeedbackWrapper):
    """Replace every match of the given regular expressions in feedback text.

    Useful to hide, for instance, expected outputs (``r"expected: .*"``) in ablations.
    """

    def __init__(
        self,
        env: RLRFEnv | Wrapper,
        patterns: Sequence[str | re.Pattern[str]],
        replacement: str = "[redacted]",
    ) -> None:
        super().__init__(env)
        self.patterns = [re.compile(p) if isinstance(p, str) else p for p in patterns]
        self.replacement = replacement

    def feedback(self, feedback: tuple[Feedback, ...]) -> tuple[Feedback, ...]:
        """Return the items with every pattern match replaced."""
        out = []
        for f in feedback:
            text = f.text
            for p in self.patterns:
                text = p.sub(self.replacement, text)
            out.append(replace(f, text=text))
        return tuple(out)
