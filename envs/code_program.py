"""Turning a response into the program the sandbox runs, for :mod:`envs.code`.

:func:`extract_code` finds the program in a response (its last, or first, ```` ```python ````
block; cut-off and empty blocks are told apart from a missing one). :func:`build_program` wraps
it for one kind of test: as is for stdin tests; after LiveCodeBench's imports and before a
``_rlrf_call`` shim for functional tests; between HumanEval's prompt and its ``check`` for
check tests, with a guard (set up before any submitted code runs) that lets only plain built-in
values reach ``check``, so an always-equal object cannot pass an assertion.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from envs.code_data import CodeTask
from envs.code_feedback import Program

__all__ = [
    "CALL_ENTRY",
    "CHECK_ENTRY",
    "CHECK_PASSED_JSON",
    "ExtractedCode",
    "build_program",
    "extract_code",
]

#: The function the sandbox calls for functional tests, and for check tests.
CALL_ENTRY = "_rlrf_call"
CHECK_ENTRY = "_rlrf_check"

_PY_TAGS = ("python", "py", "python3", "py3")
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
_FUTURE_RE = re.compile(r"^from\s+__future__\s+import\b.*$", re.M)

# Imports LiveCodeBench puts before LeetCode-style solutions (starter code uses List, etc.).
_FUNCTIONAL_HEADER = (
    "from typing import *\n"
    "from collections import *\n"
    "from functools import *\n"
    "from itertools import *\n"
    "from heapq import *\n"
    "from bisect import *\n"
    "import bisect, collections, functools, heapq, itertools, math, re, string, sys\n"
)
_FUNCTIONAL_CALL = """

def _rlrf_call(*args):
    if "Solution" in globals() and hasattr(Solution, {name!r}):
        return Solution().{name}(*args)
    return {name}(*args)
"""
# Runs before any submitted code, so the guard holds the genuine built-ins even if the
# program rebinds `type` or `list` later.
_CHECK_PRELUDE = """\
def _rlrf_plain(value, _type=type, _scalars=(int, float, complex, str, bytes, bool, type(None)),
                _seqs=(list, tuple, set, frozenset), _dict=dict, _err=TypeError):
    t = _type(value)
    if t in _seqs:
        for v in value:
            _rlrf_plain(v)
    elif t is _dict:
        for k, v in value.items():
            _rlrf_plain(k)
            _rlrf_plain(v)
    elif t not in _scalars:
        raise _err("your function returned an object of type " + t.__name__
                   + "; return plain built-in values (int, str, list, dict, ...)")
    return value
"""
_CHECK_CALL = """

def _rlrf_check(_plain=_rlrf_plain, _repr=repr):
    _candidate = {name}
    _last = []

    def _checked(*args, **kwargs):
        value = _plain(_candidate(*args, **kwargs))
        _last[:] = [value]
        return value

    try:
        check(_checked)
    except AssertionError as e:
        if _last and not e.args:
            e.args = ("your function returned " + _repr(_last[0])[:300],)
        raise
    return "passed"
"""
#: What the check harness returns when every assertion held.
CHECK_PASSED_JSON = '"passed"'


@dataclass(frozen=True)
class ExtractedCode:
    """The program found in a response, or why there is none.

    Attributes:
        code: The program text, or ``None``.
        problem: ``"no_block"``, ``"cut_off"``, ``"empty"`` or ``None`` when ``code`` is set.
        n_blocks: How many complete code blocks the response has.

    """

    code: str | None
    problem: Literal["no_block", "cut_off", "empty"] | None = None
    n_blocks: int = 0


def extract_code(
    response: str, which: Literal["last", "first"] = "last", tags: Sequence[str] = _PY_TAGS
) -> ExtractedCode:
    """Find the program in a response: its last (or first) ```` ```python ```` block.

    Blocks tagged with one of ``tags`` win; untagged blocks are used when no tagged one
    exists. A block opened but never closed after the chosen position means the response
    was cut off. Runs in linear time, so megabyte responses are fine.
    """
    tagged: list[str] = []
    untagged: list[str] = []
    open_tag: str | None = None
    open_lines: list[str] = []
    after_last_closed_open = False
    for line in response.splitlines():
        stripped = line.strip()
        if open_tag is None:
            if stripped.startswith("```"):
                info = stripped[3:].strip().lower()
                open_tag, open_lines = info.split()[0] if info else "", []
                if open_tag.startswith("`"):  # a ```` fence or stray backticks: not code
                    open_tag = None
            continue
        if stripped == "```":
            body = "\n".join(open_lines)
            if open_tag in tags:
                tagged.append(body)
            elif open_tag == "":
                untagged.append(body)
            open_tag = None
        else:
            open_lines.append(line)
    if open_tag is not None and (open_tag in tags or open_tag == ""):
        after_last_closed_open = True
    blocks = tagged or untagged
    n_blocks = len(tagged) + len(untagged)
    if which == "last" and after_last_closed_open:
        return ExtractedCode(None, "cut_off", n_blocks)
    if not blocks:
        return ExtractedCode(None, "cut_off" if after_last_closed_open else "no_block", n_blocks)
    code = blocks[-1] if which == "last" else blocks[0]
    if not code.strip():
        return ExtractedCode(None, "empty", n_blocks)
    return ExtractedCode(code, None, n_blocks)


def _clean_source(code: str) -> str:
    # Lone surrogates (bytes that were not UTF-8) cannot be written as a UTF-8 file: mark
    # them as U+FFFD so the program fails with a SyntaxError naming the spot, like a judge.
    return _SURROGATE_RE.sub("\ufffd", code)


def _split_futures(code: str) -> tuple[str, str]:
    """Move ``from __future__`` imports to the top (they must come first), keeping lines."""
    futures = _FUTURE_RE.findall(code)
    if not futures:
        return "", code
    return "\n".join(f.strip() for f in futures) + "\n", _FUTURE_RE.sub("pass", code)


def build_program(task: CodeTask, code: str, kind: str) -> Program:
    """Assemble the program the sandbox runs for one kind of test (see the module docstring)."""
    code = _clean_source(code)
    if not code.endswith("\n"):
        code += "\n"
    if kind == "stdin":
        return Program(code, 0, code.count("\n"))
    futures, body = _split_futures(code)
    if kind == "functional":
        head = futures + _FUNCTIONAL_HEADER
        source = head + body + _FUNCTIONAL_CALL.format(name=task.entry_point)
        return Program(source, head.count("\n"), body.count("\n"))
    prefix = task.prefix if task.prefix.endswith("\n") else task.prefix + "\n"
    head = futures + _CHECK_PRELUDE + prefix
    test = task.tests[0].input
    test_start = (head + body).count("\n") + 2
    source = head + body + "\n" + test + _CHECK_CALL.format(name=task.entry_point)
    return Program(source, head.count("\n"), body.count("\n"), test_start, test.count("\n") + 1)
