r"""Procedural integer arithmetic with directional feedback (``rlrf/Arithmetic-v0``).

Each task is an expression such as ``37 + 58`` or ``12 * 7``, generated deterministically from
its task id, so every process agrees on the task set without shipping data.

Reward: 1.0 when the final answer equals the value, else 0.0. The final answer is the content
of ``<answer>...</answer>`` if present, else of ``\boxed{...}``, else the last integer in the
response that is not followed by an operator or ``=`` (so "4 + 5 =" at the end of a cut-off
response does not count as answering 5).

Feedback (never the answer itself):

* ``format`` when the response contains no integer;
* ``wrong_answer`` saying whether the answer is too high or too low, and by how much in
  order of magnitude, with the expression re-stated.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from rlrf.env import Message, Outcome, RLRFEnv, user_prompt
from rlrf.feedback import Feedback, FeedbackKind, TestCaseDetails

__all__ = ["ArithmeticEnv", "extract_integer"]

_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
_ANSWER_RE = re.compile(r"<answer>\s*(-?[\d,]+)\s*</answer>", re.S)
_BOXED_RE = re.compile(r"\\boxed\{\s*(-?[\d,]+)\s*\}")
# An integer that is not an operand of a further operation: in "3 + 4 = 7, 4 + 5 =" only the 7
# counts, so a response cut off mid-expression does not score with one of its operands.
# A "-" right after a number ("8 - 3") is an operator, not a sign.
_INT_RE = re.compile(r"(?:(?<!\d)(?<!\d\s)-)?\d[\d,]*(?![\d,]*\s*[-+*/=×])")


def extract_integer(response: str) -> int | None:
    """Return the response's final integer answer, or ``None`` when it has none."""
    for pattern in (_ANSWER_RE, _BOXED_RE):
        found = pattern.findall(response)
        if found:
            return int(found[-1].replace(",", ""))
    found = _INT_RE.findall(response)
    if not found:
        return None
    try:
        return int(found[-1].replace(",", "").rstrip(","))
    except ValueError:
        return None


class ArithmeticEnv(RLRFEnv):
    """Integer arithmetic questions with "too high / too low" feedback.

    Args:
        digits: Operands have between 1 and ``digits`` digits (operands are at least 2).
        ops: Which operators to use, a subset of ``"+-*"``.
        n_train: Number of training tasks.
        n_test: Number of held-out tasks.
        system_prompt: Optional system message.

    """

    def __init__(
        self,
        digits: int = 2,
        ops: str = "+-*",
        n_train: int = 1000,
        n_test: int = 200,
        system_prompt: str | None = None,
    ) -> None:
        if digits < 1 or not ops or set(ops) - set(_OPS):
            raise ValueError(
                f"digits must be >= 1 and ops a non-empty subset of '+-*', got "
                f"digits={digits}, ops={ops!r}"
            )
        self.digits, self.ops = digits, ops
        self._ids = {
            "train": [f"train-{i:05d}" for i in range(n_train)],
            "test": [f"test-{i:05d}" for i in range(n_test)],
        }
        self.system_prompt = system_prompt

    def task_ids(self, split: str = "train") -> Sequence[str]:
        """Return the task ids of ``split``."""
        return self._ids[split]

    def _task(self, task_id: str) -> tuple[int, str, int]:
        rng = random.Random(f"arithmetic/{self.digits}/{self.ops}/{task_id}")
        hi = 10**self.digits - 1
        a, b = rng.randint(2, max(2, hi)), rng.randint(2, max(2, hi))
        op = rng.choice(self.ops)
        if op == "-" and b > a:
            a, b = b, a
        return a, op, b

    def prompt(self, task_id: str) -> list[Message]:
        """Ask for the value of the task's expression."""
        a, op, b = self._task(task_id)
        return user_prompt(
            f"What is {a} {op} {b}? Give the final answer as <answer>N</answer>.",
            self.system_prompt,
        )

    def gold_answer(self, task_id: str) -> str:
        """The expression's value."""
        a, op, b = self._task(task_id)
        return str(_OPS[op](a, b))

    def evaluate(self, task_id: str, response: str, history: Sequence[Message] = ()) -> Outcome:
        """Reward 1 for the right value; otherwise say which way the answer is off."""
        a, op, b = self._task(task_id)
        value = _OPS[op](a, b)
        given = extract_integer(response)
        if given is None:
            return Outcome(
                0.0,
                Feedback(
                    FeedbackKind.FORMAT,
                    "Your response contains no integer answer. End with <answer>N</answer>.",
                    source="arithmetic",
                ),
            )
        if given == value:
            return Outcome(1.0, success=True)
        direction = "too high" if given > value else "too low"
        off = abs(given - value)
        size = "by less than 10" if off < 10 else f"by about {10 ** (len(str(off)) - 1)} or more"
        text = f"Your answer {given} to {a} {op} {b} is {direction} ({size}). Recompute carefully."
        details = TestCaseDetails(input=f"{a} {op} {b}", actual=str(given))
        return Outcome(0.0, Feedback(FeedbackKind.WRONG_ANSWER, text, details, "arithmetic"))
