"""Procedural reasoning tasks from ``reasoning-gym`` (``rlrf/ReasoningGym-v0``).

Wraps any ``reasoning-gym`` dataset by name and config (``chain_sum``, ``basic_arithmetic``,
``leg_counting``, ``family_relationships``, ...; see ``reasoning_gym.factory.DATASETS``).
The train and test splits come from two different seeds, so they are disjoint in
practice and identical across processes. Task ids are ``train-00000``, ``test-00017``, ...

Reward: the dataset's own ``score_answer`` (a float in [0, 1], 1.0 for a correct answer)
applied to the content of the response's last ``<answer>...</answer>`` (configurable).

Feedback:

* ``format`` when the response has no ``<answer>...</answer>`` (never the answer);
* ``wrong_answer`` naming the expected answer, only with ``expected_answer_feedback=True``
  (off by default: it gives the answer away, which suits SDPO's teacher but not evaluation);
* otherwise none: rely on the successful-rollout variant for a teacher context.

Needs the ``reasoning-gym`` package (``pip install reasoning-gym``).
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from envs._text import last_tagged
from rlrf.env import Message, Outcome, RLRFEnv, user_prompt
from rlrf.errors import ConfigError
from rlrf.feedback import Feedback, FeedbackKind, TestCaseDetails, truncate_text

__all__ = ["ReasoningGymEnv"]

_INSTALL_HINT = "pip install reasoning-gym"
#: Offset between the train seed and the test seed; any large odd constant keeps them apart.
_TEST_SEED_OFFSET = 1_000_003


class ReasoningGymEnv(RLRFEnv):
    """A ``reasoning-gym`` dataset as an RLRF environment.

    Args:
        dataset: The dataset name, e.g. ``"chain_sum"``.
        config: Extra keyword arguments for ``reasoning_gym.create_dataset`` (the dataset's
            config fields, e.g. ``{"min_terms": 2, "max_terms": 3}``).
        seed: Seed of the train split; the test split uses ``seed + 1_000_003``.
        n_train: Number of train tasks.
        n_test: Number of test tasks.
        answer_tag: The tag around the final answer.
        expected_answer_feedback: Say the expected answer in the feedback of a wrong
            response (gives the answer away; off by default).
        system_prompt: Optional system message.

    Raises:
        ConfigError: ``reasoning-gym`` is missing, or the dataset name or config is invalid.

    """

    def __init__(
        self,
        dataset: str = "chain_sum",
        config: Mapping[str, Any] | None = None,
        *,
        seed: int = 0,
        n_train: int = 1000,
        n_test: int = 200,
        answer_tag: str = "answer",
        expected_answer_feedback: bool = False,
        system_prompt: str | None = None,
    ) -> None:
        if importlib.util.find_spec("reasoning_gym") is None:
            raise ConfigError(
                f"ReasoningGymEnv needs reasoning-gym; install it with `{_INSTALL_HINT}`"
            )
        import reasoning_gym

        if dataset not in reasoning_gym.factory.DATASETS:
            import difflib

            close = difflib.get_close_matches(dataset, list(reasoning_gym.factory.DATASETS), n=3)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise ConfigError(f"reasoning-gym has no dataset {dataset!r}.{hint}")
        if n_train < 1 or n_test < 0:
            raise ConfigError(f"n_train must be >= 1 and n_test >= 0, got {n_train}, {n_test}")
        self.dataset_name = dataset
        self.config = dict(config or {})
        self.answer_tag = answer_tag
        self.expected_answer_feedback = expected_answer_feedback
        self.system_prompt = system_prompt
        self._sizes = {"train": n_train, "test": n_test}
        self._seeds = {"train": seed, "test": seed + _TEST_SEED_OFFSET}
        self._datasets: dict[str, Any] = {}
        self._entries: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._ids = {
            split: [f"{split}-{i:05d}" for i in range(size)] for split, size in self._sizes.items()
        }
        self._dataset("train")  # fail on a bad config now, not at the first reset

    def _dataset(self, split: str) -> Any:
        with self._lock:
            if split not in self._datasets:
                import reasoning_gym

                try:
                    self._datasets[split] = reasoning_gym.create_dataset(
                        self.dataset_name,
                        seed=self._seeds[split],
                        size=max(self._sizes[split], 1),
                        **self.config,
                    )
                except (TypeError, ValueError, AssertionError) as e:
                    raise ConfigError(
                        f"reasoning-gym rejected the config {self.config!r} for dataset "
                        f"{self.dataset_name!r}: {type(e).__name__}: {e}"
                    ) from e
            return self._datasets[split]

    def entry(self, task_id: str) -> dict[str, Any]:
        """Return the ``reasoning-gym`` entry (``question``, ``answer``, ``metadata``)."""
        cached = self._entries.get(task_id)
        if cached is not None:
            return cached
        split, _, index = task_id.rpartition("-")
        # isascii: int() refuses other Unicode digits ("²"); the length check keeps a huge id
        # from int()'s 4,300-digit ValueError
        digits = index.isascii() and index.isdigit() and len(index) <= 12
        if split not in self._sizes or not digits or int(index) >= self._sizes[split]:
            raise KeyError(f"unknown task id {task_id!r}; ids look like 'train-00000'")
        entry = self._dataset(split)[int(index)]
        self._entries[task_id] = entry
        return entry

    def task_ids(self, split: str = "train") -> Sequence[str]:
        """Return the ids of ``split``."""
        return self._ids[split]

    def prompt(self, task_id: str) -> list[Message]:
        """The dataset's question plus the answer-format instruction."""
        tag = self.answer_tag
        content = (
            f"{self.entry(task_id)['question']}\n\nGive only your final answer inside "
            f"<{tag}></{tag}> tags."
        )
        return user_prompt(content, self.system_prompt)

    def gold_answer(self, task_id: str) -> str | None:
        """The dataset's reference answer (``None`` for datasets without one)."""
        answer = self.entry(task_id).get("answer")
        return None if answer is None else str(answer)

    def gold_response(self, task_id: str) -> str | None:
        """The reference answer inside the answer tag, as this env grades it."""
        gold = self.gold_answer(task_id)
        return None if gold is None else f"<{self.answer_tag}>{gold}</{self.answer_tag}>"

    def evaluate(self, task_id: str, response: str, history: Sequence[Message] = ()) -> Outcome:
        """Score the tagged answer with the dataset's ``score_answer``."""
        entry = self.entry(task_id)
        # reasoning_gym.utils.extract_answer's lazy regex is quadratic on unclosed tags
        answer = last_tagged(response, self.answer_tag)
        tag = self.answer_tag
        if answer is None:
            text = f"Your response has no final answer. End it with <{tag}>your answer</{tag}>."
            return Outcome(0.0, Feedback(FeedbackKind.FORMAT, text, source="reasoning-gym"))
        try:
            score = float(self._dataset(task_id.rpartition("-")[0]).score_answer(answer, entry))
        except Exception as e:  # a scorer that chokes on odd text must not lose the step
            text = truncate_text(
                f"Your answer could not be scored ({type(e).__name__}); give just the final "
                f"answer inside <{tag}></{tag}>.",
                self.feedback_max_chars,
            )
            return Outcome(0.0, Feedback(FeedbackKind.FORMAT, text, source="reasoning-gym"))
        score = min(max(score, 0.0), 1.0) if score == score else 0.0  # NaN -> 0
        if score >= 1.0:
            return Outcome(1.0, success=True)
        if self.expected_answer_feedback:
            expected = str(entry.get("answer"))
            text = truncate_text(
                f"Your answer {answer!r} is wrong; the expected answer is {expected!r}.",
                self.feedback_max_chars,
            )
            details = TestCaseDetails(input=task_id, expected=expected, actual=answer[:200])
            return Outcome(
                score, Feedback(FeedbackKind.WRONG_ANSWER, text, details, "reasoning-gym")
            )
        return Outcome(score)
