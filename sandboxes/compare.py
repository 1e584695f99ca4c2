r"""Grading helpers for the trusted parent: compare a program's output with the expected one.

Expected outputs never enter a sandbox. These pure functions compare what came back:

* :func:`outputs_match` for stdout: ``"exact"`` (byte-for-byte text), ``"tokens"``
  (whitespace-separated tokens, so line endings and trailing spaces do not matter) or
  ``"numeric"`` (tokens, numbers equal within ``abs_tol`` or ``rel_tol``); case-insensitive only
  when asked.
* :func:`json_match` for function-call results (``ExecutionResult.return_json``): strict types
  (``True`` is not ``1``, a string is not a number), floats within tolerance, tuples in the
  expected value treated as JSON arrays.
* :func:`first_mismatch` says where two outputs differ, for feedback text.
* :func:`loads_bounded` decodes what a program sent back, refusing values nested deeper than
  :data:`MAX_JSON_DEPTH`: the text is the program's, so nothing in it may make the trusted
  parent raise (a list nested 5000 deep once made ``json.loads`` raise ``RecursionError``).

Example:
    >>> outputs_match("1 2\n3\n", "1 2 3", mode="tokens")
    True
    >>> outputs_match("0.3333333", "0.333333333", mode="numeric", abs_tol=1e-6)
    True
    >>> json_match("[1, 2]", (1, 2))
    True
    >>> json_match("true", 1)
    False

"""

from __future__ import annotations

import json
import math
import re
from itertools import accumulate
from typing import Any, Literal

from sandboxes.errors import SandboxConfigError

__all__ = [
    "MAX_JSON_DEPTH",
    "CompareMode",
    "ReturnValueError",
    "first_mismatch",
    "json_match",
    "loads_bounded",
    "outputs_match",
    "tokens",
]

CompareMode = Literal["exact", "tokens", "numeric"]
_MODES = ("exact", "tokens", "numeric")

MAX_JSON_DEPTH = 100
"""Deepest nesting of arrays and objects :func:`loads_bounded` accepts. Far beyond any test's
expected value, and far below the interpreter's recursion limit, so that decoding and comparing
never depend on how deep the caller's own stack is."""

# A JSON string, escapes included (the unrolled form: linear, no backtracking).
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKETS = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


class ReturnValueError(ValueError):
    """What a program sent back is not a value the parent can grade; the message says why."""


def json_depth(text: str) -> int:
    """The deepest nesting of arrays and objects in JSON ``text``, found without parsing it.

    Brackets inside strings do not count. Linear in ``len(text)``; never recurses.

    >>> json_depth('[1, {"a": "[[["}]')
    2
    """
    brackets = _BRACKETS.sub("", _JSON_STRING.sub('""', text))
    return max(accumulate(_STEP[c] for c in brackets), default=0)


def loads_bounded(text: str | bytes, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Decode JSON a program produced; raise :class:`ReturnValueError` for anything unusable.

    Malformed JSON, invalid UTF-8, an integer too long to convert, and nesting deeper than
    ``max_depth`` all raise :class:`ReturnValueError` (a ``ValueError``), never anything else.

    >>> loads_bounded("[[1]]")
    [[1]]
    >>> loads_bounded("[" * 500 + "]" * 500)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    sandboxes.compare.ReturnValueError: the value is nested 500 levels deep; at most 100 ...
    """
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ReturnValueError(f"the value is not valid UTF-8 ({e.reason})") from None
    depth = json_depth(text)
    if depth > max_depth:
        raise ReturnValueError(
            f"the value is nested {depth} levels deep; at most {max_depth} are accepted"
        )
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        raise ReturnValueError(f"the value is not valid JSON ({e})") from None


def tokens(text: str) -> list[str]:
    """Split ``text`` on any whitespace (the ``"tokens"`` normal form)."""
    return text.split()


def _check_mode(mode: str, abs_tol: float, rel_tol: float) -> None:
    if mode not in _MODES:
        raise SandboxConfigError(f"unknown comparison mode {mode!r}; use one of {_MODES}")
    for name, tol in (("abs_tol", abs_tol), ("rel_tol", rel_tol)):
        if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol >= 0):
            raise SandboxConfigError(f"{name} must be a finite number >= 0, got {tol!r}")


def _parse_number(token: str) -> float | None:
    try:
        value = float(token)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _numbers_close(a: float, b: float, abs_tol: float, rel_tol: float) -> bool:
    return math.isclose(a, b, rel_tol=rel_tol, abs_tol=abs_tol)


def _token_equal(
    a: str, b: str, mode: str, abs_tol: float, rel_tol: float, case_insensitive: bool
) -> bool:
    if case_insensitive:
        a, b = a.casefold(), b.casefold()
    if a == b:
        return True
    if mode == "numeric":
        x, y = _parse_number(a), _parse_number(b)
        if x is not None and y is not None:
            return _numbers_close(x, y, abs_tol, rel_tol)
    return False


def first_mismatch(
    actual: str,
    expected: str,
    mode: CompareMode = "tokens",
    *,
    abs_tol: float = 1e-6,
    rel_tol: float = 1e-9,
    case_insensitive: bool = False,
) -> str | None:
    """Describe where ``actual`` first differs from ``expected``; None when they match.

    Args:
        actual: the program's output.
        expected: the reference output.
        mode: ``"exact"``, ``"tokens"`` or ``"numeric"`` (see the module docstring).
        abs_tol: absolute tolerance for ``"numeric"``.
        rel_tol: relative tolerance for ``"numeric"``.
        case_insensitive: compare letters without regard to case.

    Returns:
        A one-line description such as ``"token 3: expected '7', got '8'"``, or None.

    """
    _check_mode(mode, abs_tol, rel_tol)
    if mode == "exact":
        a, b = (actual.casefold(), expected.casefold()) if case_insensitive else (actual, expected)
        if a == b:
            return None
        i = next(
            (k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
        )
        return f"character {i}: expected {expected[i : i + 20]!r}, got {actual[i : i + 20]!r}"
    got, want = tokens(actual), tokens(expected)
    for i, (a, b) in enumerate(zip(got, want, strict=False)):
        if not _token_equal(a, b, mode, abs_tol, rel_tol, case_insensitive):
            return f"token {i + 1}: expected {b[:80]!r}, got {a[:80]!r}"
    if len(got) != len(want):
        return f"expected {len(want)} tokens, got {len(got)}"
    return None


def outputs_match(
    actual: str,
    expected: str,
    mode: CompareMode = "tokens",
    *,
    abs_tol: float = 1e-6,
    rel_tol: float = 1e-9,
    case_insensitive: bool = False,
) -> bool:
    """Whether ``actual`` matches ``expected`` under ``mode`` (see :func:`first_mismatch`)."""
    return (
        first_mismatch(
            actual,
            expected,
            mode,
            abs_tol=abs_tol,
            rel_tol=rel_tol,
            case_insensitive=case_insensitive,
        )
        is None
    )


def _json_equal(a: Any, b: Any, abs_tol: float, rel_tol: float) -> bool:
    # An explicit stack, not recursion: the comparison's cost never depends on the caller's.
    stack = [(a, b)]
    while stack:
        a, b = stack.pop()
        # bool is a subclass of int in Python but a distinct JSON type: compare types first.
        if isinstance(a, bool) or isinstance(b, bool):
            if not (type(a) is type(b) and a == b):
                return False
        elif isinstance(a, (int, float)) and isinstance(b, (int, float)):
            if isinstance(a, int) and isinstance(b, int):
                if a != b:
                    return False
            elif not _numbers_close(float(a), float(b), abs_tol, rel_tol):
                return False
        elif isinstance(a, list) and isinstance(b, list):
            if len(a) != len(b):
                return False
            stack.extend(zip(a, b, strict=True))
        elif isinstance(a, dict) and isinstance(b, dict):
            if a.keys() != b.keys():
                return False
            stack.extend((a[k], b[k]) for k in a)
        elif not (type(a) is type(b) and a == b):
            return False
    return True


def json_match(
    actual_json: str | None,
    expected: Any,
    *,
    abs_tol: float = 0.0,
    rel_tol: float = 1e-9,
) -> bool:
    """Whether a function call's JSON result equals ``expected`` (a Python value).

    ``expected`` is normalised through JSON first, so tuples compare as lists and dict keys as
    strings, exactly as the sandbox serialised the actual value. Missing JSON, and anything
    :func:`loads_bounded` refuses (malformed, nested deeper than :data:`MAX_JSON_DEPTH`),
    never matches and never raises.
    """
    _check_mode("tokens", abs_tol, rel_tol)
    if actual_json is None:
        return False
    try:
        actual = loads_bounded(actual_json)
    except ReturnValueError:
        return False
    try:
        want = json.loads(json.dumps(expected, allow_nan=False))
    except (TypeError, ValueError, RecursionError) as e:
        raise SandboxConfigError(
            f"expected value {expected!r:.80} is not JSON-serializable; function-call tests "
            "need JSON values (numbers, strings, booleans, None, lists, dicts)"
        ) from e
    return _json_equal(actual, want, abs_tol, rel_tol)
