"""Multiple-choice science questions (``rlrf/MCQ-v0``), the paper's science QA setting.

Each task is a question with labelled options (A, B, C, ...). The response ends with its
choice inside ``<answer>X</answer>`` (the tag name, or a whole regular expression, is
configurable); the last match counts.

Reward: 1.0 when the chosen label is the correct one, else 0.0.

Feedback:

* none for a wrong answer by default: in this setting the successful-rollout variant supplies
  the teacher's context (a correct sibling attempt), as in the paper;
* ``wrong_answer`` with the item's explanation when the data has one and
  ``explanation_feedback`` is on (the default; turn it off for a pure reward signal);
* ``format`` when the response holds no recognizable choice (it names the expected format
  and the valid labels, never the answer). Turn it off with ``format_feedback=False``.

Data: :func:`load_mcq_jsonl` reads JSONL in the SciKnowEval style (``question``,
``choices: {"text": [...], "label": [...]}``, ``answerKey``) and also accepts ``options``
(a list or a label -> text mapping) with ``answer`` (a label, a 0-based index, or the option
text). A small hand-written set of 32 school-level questions ships in
``envs/data/science/sample.jsonl`` (26 train, 6 test).

A Hugging Face dataset (:func:`load_mcq_dataset`, or ``dataset=`` in the env kwargs: a hub
id, a ``save_to_disk`` folder, a Parquet or JSONL file; see :mod:`envs.hf_data`) is read
through a column mapping. Built in: ``"sciknoweval"`` (the default; ``hicai-zju/SciKnowEval``
as published: ``question``, ``choices``, ``answerKey``, ``domain``, ``details.level``,
``type``; only its multiple-choice types are kept) and ``"mcq"`` (this module's JSONL
fields). The paper's science QA setting is one SciKnowEval domain at level L3 with a random
10% held out (``domains=["Chemistry"], levels=["L3"], test_fraction=0.1``). A row that cannot
be graded (no options, an answer that is not an option) is skipped and counted
(:attr:`MultipleChoiceEnv.skipped`) with a warning; a repeated question is skipped too.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envs._jsonl import hash_split, jsonl_records
from envs.hf_data import ColumnMap, DatasetSource, SkipCounter, load_rows, resolve_columns
from rlrf.env import Message, Outcome, RLRFEnv, user_prompt
from rlrf.errors import ConfigError, RLRFWarning
from rlrf.feedback import Feedback, FeedbackKind, TestCaseDetails, truncate_text

__all__ = [
    "MCQ_COLUMNS",
    "SAMPLE_PATH",
    "MCQItem",
    "MultipleChoiceEnv",
    "load_mcq_dataset",
    "load_mcq_jsonl",
]

#: The shipped sample set.
SAMPLE_PATH = Path(__file__).parent / "data" / "science" / "sample.jsonl"

_LABELS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass(frozen=True)
class MCQItem:
    """One multiple-choice question.

    Attributes:
        id: Unique task id.
        question: The question text.
        labels: The option labels, e.g. ``("A", "B", "C", "D")``.
        options: The option texts, aligned with ``labels``.
        answer: The correct label.
        explanation: Why the answer is right, if the data has it.
        split: ``"train"`` or ``"test"``.
        domain: Subject area, informational.

    """

    id: str
    question: str
    labels: tuple[str, ...]
    options: tuple[str, ...]
    answer: str
    explanation: str | None = None
    split: str = "train"
    domain: str = ""


def _parse_record(rec: Mapping[str, Any], where: str, test_fraction: float) -> MCQItem:
    if not isinstance(rec.get("question"), str) or not rec["question"].strip():
        raise ConfigError(f"{where}: missing or empty 'question'")
    choices = rec.get("choices", rec.get("options"))
    if isinstance(choices, Mapping) and "text" in choices:
        texts = [str(t) for t in choices["text"]]
        labels = [str(lb) for lb in choices.get("label", _LABELS[: len(texts)])]
    elif isinstance(choices, Mapping):
        labels, texts = [str(k) for k in choices], [str(v) for v in choices.values()]
    elif isinstance(choices, Sequence) and not isinstance(choices, str):
        texts = [str(t) for t in choices]
        labels = list(_LABELS[: len(texts)])
    else:
        raise ConfigError(
            f"{where}: needs 'choices' ({{'text': [...], 'label': [...]}}) or 'options' "
            "(a list or a label -> text mapping)"
        )
    if len(texts) < 2 or len(labels) != len(texts) or len(set(labels)) != len(labels):
        raise ConfigError(
            f"{where}: needs at least 2 options with as many distinct labels, got labels "
            f"{labels} for {len(texts)} options"
        )
    raw = rec.get("answerKey", rec.get("answer"))
    if isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw < len(labels):
        answer = labels[raw]
    elif isinstance(raw, str) and raw.strip() in labels:
        answer = raw.strip()
    elif isinstance(raw, str) and raw.strip() in texts:
        answer = labels[texts.index(raw.strip())]
    else:
        raise ConfigError(
            f"{where}: 'answerKey'/'answer' {raw!r} is neither one of the labels {labels}, "
            "a 0-based index, nor the text of an option"
        )
    item_id = (
        str(rec.get("id", ""))
        or "mcq-" + hashlib.sha256(rec["question"].encode("utf-8")).hexdigest()[:12]
    )
    split = rec.get("split") or hash_split(item_id, test_fraction)
    explanation = rec.get("explanation") or rec.get("rationale")
    return MCQItem(
        id=item_id,
        question=rec["question"].strip(),
        labels=tuple(labels),
        options=tuple(texts),
        answer=answer,
        explanation=str(explanation) if explanation else None,
        split=str(split),
        domain=str(rec.get("domain", "")),
    )


def load_mcq_jsonl(
    path: str | os.PathLike[str] = SAMPLE_PATH, *, test_fraction: float = 0.2
) -> list[MCQItem]:
    """Load multiple-choice items from a JSONL file.

    Args:
        path: The file; one JSON object per line (blank lines are skipped).
        test_fraction: For records without a ``split`` field, the share assigned to
            ``"test"`` by a stable hash of the id.

    Raises:
        ConfigError: A line is not JSON, lacks a field, or ids repeat (the message names
            the file and line).

    """
    items: list[MCQItem] = []
    seen: set[str] = set()
    for where, rec in jsonl_records(path, "MCQ data file"):
        item = _parse_record(rec, where, test_fraction)
        if item.id in seen:
            raise ConfigError(f"{where}: duplicate id {item.id!r}; ids must be unique")
        seen.add(item.id)
        items.append(item)
    return items


#: The built-in column mappings of :func:`load_mcq_dataset` (field -> column).
MCQ_COLUMNS: dict[str, ColumnMap] = {
    "sciknoweval": ColumnMap(
        "sciknoweval",
        {
            "question": "question",
            "choices": "choices",
            "answer": "answerKey",
            "domain": "domain",
            "level": "details.level",
            "type": "type",
            "id": "id",
            "explanation": "explanation",
            "split": "split",
        },
        frozenset({"question", "choices", "answer"}),
    ),
    "mcq": ColumnMap(
        "mcq",
        {
            "question": "question",
            "choices": "choices",
            "answer": "answer",
            "domain": "domain",
            "level": "level",
            "type": "type",
            "id": "id",
            "explanation": "explanation",
            "split": "split",
        },
        frozenset({"question", "choices", "answer"}),
    ),
}

#: SciKnowEval's multiple-choice question types (its other types are free-form).
SCIKNOWEVAL_MCQ_TYPES = ("mcq-4-choices", "mcq-2-choices")


class MCQDataWarning(RLRFWarning):
    """Rows of a multiple-choice dataset were skipped; the message counts them by reason."""


def _wanted(value: Any, allowed: Sequence[str] | None) -> bool:
    if allowed is None:
        return True
    return str(value or "").casefold() in {str(a).casefold() for a in allowed}


def load_mcq_dataset(
    source: DatasetSource | str,
    *,
    columns: str | Mapping[str, str] | None = None,
    domains: Sequence[str] | None = None,
    levels: Sequence[str] | None = None,
    types: Sequence[str] | None = None,
    limit: int | None = None,
    test_fraction: float = 0.2,
    skipped: SkipCounter | None = None,
) -> list[MCQItem]:
    """Load multiple-choice items from a Hugging Face dataset (see :mod:`envs.hf_data`).

    Args:
        source: The dataset (a :class:`DatasetSource` or a hub id / path).
        columns: A built-in mapping name (:data:`MCQ_COLUMNS`: ``"sciknoweval"``, the default,
            or ``"mcq"``) or ``{field: column}`` overrides of the default one.
        domains: Keep rows whose ``domain`` is one of these (case-insensitive).
        levels: Keep rows whose ``level`` is one of these (SciKnowEval: ``"L1"``..``"L5"``).
        types: Keep rows whose ``type`` is one of these; with the ``"sciknoweval"`` mapping
            the default keeps its multiple-choice types only.
        limit: Keep the first ``limit`` items (after filtering).
        test_fraction: For rows without a split, the share held out as ``"test"`` (by a
            stable hash of the id).
        skipped: Counts the rows left out (a warning says how many either way).

    Raises:
        DatasetColumnsError: the dataset lacks a required column (the message lists the
            columns found and the mapping expected).

    """
    if isinstance(source, str):
        source = DatasetSource(source)
    mapping = resolve_columns(columns, MCQ_COLUMNS, "sciknoweval")
    if types is None and mapping.name == "sciknoweval":
        types = SCIKNOWEVAL_MCQ_TYPES
    rows, found = load_rows(source, default_split="test", keep_splits=True)
    mapping.check(found, source)
    if "type" not in found:
        types = None  # a dataset without the column: nothing to filter on
    skipped = skipped if skipped is not None else SkipCounter()
    items: list[MCQItem] = []
    seen: set[str] = set()
    for i, row in enumerate(rows):
        rec = mapping.apply(row)
        if not (
            _wanted(rec["domain"], domains)
            and _wanted(rec["level"], levels)
            and _wanted(rec["type"], types)
        ):
            continue
        where = f"row {i}"
        if rec["id"] in (None, ""):
            key = repr((rec["question"], rec["choices"]))
            rec["id"] = "mcq-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]
        rec["answerKey"] = rec.pop("answer")
        rec = {k: v for k, v in rec.items() if v is not None}
        try:
            item = _parse_record(rec, where, test_fraction)
        except ConfigError:
            skipped.add("ungradable", where)
            continue
        if item.id in seen:
            skipped.add("duplicate", where)
            continue
        seen.add(item.id)
        items.append(item)
        if limit is not None and len(items) >= limit:
            break
    if skipped.total:
        warnings.warn(
            f"dataset {source.describe()}: skipped {skipped.summary()}",
            MCQDataWarning,
            stacklevel=2,
        )
    if not items:
        raise ConfigError(
            f"dataset {source.describe()} holds no usable multiple-choice item after the "
            f"filters (domains={domains}, levels={levels}, types={types}); check them"
        )
    return items


class MultipleChoiceEnv(RLRFEnv):
    """Multiple-choice questions rewarded 1/0 on the chosen label.

    Args:
        data: A JSONL path (see :func:`load_mcq_jsonl`) or ready :class:`MCQItem` objects;
            default: the shipped sample set.
        answer_tag: The tag around the choice: ``<answer_tag>X</answer_tag>``.
        answer_regex: A regular expression whose first group captures the label; overrides
            ``answer_tag``. Matched case-insensitively; the last match counts.
        explanation_feedback: Give the item's explanation as ``wrong_answer`` feedback.
        format_feedback: Give ``format`` feedback when no choice can be read.
        system_prompt: Optional system message.
        test_fraction: Passed to the loader for records without a ``split``.
        dataset: A Hugging Face dataset instead of ``data``: a hub id, a ``save_to_disk``
            folder, or a Parquet/JSONL file (see :func:`load_mcq_dataset`).
        dataset_config: The hub config (subset) of ``dataset``.
        dataset_split: The split of ``dataset`` to read (default ``"test"``, SciKnowEval's
            only split; the env then holds out ``test_fraction`` of it itself).
        dataset_revision: The hub revision of ``dataset``.
        columns: The column mapping: a built-in name or ``{field: column}`` overrides.
        domains: Keep these domains of ``dataset`` (e.g. ``["Chemistry"]``).
        levels: Keep these levels of ``dataset`` (e.g. ``["L3"]``).
        types: Keep these question types of ``dataset``.
        limit: Keep the first ``limit`` items of ``dataset``.

    """

    def __init__(
        self,
        data: str | os.PathLike[str] | Iterable[MCQItem] | None = None,
        *,
        answer_tag: str = "answer",
        answer_regex: str | None = None,
        explanation_feedback: bool = True,
        format_feedback: bool = True,
        system_prompt: str | None = None,
        test_fraction: float = 0.2,
        dataset: str | None = None,
        dataset_config: str | None = None,
        dataset_split: str | None = None,
        dataset_revision: str | None = None,
        columns: str | Mapping[str, str] | None = None,
        domains: Sequence[str] | None = None,
        levels: Sequence[str] | None = None,
        types: Sequence[str] | None = None,
        limit: int | None = None,
    ) -> None:
        #: Rows of ``dataset`` left out, by reason.
        self.skipped = SkipCounter()
        if dataset is not None:
            if data is not None:
                raise ConfigError("MultipleChoiceEnv: pass data or dataset, not both")
            source = DatasetSource(dataset, dataset_config, dataset_split, dataset_revision)
            items = load_mcq_dataset(
                source,
                columns=columns,
                domains=domains,
                levels=levels,
                types=types,
                limit=limit,
                test_fraction=test_fraction,
                skipped=self.skipped,
            )
        elif data is None or isinstance(data, (str, os.PathLike)):
            items = load_mcq_jsonl(data or SAMPLE_PATH, test_fraction=test_fraction)
        else:
            items = list(data)
        if not items:
            raise ConfigError("MultipleChoiceEnv needs at least one item")
        if not re.fullmatch(r"[A-Za-z_][\w\-]*", answer_tag):
            raise ConfigError(f"answer_tag {answer_tag!r} must be a plain tag name like 'answer'")
        self._items = {it.id: it for it in items}
        if len(self._items) != len(items):
            raise ConfigError("MultipleChoiceEnv: item ids must be unique")
        self._ids: dict[str, list[str]] = {}
        for it in items:
            self._ids.setdefault(it.split, []).append(it.id)
        self.splits = tuple(sorted(self._ids, key=lambda s: (s != "train", s)))
        self.answer_tag = answer_tag
        pattern = answer_regex or rf"<{answer_tag}>\s*\(?([A-Za-z])\)?\s*</{answer_tag}>"
        try:
            self._answer_re = re.compile(pattern, re.IGNORECASE | re.DOTALL)
        except re.error as e:
            raise ConfigError(f"answer_regex {pattern!r} is not a valid regex: {e}") from e
        if self._answer_re.groups < 1:
            raise ConfigError(f"answer_regex {pattern!r} needs a capture group for the label")
        self.explanation_feedback = explanation_feedback
        self.format_feedback = format_feedback
        self.system_prompt = system_prompt

    def item(self, task_id: str) -> MCQItem:
        """Return the :class:`MCQItem` of ``task_id``."""
        try:
            return self._items[task_id]
        except KeyError:
            raise KeyError(f"unknown MCQ task id {task_id!r}") from None

    def task_ids(self, split: str = "train") -> Sequence[str]:
        """Return the ids of ``split`` (empty for a split the data does not have)."""
        return self._ids.get(split, [])

    def prompt(self, task_id: str) -> list[Message]:
        """The question, the labelled options, and the answer format."""
        it = self.item(task_id)
        options = "\n".join(
            f"{lb}. {text}" for lb, text in zip(it.labels, it.options, strict=False)
        )
        tag = self.answer_tag
        content = (
            f"{it.question}\n\n{options}\n\nThink briefly, then give the letter of the correct "
            f"option as <{tag}>LETTER</{tag}>."
        )
        return user_prompt(content, self.system_prompt)

    def gold_answer(self, task_id: str) -> str:
        """A correct response: the right label inside the answer tag."""
        return f"<{self.answer_tag}>{self.item(task_id).answer}</{self.answer_tag}>"

    def extract_choice(self, response: str) -> str | None:
        """Return the upper-cased label of the response's last choice, or ``None``."""
        found = self._answer_re.findall(response)
        if not found:
            return None
        last = found[-1]
        last = last[0] if isinstance(last, tuple) else last
        return last.strip().upper() or None

    def evaluate(self, task_id: str, response: str, history: Sequence[Message] = ()) -> Outcome:
        """Reward 1 for the correct label; see the module docstring for the feedback."""
        it = self.item(task_id)
        choice = self.extract_choice(response)
        valid = {lb.upper() for lb in it.labels}
        if choice is None or choice not in valid:
            if not self.format_feedback:
                return Outcome(0.0)
            tag = self.answer_tag
            got = "no choice" if choice is None else f"the label {choice!r}, which is not an option"
            text = (
                f"Your response contains {got}. End it with the letter of one option "
                f"({', '.join(it.labels)}) as <{tag}>LETTER</{tag}>."
            )
            return Outcome(0.0, Feedback(FeedbackKind.FORMAT, text, source="mcq"))
        if choice == it.answer.upper():
            return Outcome(1.0, success=True)
        if self.explanation_feedback and it.explanation:
            text = truncate_text(
                f"Your choice {choice} is wrong. {it.explanation}", self.feedback_max_chars
            )
            details = TestCaseDetails(input=it.id, actual=choice)
            return Outcome(0.0, Feedback(FeedbackKind.WRONG_ANSWER, text, details, "mcq"))
        return Outcome(0.0)
