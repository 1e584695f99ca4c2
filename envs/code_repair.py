r"""Multi-turn code repair, written Gymnasium-style: ``rlrf/CodeRepair-v0``.

The policy writes a program for a programming problem; the env runs it on the tests in a
sandbox; when tests fail, the policy sees the judge's feedback and revises its program in the
same episode, up to ``max_turns`` attempts. A revision is either a whole new program (a
```` ```python ```` block) or SEARCH/REPLACE edits to the program the env holds: a line
``<<<<<<< SEARCH``, the lines to replace, a line ``=======``, the new lines, a line
``>>>>>>> REPLACE`` (the format code assistants use).

Edits are why the env is stateful: the current program (the episode's workspace) lives on the
env instance between turns, not in the chat, so ``evaluate(task_id, response, history)`` could
not grade an edit without replaying every earlier one. The sandbox (a pool of workers, see
:mod:`sandboxes`) stays open between turns and episodes and is shared by every twin of the env
(:meth:`CodeRepairEnv.spawn`); each test run in it starts from a fresh process.

Tasks and grading are those of :class:`envs.code.CodeEnv` (``dataset="shipped"`` by default):
the ``"train"`` split is graded on each problem's public tests, ``"test"`` on all of them. The
seed passed to ``reset`` picks the problem; ``options={"task_id": ...}`` picks one by id
(:meth:`CodeRepairEnv.task_ids` lists them).

Reward: 1.0 on the turn where every graded test passes (the episode then terminates), 0.0 on
every other turn, so an episode's return is 1.0 exactly when it was solved within
``max_turns``. A sandbox failure gives no verdict: the reward is missing
(``info["reward_missing"]``, with the reason in ``info["sandbox_error"]``) and the episode ends.

Feedback (``info["feedback"]``, and as the next user message): the judge feedback of
:class:`~envs.code.CodeEnv` on the current program (runtime error with the failing line and
input, wrong answer with input/output/expected, timeout, memory limit, or a format message),
or FORMAT feedback naming an edit whose SEARCH text is not in the current program (the
program is then unchanged).

>>> import rlrf
>>> env = rlrf.make("rlrf/CodeRepair-v0")
>>> chat, info = env.reset(options={"task_id": "sum-two"})
>>> wrong = "```python\na, b = map(int, input().split())\nprint(a - b)\n```"
>>> first = env.step_result(wrong)
>>> first.reward, first.feedback[0].kind.value, first.done
(0.0, 'wrong_answer', False)
>>> fix = "<<<<<<< SEARCH\nprint(a - b)\n=======\nprint(a + b)\n>>>>>>> REPLACE"
>>> second = env.step_result(fix)
>>> second.reward, second.terminated
(1.0, True)
>>> env.close()
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from envs.code import CodeEnv, extract_code
from rlrf.env import Message, RLRFEnv
from rlrf.errors import ConfigError, EnvError
from rlrf.feedback import Feedback, FeedbackKind, render_feedback

__all__ = ["CodeRepairEnv", "apply_edits"]

_EDIT_RE = re.compile(
    r"^<<<<<<< SEARCH[ \t]*\n(.*?)^=======[ \t]*\n(.*?)^>>>>>>> REPLACE[ \t]*$", re.S | re.M
)

_HOW_TO_REVISE = (
    "You have {turns} attempts. After a failing attempt you will see what went wrong; then "
    "reply with the whole corrected program in a ```python block, or with edits to your "
    "current program, each written as\n<<<<<<< SEARCH\nlines to replace\n=======\nnew "
    "lines\n>>>>>>> REPLACE"
)


def apply_edits(program: str, response: str) -> tuple[str, int] | str | None:
    r"""Apply the SEARCH/REPLACE edits of ``response`` to ``program``, in order.

    Returns ``(new_program, n_edits)``; ``None`` when the response holds no edit; or an
    error message (a ``str``) naming the first edit whose SEARCH text is not in the program.
    Each edit replaces the first occurrence of its SEARCH text.

    >>> edit = "<<<<<<< SEARCH\nx = 1\n=======\nx = 2\n>>>>>>> REPLACE"
    >>> apply_edits("x = 1\nprint(x)", edit)
    ('x = 2\nprint(x)', 1)
    """
    edits = _EDIT_RE.findall(response)
    if not edits:
        return None
    for k, (search, replace) in enumerate(edits, start=1):
        # the newline before "=======" / ">>>>>>> REPLACE" ends the block, not the text
        search, replace = search.removesuffix("\n"), replace.removesuffix("\n")
        if not search.strip() or search not in program:
            return (
                f"Edit {k} of {len(edits)} was not applied: its SEARCH text does not appear in "
                "your current program (copy the lines exactly, including indentation). "
                "Your program is unchanged."
            )
        program = program.replace(search, replace, 1)
    return program, len(edits)


class CodeRepairEnv(RLRFEnv):
    """Write, test and revise a program in one episode (see the module docstring).

    Args:
        dataset: As for :class:`envs.code.CodeEnv` (``"shipped"``, ``"humaneval"``, a
            LiveCodeBench JSONL path, or a list of tasks).
        max_turns: Attempts per episode.
        grader: A :class:`~envs.code.CodeEnv` to grade with (shared, not closed by this env);
            by default one is built from ``dataset`` and ``code_kwargs`` and owned.
        **code_kwargs: Passed to :class:`~envs.code.CodeEnv` (``difficulty``, ``limit``,
            ``sandbox``, ``time_limit_s``, ``feedback_max_chars``, ...).

    """

    max_turns = 3
    splits = ("train", "test")

    def __init__(
        self,
        dataset: Any = "shipped",
        *,
        max_turns: int = 3,
        grader: CodeEnv | None = None,
        **code_kwargs: Any,
    ) -> None:
        if not isinstance(max_turns, int) or max_turns < 1:
            raise ConfigError(f"CodeRepairEnv: max_turns must be an int >= 1, got {max_turns!r}")
        self.max_turns = max_turns
        self._owns_grader = grader is None
        self.grader = grader if grader is not None else CodeEnv(dataset, **code_kwargs)
        self.feedback_max_chars = self.grader.feedback_max_chars
        self._task_id: str | None = None
        self.program: str | None = None
        self.turn = 0
        self.chat: list[Message] = []

    # ---- Gymnasium API: the episode's state lives here ---------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[list[Message], dict[str, Any]]:
        """Start an episode on the problem the seed picks (or ``options["task_id"]``)."""
        super().reset(seed=seed)  # seeds self.np_random only
        options = dict(options or {})
        split = options.pop("split", "train")
        task_id = options.pop("task_id", None)
        if options:
            raise EnvError(
                f"{self.env_id}.reset: unknown option(s) {sorted(options)}; "
                "supported: 'task_id', 'split'"
            )
        if task_id is None:
            ids = self.grader.task_ids(split)
            task_id = ids[int(self.np_random.integers(len(ids)))]
        self.grader.task(task_id)  # an unknown id fails here, naming close ones
        self._task_id, self.program, self.turn = str(task_id), None, 0
        self.chat = [dict(m) for m in self.grader.prompt(self._task_id)]  # type: ignore[misc]
        how = _HOW_TO_REVISE.format(turns=self.max_turns)
        self.chat[-1]["content"] = f"{self.chat[-1]['content']}\n\n{how}"
        return list(self.chat), {"task_id": self._task_id, "split": split, "turn": 0}

    def step(self, action: str) -> tuple[list[Message], float, bool, bool, dict[str, Any]]:
        """Apply the response (a program or edits), run the tests, say what failed."""
        if self._task_id is None:
            raise EnvError(f"{self.env_id}: call reset() before step()")
        self.turn += 1
        self.chat.append({"role": "assistant", "content": action})
        info: dict[str, Any] = {"task_id": self._task_id, "turn": self.turn, "edits": 0}
        edited = apply_edits(self.program, action) if self.program is not None else None
        if isinstance(edited, str):
            return self._end_turn(0.0, Feedback(FeedbackKind.FORMAT, edited, source="code"), info)
        if edited is not None:
            self.program, info["edits"] = edited
            submitted = f"```python\n{self.program}\n```"
        else:
            submitted = action
            found = extract_code(action, self.grader.code_block)
            if found.code is not None:
                self.program = found.code
        outcome = self.grader.evaluate(self._task_id, submitted)
        info.update(outcome.info)
        if outcome.reward is None:
            info["reward_missing"] = True
            return self._end_turn(0.0, outcome.feedback_items, info, done=True)
        if outcome.solved:
            info["success"] = True
            return (
                list(self.chat),
                float(outcome.reward),
                True,
                False,
                {
                    **info,
                    "feedback": outcome.feedback_items,
                },
            )
        shown = "" if edited is None else f"\n\nYour program now:\n```python\n{self.program}\n```"
        return self._end_turn(float(outcome.reward), outcome.feedback_items, info, shown=shown)

    def _end_turn(
        self,
        reward: float,
        feedback: Feedback | Sequence[Feedback],
        info: dict[str, Any],
        *,
        done: bool = False,
        shown: str = "",
    ) -> tuple[list[Message], float, bool, bool, dict[str, Any]]:
        items = (feedback,) if isinstance(feedback, Feedback) else tuple(feedback)
        truncated = not done and self.turn >= self.max_turns
        if not done and not truncated:
            text = render_feedback(items, self.feedback_max_chars) or "Some tests failed."
            self.chat.append({"role": "user", "content": f"{text}{shown}\n\nRevise your program."})
        info = {**info, "feedback": items, "success": False}
        return list(self.chat), reward, done, truncated, info

    # ---- the rest of the contract -------------------------------------------------------------

    def task_ids(self, split: str = "train") -> Sequence[str]:
        """The problems of ``split``, for ``reset(options={"task_id": ...})``.

        Listing them does not make this a task-style env: it has no ``evaluate``; it lets a
        trainer draw task ids (or seeds) and evaluate on the whole ``"test"`` split.
        """
        return self.grader.task_ids(split)

    def gold_answer(self, task_id: str) -> str | None:
        """The reference solution of the problem, when the dataset has one."""
        return self.grader.gold_answer(task_id)

    def gold_response(self, task_id: str) -> str | None:
        """The reference solution in a ```` ```python ```` block, as a first attempt."""
        gold = self.gold_answer(task_id)
        return None if gold is None else f"```python\n{gold}\n```"

    def spawn(self) -> CodeRepairEnv:
        """A twin for another rollout: its own episode state, this env's grader and sandbox."""
        twin = CodeRepairEnv(max_turns=self.max_turns, grader=self.grader)
        twin._rlrf_id = self._rlrf_id
        return twin

    def close(self) -> None:
        """Close the grader (and its sandbox) if this env built it."""
        if self._owns_grader:
            self.grader.close()
        super().close()
