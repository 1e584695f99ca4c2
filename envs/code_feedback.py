"""Judge-style feedback for :mod:`envs.code`: per-test verdicts and the text the policy sees.

The text follows the reference code environment of the SDPO paper: the first runtime error,
time or memory limit (in test order) with the error type and message, the failing line of the
submitted code and the last executed input; otherwise up to the two shortest wrong answers
(input, output, expected). Every field is capped, and the whole text is capped at
``max_chars`` with a visible marker.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass

from envs.code_data import CodeTest
from rlrf.feedback import ErrorDetails, Feedback, FeedbackKind, TestCaseDetails, truncate_text

__all__ = [
    "Program",
    "TestResult",
    "Verdict",
    "code_feedback",
    "parse_traceback",
]

_SOURCE = "code"
_FILE_LINE_RE = re.compile(r'^\s*File "solution\.py", line (\d+)')
_EXC_RE = re.compile(r"^([A-Za-z_][\w.]*)(?::\s?(.*))?$")


class Verdict(str, enum.Enum):
    """What happened on one test."""

    PASSED = "passed"
    WRONG_ANSWER = "wrong_answer"
    RUNTIME_ERROR = "runtime_error"
    TIMEOUT = "timeout"
    MEMORY_LIMIT = "memory_limit"
    OUTPUT_LIMIT = "output_limit"
    SKIPPED = "skipped"
    """Not run: an earlier test already failed with an error or a limit."""
    SANDBOX_ERROR = "sandbox_error"
    """The sandbox itself failed: no verdict on the program."""


#: Verdicts that end grading of a response early and take precedence in the feedback.
HARD_FAILURES = frozenset(
    {Verdict.RUNTIME_ERROR, Verdict.TIMEOUT, Verdict.MEMORY_LIMIT, Verdict.OUTPUT_LIMIT}
)


@dataclass(frozen=True)
class Program:
    """A program as run in the sandbox, and where the response's code sits inside it.

    Attributes:
        source: The full program text.
        user_start: Number of program lines before the response's code.
        user_lines: Number of lines of the response's code.
        test_start: First program line (1-based) of the test code, for ``check`` tests.
        test_lines: Number of lines of the test code.

    """

    source: str
    user_start: int = 0
    user_lines: int = 0
    test_start: int = 0
    test_lines: int = 0

    def locate(self, line: int) -> tuple[str, int, str] | None:
        """Map a program line to ``("code" | "test", line within that part, its text)``."""
        lines = self.source.splitlines()
        if not 1 <= line <= len(lines):
            return None
        text = lines[line - 1].strip()
        if self.user_start < line <= self.user_start + self.user_lines:
            return "code", line - self.user_start, text
        if self.test_lines and self.test_start <= line < self.test_start + self.test_lines:
            return "test", line - self.test_start + 1, text
        return None


@dataclass(frozen=True)
class TestResult:
    """The verdict on one test, with what is needed to explain it."""

    __test__ = False  # not a pytest test class despite the name

    index: int
    test: CodeTest
    verdict: Verdict
    actual: str | None = None
    error: ErrorDetails | None = None
    in_test_code: bool = False
    """The error was raised by the test's own code (a failed HumanEval assertion)."""
    message: str = ""


def parse_traceback(stderr: str) -> tuple[str, str, tuple[int, ...]]:
    """Return ``(error type, message, program lines)`` from a Python traceback on stderr.

    The lines are those of the ``solution.py`` frames, outermost first (the last one is where
    the error was raised). When stderr holds no exception line, the type is ``""`` and the
    message is stderr itself.
    """
    lines = stderr.rstrip("\n").splitlines()
    frames: list[int] = []
    last_file_idx = -1
    for i, ln in enumerate(lines):
        m = _FILE_LINE_RE.match(ln)
        if m:
            frames.append(int(m.group(1)))
            last_file_idx = i
        elif ln.lstrip().startswith('File "'):
            last_file_idx = i  # a frame in library code: the exception line comes after it
    if last_file_idx < 0 and not any(ln.startswith("Traceback (most recent") for ln in lines):
        return "", stderr.strip(), ()  # e.g. sys.exit("message"): no exception to name
    for i in range(last_file_idx + 1, len(lines)):
        ln = lines[i]
        if not ln or ln[0].isspace():
            continue  # the source line and the caret markers under it
        m = _EXC_RE.match(ln)
        if m:
            message = "\n".join([m.group(2) or "", *lines[i + 1 :]]).strip()
            return m.group(1), message, tuple(frames)
    return "", stderr.strip(), tuple(frames)


def _field(text: str, cap: int) -> str:
    text = text if text.strip() else "(empty)"
    return truncate_text(text.rstrip("\n"), cap)


def _input_label(test: CodeTest) -> str:
    return "Arguments (one JSON value per line)" if test.kind == "functional" else "Input"


def _hard_failure_text(r: TestResult, cap: int, limits: tuple[float, int]) -> Feedback:
    time_s, mem_mb = limits
    shown_input = _field(r.test.input, cap) if r.test.kind != "check" else None
    if r.verdict in (Verdict.TIMEOUT, Verdict.MEMORY_LIMIT):
        if r.verdict is Verdict.TIMEOUT:
            head = f"Time limit exceeded: your program ran longer than {time_s:g} s"
            kind = FeedbackKind.TIMEOUT
        else:
            head = f"Memory limit exceeded: your program used more than {mem_mb} MiB"
            kind = FeedbackKind.MEMORY_LIMIT
        if shown_input is None:
            return Feedback(kind, head + ".", TestCaseDetails(input=""), _SOURCE)
        text = f"{head} on this input.\n{_input_label(r.test)}:\n{shown_input}"
        return Feedback(kind, text, TestCaseDetails(input=r.test.input), _SOURCE)
    err = r.error or ErrorDetails(error_type="RuntimeError", message=r.message)
    if r.verdict is Verdict.OUTPUT_LIMIT:
        parts = [f"Output limit exceeded: {err.message}"]
    else:
        msg = f": {err.message}" if err.message else ""
        parts = [f"Runtime error: {err.error_type}{msg}"]
    if err.line is not None and err.line_text:
        parts.append(f"Line {err.line} of your code: {err.line_text}")
    if shown_input is not None:
        parts.append(f"Last executed input:\n{shown_input}")
    elif err.last_input:
        parts.append(f"While running the check: {truncate_text(err.last_input, cap)}")
    text = truncate_text("\n".join(parts[:1]), cap * 2) + "".join("\n" + p for p in parts[1:])
    return Feedback(FeedbackKind.RUNTIME_ERROR, text, err, _SOURCE)


def _wrong_answer_text(failed: Sequence[TestResult], n_run: int, cap: int) -> Feedback:
    shortest = sorted(failed, key=lambda r: (len(r.test.input) + len(r.test.output), r.index))[:2]
    plural = "s" if n_run != 1 else ""
    blocks = [f"Wrong answer: {len(failed)} of {n_run} test{plural} failed."]
    first_details = None
    for r in shortest:
        if r.test.kind == "check":
            err = r.error
            line = err.line_text if err is not None and err.line_text else "(unknown)"
            why = ""
            if err is not None and err.error_type == "AssertionError":
                why = f" ({err.message})" if err.message else ""
            elif err is not None:
                why = f" ({err.error_type}: {err.message})".replace(": )", ")")
            blocks.append(f"Failed check: {truncate_text(line + why, cap)}")
            first_details = first_details or TestCaseDetails(input=line)
            continue
        label = "Your return value" if r.test.kind == "functional" else "Your output"
        blocks.append(
            f"{_input_label(r.test)}:\n{_field(r.test.input, cap)}\n"
            f"{label}:\n{_field(r.actual or '', cap)}\n"
            f"Expected:\n{_field(r.test.output, cap)}"
        )
        first_details = first_details or TestCaseDetails(r.test.input, r.test.output, r.actual)
    return Feedback(FeedbackKind.WRONG_ANSWER, "\n\n".join(blocks), first_details, _SOURCE)


def code_feedback(
    results: Sequence[TestResult],
    *,
    max_chars: int = 2000,
    time_limit_s: float = 4.0,
    memory_limit_mb: int = 256,
) -> Feedback | None:
    """Summarize the verdicts as one :class:`Feedback` (``None`` when every test passed).

    The first hard failure in test order wins (runtime error, time, memory or output limit);
    otherwise the two shortest failing tests are shown as wrong answers. A failed assertion
    in a ``check`` test counts as a wrong answer.
    """
    cap = max(40, max_chars // 6)  # per field, so that two full cases fit the budget
    ordered = sorted(results, key=lambda r: r.index)
    hard = [r for r in ordered if r.verdict in HARD_FAILURES and not r.in_test_code]
    if hard:
        fb = _hard_failure_text(hard[0], cap, (time_limit_s, memory_limit_mb))
    else:
        failed = [
            r
            for r in ordered
            if r.verdict is Verdict.WRONG_ANSWER or (r.verdict in HARD_FAILURES and r.in_test_code)
        ]
        if not failed:
            return None
        n_run = sum(r.verdict is not Verdict.SKIPPED for r in ordered)
        fb = _wrong_answer_text(failed, n_run, cap)
    return Feedback(fb.kind, truncate_text(fb.text, max_chars), fb.details, fb.source)
