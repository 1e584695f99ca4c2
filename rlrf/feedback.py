r"""Typed feedback: what an environment says about a response besides its reward.

A :class:`Feedback` has a :class:`FeedbackKind` from a closed set, the ``text`` the policy is
shown, optional structured ``details`` typed per kind (a failing test case, a runtime error, a
schema violation, a judge's score) and a ``source`` naming what produced it.

>>> fb = Feedback(FeedbackKind.WRONG_ANSWER, "Input 2 3: expected 5, got 6",
...               TestCaseDetails(input="2 3", expected="5", actual="6"), source="tests")
>>> render_feedback([fb, Feedback(FeedbackKind.FORMAT, "Put the code in a block.")])
'Input 2 3: expected 5, got 6\n\nPut the code in a block.'
>>> render_feedback(Feedback(FeedbackKind.OTHER, "x" * 50), max_chars=40)
'xxxxxxxxxx\n[... truncated 40 characters]'
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Protocol

from rlrf.errors import TrajectoryFormatError

__all__ = [
    "Details",
    "ErrorDetails",
    "Feedback",
    "FeedbackKind",
    "JudgeDetails",
    "SchemaViolation",
    "TestCaseDetails",
    "ToolCallDetails",
    "as_feedback_tuple",
    "render_feedback",
    "tokenize_feedback",
    "truncate_text",
]


class FeedbackKind(str, enum.Enum):
    """The closed set of feedback kinds. The value is the stable serialized name."""

    RUNTIME_ERROR = "runtime_error"
    WRONG_ANSWER = "wrong_answer"
    TIMEOUT = "timeout"
    MEMORY_LIMIT = "memory_limit"
    FORMAT = "format"
    TOOL_VALIDATION = "tool_validation"
    TOOL_ERROR = "tool_error"
    JUDGE_CRITIQUE = "judge_critique"
    DEMONSTRATION = "demonstration"
    OTHER = "other"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class TestCaseDetails:
    """One test case: for ``wrong_answer``, ``timeout`` and ``memory_limit`` feedback."""

    __test__ = False  # not a pytest test class despite the name

    input: str
    expected: str | None = None
    actual: str | None = None


@dataclass(frozen=True)
class ErrorDetails:
    """A runtime error of the submitted program: for ``runtime_error`` feedback."""

    error_type: str
    message: str
    line: int | None = None
    line_text: str | None = None
    last_input: str | None = None


@dataclass(frozen=True)
class SchemaViolation:
    """One JSON Schema violation: where (a JSON pointer) and what the validator said."""

    pointer: str
    message: str
    validator: str = ""


@dataclass(frozen=True)
class ToolCallDetails:
    """A tool call that failed validation or execution: ``tool_validation`` / ``tool_error``."""

    function: str | None = None
    violations: tuple[SchemaViolation, ...] = ()

    def __post_init__(self) -> None:
        # Accept lists from callers and from JSON, keep the dataclass hashable.
        object.__setattr__(self, "violations", tuple(self.violations))


@dataclass(frozen=True)
class JudgeDetails:
    """A judge's verdict: for ``judge_critique`` feedback."""

    score: float
    max_score: float = 1.0
    model: str = ""


Details = TestCaseDetails | ErrorDetails | ToolCallDetails | JudgeDetails
_DETAIL_TYPES: dict[str, type] = {
    "test_case": TestCaseDetails,
    "error": ErrorDetails,
    "tool_call": ToolCallDetails,
    "judge": JudgeDetails,
}
_DETAIL_TAGS = {cls: tag for tag, cls in _DETAIL_TYPES.items()}


@dataclass(frozen=True)
class Feedback:
    """One piece of feedback on a response.

    Attributes:
        kind: What sort of feedback this is (a closed set, see :class:`FeedbackKind`).
        text: What the policy (or the self-teacher) is shown.
        details: Structured data typed per kind, for analysis and tests; never shown as is.
        source: What produced it, e.g. ``"code/public-tests"`` or ``"judge:qwen"``.

    """

    kind: FeedbackKind
    text: str
    details: Details | None = None
    source: str = ""

    def __post_init__(self) -> None:
        try:
            kind = FeedbackKind(self.kind)
        except ValueError:
            valid = ", ".join(k.value for k in FeedbackKind)
            raise ValueError(
                f"Feedback kind {self.kind!r} is not one of: {valid}. "
                "Use FeedbackKind.OTHER for anything else."
            ) from None
        object.__setattr__(self, "kind", kind)
        if not isinstance(self.text, str):
            raise TypeError(f"Feedback.text must be a str, got {type(self.text).__name__}")
        if self.details is not None and type(self.details) not in _DETAIL_TAGS:
            allowed = ", ".join(t.__name__ for t in _DETAIL_TAGS)
            raise TypeError(
                f"Feedback.details must be one of {allowed} or None, "
                f"got {type(self.details).__name__}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serializable dict (the trajectory format's representation)."""
        out: dict[str, Any] = {"kind": self.kind.value, "text": self.text, "source": self.source}
        if self.details is not None:
            payload = {f.name: getattr(self.details, f.name) for f in fields(self.details)}
            if isinstance(self.details, ToolCallDetails):
                payload["violations"] = [
                    {"pointer": v.pointer, "message": v.message, "validator": v.validator}
                    for v in self.details.violations
                ]
            out["details"] = {"type": _DETAIL_TAGS[type(self.details)], **payload}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Feedback:
        """Inverse of :meth:`to_dict`."""
        try:
            details = None
            raw = data.get("details")
            if raw is not None:
                raw = dict(raw)
                dtype = _DETAIL_TYPES[raw.pop("type")]
                if dtype is ToolCallDetails:
                    raw["violations"] = tuple(SchemaViolation(**v) for v in raw["violations"])
                details = dtype(**raw)
            return cls(FeedbackKind(data["kind"]), data["text"], details, data.get("source", ""))
        except (KeyError, TypeError, ValueError) as e:
            raise TrajectoryFormatError(f"Malformed feedback record {data!r}: {e}") from e


def as_feedback_tuple(feedback: Feedback | Sequence[Feedback] | None) -> tuple[Feedback, ...]:
    """Normalize ``None``, one :class:`Feedback` or a sequence of them to a tuple."""
    if feedback is None:
        return ()
    if isinstance(feedback, Feedback):
        return (feedback,)
    items = tuple(feedback)
    for item in items:
        if not isinstance(item, Feedback):
            raise TypeError(
                f"Expected Feedback items, got {type(item).__name__}: wrap plain text as "
                "Feedback(FeedbackKind.OTHER, text)"
            )
    return items


def truncate_text(text: str, max_chars: int | None, *, max_bytes: int | None = None) -> str:
    """Cap ``text`` at ``max_chars`` characters (and/or ``max_bytes`` UTF-8 bytes), visibly.

    The result, marker included, fits both caps. Cuts fall on character boundaries, so a
    multi-byte UTF-8 sequence is never split, and a surrogate pair is never separated.
    """
    if (max_chars is not None and max_chars < 0) or (max_bytes is not None and max_bytes < 0):
        raise ValueError("max_chars and max_bytes must be >= 0 (or None for no cap)")
    fits_chars = max_chars is None or len(text) <= max_chars
    fits_bytes = max_bytes is None or len(text.encode("utf-8", "surrogatepass")) <= max_bytes
    if fits_chars and fits_bytes:
        return text
    budget_c = len(text) if max_chars is None else max_chars
    budget_b = None if max_bytes is None else max_bytes
    keep = min(len(text), budget_c)
    # Shrink until text[:keep] plus its marker fits both caps; the marker names how much went.
    while keep >= 0:
        marker = f"\n[... truncated {len(text) - keep} characters]"
        head = text[:keep]
        if keep and "\ud800" <= head[-1] <= "\udbff":  # do not strand a high surrogate
            keep -= 1
            continue
        size_ok = len(head) + len(marker) <= budget_c
        if budget_b is not None:
            size_ok = size_ok and len((head + marker).encode("utf-8", "surrogatepass")) <= budget_b
        if size_ok:
            return head + marker
        over = len(head) + len(marker) - budget_c
        keep -= max(1, over)
    # The caps are smaller than the marker itself: return as much of the text as fits.
    head = text[: budget_c if budget_c >= 0 else 0]
    if budget_b is not None:
        head = head.encode("utf-8")[:budget_b].decode("utf-8", "ignore")
    return head


def render_feedback(
    feedback: Feedback | Sequence[Feedback] | None, max_chars: int | None = 2000
) -> str:
    """Join feedback items' text into one string (blank line between), capped at ``max_chars``.

    Returns ``""`` for ``None`` or no items. Items with empty text are skipped. When the cap
    cuts, the text ends with ``[... truncated N characters]`` so the reader knows.
    """
    parts = [f.text for f in as_feedback_tuple(feedback) if f.text]
    return truncate_text("\n\n".join(parts), max_chars)


class _Tokenizer(Protocol):
    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...


def tokenize_feedback(
    feedback: Feedback | Sequence[Feedback] | None,
    tokenizer: _Tokenizer,
    max_tokens: int | None = None,
    *,
    max_chars: int | None = 2000,
) -> list[int]:
    """Render feedback (see :func:`render_feedback`) and tokenize it without special tokens.

    ``max_tokens`` keeps the first tokens; any Hugging Face tokenizer (or an object with a
    compatible ``encode``) works.
    """
    ids = list(tokenizer.encode(render_feedback(feedback, max_chars), add_special_tokens=False))
    return ids if max_tokens is None else ids[:max_tokens]
