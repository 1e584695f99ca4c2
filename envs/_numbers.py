"""Numbers read from untrusted text without ``ValueError``/``OverflowError`` surprises.

Python refuses to convert integer strings over 4,300 digits (``sys.int_max_str_digits``) with
a ``ValueError`` that is not a ``json.JSONDecodeError``, and ``float()`` of a large ``int``
raises ``OverflowError``. A policy's response (or a judge's answer) can hold such numbers, and
grading must turn them into feedback, never into an exception out of ``step()``. Every env
reads integers from responses through :func:`parse_int` and JSON through :func:`loads_json`,
which cap integers at :data:`MAX_INT_DIGITS` digits (or the interpreter's own limit, if
lower), so every integer they return can also be printed back with ``str()``.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any

__all__ = [
    "MAX_INT_DIGITS",
    "NumberTooLongError",
    "int_digit_limit",
    "json_error_message",
    "loads_json",
    "parse_int",
    "raw_decode_json",
    "to_float",
]

#: Integers with more digits than this are refused (below Python's default limit of 4,300).
MAX_INT_DIGITS = 4000


class NumberTooLongError(ValueError):
    """An integer in untrusted text has more digits than the cap allows."""


def int_digit_limit(max_digits: int = MAX_INT_DIGITS) -> int:
    """The effective digit cap: ``max_digits`` or the interpreter's limit, whichever is lower."""
    interpreter = getattr(sys, "get_int_max_str_digits", lambda: 0)()
    return min(max_digits, interpreter) if interpreter > 0 else max_digits


def parse_int(text: str, *, max_digits: int = MAX_INT_DIGITS) -> int:
    """``int(text)`` for untrusted text, refusing more than ``max_digits`` digits.

    The length is checked before converting, so a huge digit string costs nothing.

    >>> parse_int("-1234")
    -1234
    >>> parse_int("9" * 5000)  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    NumberTooLongError: an integer with 5000 digits (more than 4000)

    Raises:
        NumberTooLongError: More digits than the cap.
        ValueError: ``text`` is not an integer.

    """
    digits = len(text.strip().lstrip("+-"))
    limit = int_digit_limit(max_digits)
    if digits > limit:
        raise NumberTooLongError(f"an integer with {digits} digits (more than {limit})")
    return int(text)


def _json_int(text: str) -> int:
    return parse_int(text)


_DECODER = json.JSONDecoder(parse_int=_json_int)


def loads_json(text: str) -> Any:
    """``json.loads`` for untrusted text; integers over the cap raise :class:`NumberTooLongError`.

    Every failure is a ``ValueError`` (``json.JSONDecodeError`` for syntax) or a
    ``RecursionError`` (nesting deeper than the interpreter allows).
    """
    return _DECODER.decode(text)


def raw_decode_json(text: str, start: int) -> tuple[Any, int]:
    """``JSONDecoder.raw_decode`` at ``start`` with the integer cap of :func:`loads_json`."""
    return _DECODER.raw_decode(text, start)


def to_float(value: int | float) -> float:
    """``float(value)`` that saturates to ``±inf`` instead of raising ``OverflowError``."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def json_error_message(e: Exception) -> str:
    """A short description of why :func:`loads_json` failed, with the position if known."""
    if isinstance(e, json.JSONDecodeError):
        return f"{e.msg} at line {e.lineno} column {e.colno}"
    if isinstance(e, NumberTooLongError):
        return str(e)
    if isinstance(e, RecursionError):
        return "nested too deeply (RecursionError)"
    return type(e).__name__
