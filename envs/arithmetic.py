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

from envs._numbers import MAX_INT_DIGITS, NumberTooLongError, parse_int
from rlrf.env import Message, Outcome, RLRFEnv, user_prompt
from rlrf.feedback import Feedback, FeedbackKind, TestCaseDetails, truncate_text

__all__ = ["ArithmeticEnv", "extract_integer"]

_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
_ANSWER_RE = re.compile(r"<answer>\s*(-?[\d,]+)\s*</answer>", re.S)
_BOXED_RE = re.compile(r"\\boxed\{\s*(-?[\d,]+)\s*\}")
_RUN_RE = re.compile(r"\d[\d,]*")
# An integer that is not an operand of a further operation: in "3 + 4 = 7, 4 + 5 =" only the 7
# counts, so a response cut off mid-expression does not score with one of its operands.
_OPERATOR_AFTER_RE = re.compile(r"\s*[-+*/=×]")
#: Operands may have at most this many digits, so every value prints under Python's limit.
MAX_DIGITS = 1000


def _final_token(response: str) -> str | None:
    r"""The text of the response's final integer answer (digits, commas, sign), or ``None``.

    Linear time: each maximal run of digits and commas is looked at once. (A single regex
    with a negative lookahead over ``[\d,]*`` backtracked cubically on long digit runs.)
    """
    for pattern in (_ANSWER_RE, _BOXED_RE):
        found = pattern.findall(response)
        if found:
            return found[-1]
    token = None
    for m in _RUN_RE.finditer(response):
        if _OPERATOR_AFTER_RE.match(response, m.end()):
            continue
        start = m.start()
        # A "-" right before the digits is a sign unless it follows a number ("8 - 3").
        if start and response[start - 1] == "-":
            before = response[max(0, start - 3) : start - 1]
            if not (before[-1:].isdigit() or (before[-1:].isspace() and before[-2:-1].isdigit())):
                start -= 1
        token = response[start : m.end()]
    return token


def _parse(token: str) -> int:
    """The integer of an answer token; raises ``ValueError`` (too long, or only commas)."""
    return parse_int(token.replace(",", ""), max_digits=MAX_INT_DIGITS)


def extract_integer(response: str) -> int | None:
    """Return the response's final integer answer, or ``None`` when it has none.

    An answer with more than :data:`~envs._numbers.MAX_INT_DIGITS` digits counts as none.
    """
    token = _final_token(response)
    if token is None:
        return None
    try:
        return _parse(token)
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
        if not 1 <= digits <= MAX_DIGITS or not ops or set(ops) - set(_OPS):
            raise ValueError(
                f"digits must be in [1, {MAX_DIGITS}] and ops a non-empty subset of '+-*', got "
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
        token = _final_token(response)
        try:
            given = None if token is None else _parse(token)
        except NumberTooLongError:
            direction = "too low" if token.lstrip().startswith("-") else "too high"
            text = (
                f"Your answer to {a} {op} {b} is {direction}: it has more than "
                f"{MAX_INT_DIGITS} digits. Recompute carefully."
            )
            details = TestCaseDetails(input=f"{a} {op} {b}", actual=truncate_text(token, 100))
            return Outcome(0.0, Feedback(FeedbackKind.WRONG_ANSWER, text, details, "arithmetic"))
        except ValueError:
            given = None
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
