"""Turning a response into the program the sandbox runs, for :mod:`envs.code`.

:func:`extract_code` finds the program in a response (its last, or first, ```` ```python ````
block; cut-off and empty blocks are told apart from a missing one). :func:`build_program` wraps
it for one kind of test: as is for stdin tests; after LiveCodeBench's imports and before a
``_rlrf_call`` shim for functional tests; after HumanEval's prompt and before a ``_rlrf_calls``
harness for check tests.

Check tests (HumanEval's ``check(candidate)``) never run in the sandbox. The calls a check
makes are recorded once, in the trusted parent, with the reference solution
(:func:`record_check_calls`); the sandbox only computes the candidate's return values for those
arguments and sends them back as tagged strict JSON (:func:`encode_value`: tuples, sets,
dicts with any keys, bytes, complex and non-finite floats survive the trip, anything that is
not a plain built-in value does not); then :func:`replay_check` runs ``check`` in the parent
against those values. Nothing the program does in its own process (forging the result
channel, rebinding built-ins, redefining the prompt's helpers, always-equal objects) can make
a check pass: it can only choose its answers. A check whose calls depend on earlier return
values is replayed in rounds (new arguments go back to the sandbox, at most
:data:`MAX_CHECK_ROUNDS` times).
"""

from __future__ import annotations

import builtins
import functools
import json
import random
import re
import traceback
import types
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from envs.code_data import CodeTask
from envs.code_feedback import Program

__all__ = [
    "CALL_ENTRY",
    "CHECK_ENTRY",
    "MAX_CHECK_ROUNDS",
    "CheckReplay",
    "ExtractedCode",
    "build_program",
    "decode_value",
    "encode_value",
    "extract_code",
    "record_check_calls",
    "replay_check",
]

#: The function the sandbox calls for functional tests, and for check tests.
CALL_ENTRY = "_rlrf_call"
CHECK_ENTRY = "_rlrf_calls"

#: Rounds of sandbox runs one check may take when its arguments depend on return values.
MAX_CHECK_ROUNDS = 3

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
# The value codec, defined once as source: the parent executes it (below) and every check
# program carries it, ahead of any submitted code, so that it holds the genuine built-ins even
# if the program rebinds `type` or `list` later. Strict JSON, with one-key objects as tags.
_CODEC_SOURCE = """\
def _rlrf_encode(value, _type=type, _list=list, _len=len, _repr=repr, _sorted=sorted,
                 _isfinite=__import__("math").isfinite, _err=TypeError):
    t = _type(value)
    if value is None or t is bool or t is int or t is str:
        return value
    if t is float:
        return value if _isfinite(value) else {"f": _repr(value)}
    if t is list:
        return [_rlrf_encode(v) for v in value]
    if t is tuple:
        return {"t": [_rlrf_encode(v) for v in value]}
    if t is dict:
        return {"d": [[_rlrf_encode(k), _rlrf_encode(v)] for k, v in value.items()]}
    if t is set or t is frozenset:
        items = [_rlrf_encode(v) for v in value]
        return {"s" if t is set else "fs": _sorted(items, key=_repr)}
    if t is bytes:
        return {"b": value.hex()}
    if t is complex:
        return {"c": [_rlrf_encode(value.real), _rlrf_encode(value.imag)]}
    raise _err("your function returned an object of type " + t.__name__
               + "; return plain built-in values (int, str, list, tuple, dict, ...)")


def _rlrf_decode(obj, _type=type, _err=ValueError):
    t = _type(obj)
    if obj is None or t is bool or t is int or t is float or t is str:
        return obj
    if t is list:
        return [_rlrf_decode(v) for v in obj]
    if t is dict and len(obj) == 1:
        (tag, v), = obj.items()
        if tag == "t":
            return tuple(_rlrf_decode(x) for x in v)
        if tag == "d":
            return {_rlrf_decode(k): _rlrf_decode(x) for k, x in v}
        if tag == "s":
            return set(_rlrf_decode(x) for x in v)
        if tag == "fs":
            return frozenset(_rlrf_decode(x) for x in v)
        if tag == "b" and _type(v) is str:
            return bytes.fromhex(v)
        if tag == "c":
            return complex(_rlrf_decode(v[0]), _rlrf_decode(v[1]))
        if tag == "f" and v in ("nan", "inf", "-inf"):
            return float(v)
    raise _err("not a tagged value: " + repr(obj)[:80])
"""
_codec: dict[str, Any] = {}
exec(compile(_CODEC_SOURCE, "<rlrf-codec>", "exec"), _codec)


def encode_value(value: Any) -> Any:
    """Encode a plain built-in value as tagged JSON data (see :func:`decode_value`).

    Raises:
        TypeError: the value (or something inside it) is not a plain built-in value.

    """
    return _codec["_rlrf_encode"](value)


def decode_value(data: Any) -> Any:
    """Rebuild the value :func:`encode_value` encoded (only plain built-in types are built).

    Raises:
        ValueError: ``data`` is not a tagged value (a forged or garbled reply).

    """
    return _codec["_rlrf_decode"](data)


# The check harness: one sandbox run computes the candidate's return values for every recorded
# call, in order, and stops at the first exception (printing it, as a check would have).
_CHECK_CALLS = """

def _rlrf_calls(_calls_json, _loads=__import__("json").loads, _print_exc=__import__(
        "traceback").print_exc, _encode=_rlrf_encode, _decode=_rlrf_decode):
    _outputs = []
    for _args in _decode(_loads(_calls_json)):
        try:
            _outputs.append(_encode({name}(*_args)))
        except Exception:
            _print_exc()
            return {{"outputs": _outputs, "raised": True}}
    return {{"outputs": _outputs, "raised": False}}
"""
_CHECK_FILE = "<check>"


@functools.lru_cache(maxsize=1024)
def _compiled(source: str, filename: str) -> types.CodeType:
    """Compile trusted dataset code once (every grading replays the same prompt and check)."""
    return compile(source, filename, "exec")


def _private_random(seed: int) -> types.ModuleType:
    """A copy of :mod:`random` whose module-level functions use their own seeded generator."""
    rng = random.Random(seed)
    mod = types.ModuleType("random")
    mod.__dict__.update(random.__dict__)
    for name in dir(random.Random):
        if not name.startswith("_") and callable(getattr(random, name, None)):
            if getattr(getattr(random, name), "__self__", None) is random._inst:
                setattr(mod, name, getattr(rng, name))
    return mod


def _check_namespace(prefix: str) -> dict[str, Any]:
    """A fresh namespace holding the definitions of ``prefix``, for ``check`` to run in.

    In it ``import random`` gives a private generator with a fixed seed: recording and replay
    see the same arguments, and the process-wide generator is neither used nor disturbed
    (checks run on several threads at once).
    """
    rand = _private_random(0)
    real_import = builtins.__import__

    def _import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "random":
            return rand
        return real_import(name, *args, **kwargs)

    bdict = dict(builtins.__dict__)
    bdict["__import__"] = _import
    ns: dict[str, Any] = {"__builtins__": bdict, "__name__": "__rlrf_check__"}
    exec(_compiled(prefix, "<prompt>"), ns)
    return ns


def _check_line(test: str, tb: Any) -> str | None:
    """The line of the check that was running when ``tb`` was raised."""
    lines = test.splitlines()
    found = None
    for frame in traceback.extract_tb(tb):
        if frame.filename == _CHECK_FILE and 1 <= (frame.lineno or 0) <= len(lines):
            found = lines[frame.lineno - 1].strip()  # type: ignore[operator]
    return found


def record_check_calls(task: CodeTask) -> str:
    """Run ``check`` on the reference solution, in this process; return the calls it made.

    The result is a JSON array (tagged, see :func:`encode_value`) of argument lists, in call
    order, to be stored as the check test's :attr:`CodeTest.output`.

    Raises:
        ValueError: the task has no reference solution or check, the check fails on the
            reference, or an argument is not a plain built-in value.

    """
    test = _check_test(task)
    if not task.reference_solution or not task.entry_point:
        raise ValueError(f"{task.task_id}: recording a check needs a reference solution")
    ns = _check_namespace(task.reference_solution)
    reference = ns[task.entry_point]
    calls: list[Any] = []

    def candidate(*args: Any) -> Any:
        calls.append(encode_value(list(args)))  # before the call: it may mutate its arguments
        return reference(*args)

    exec(_compiled(test, _CHECK_FILE), ns)
    try:
        ns["check"](candidate)
    except Exception as e:
        raise ValueError(f"{task.task_id}: the check fails on the reference solution: {e!r}") from e
    return json.dumps(calls, allow_nan=False)


def _check_test(task: CodeTask) -> str:
    tests = [t for t in task.tests if t.kind == "check"]
    if len(tests) != 1:
        raise ValueError(f"{task.task_id}: expected one check test, found {len(tests)}")
    return tests[0].input


@dataclass(frozen=True)
class CheckReplay:
    """What ``check`` did with the candidate's return values, replayed in the parent.

    Attributes:
        outcome: ``"passed"``; ``"failed"`` (an assertion, or another error raised by the
            check's own code); ``"raised"`` (the candidate raised on a call the check made);
            ``"need"`` (the check made a call whose arguments were not run: see ``need``).
        error_type: The exception's type for ``"failed"``.
        message: Its message (for a bare failed assertion: the value the candidate returned).
        check_line: The line of the check that was running.
        need: Arguments of the call that must run in the sandbox first (``"need"``).

    """

    outcome: Literal["passed", "failed", "raised", "need"]
    error_type: str = ""
    message: str = ""
    check_line: str | None = None
    need: list[Any] | None = None


class _Stop(Exception):
    """Raised by the replay's stand-in candidate: the call cannot be answered."""

    def __init__(self, outcome: Literal["raised", "need"], args: list[Any]) -> None:
        super().__init__(outcome)
        self.outcome = outcome
        self.args_encoded = args


def replay_check(
    task: CodeTask, calls: Sequence[Any], outputs: Sequence[Any], raised: bool
) -> CheckReplay:
    """Run ``check`` in this process against the candidate's return values.

    Args:
        task: The problem (its prompt supplies the check's helper functions).
        calls: The encoded argument lists the sandbox ran, in order.
        outputs: The candidate's encoded return values, one per call that returned.
        raised: Whether the call after the last output raised.

    """
    test = _check_test(task)
    answers: dict[str, Any] = {}
    for args, out in zip(calls, outputs, strict=False):
        answers.setdefault(json.dumps(args), out)
    failed_key = json.dumps(calls[len(outputs)]) if raised and len(outputs) < len(calls) else None
    last: list[Any] = []

    def candidate(*args: Any) -> Any:
        encoded = encode_value(list(args))
        key = json.dumps(encoded, allow_nan=False)
        if key in answers:
            value = decode_value(answers[key])
            last[:] = [value]
            return value
        raise _Stop("raised" if key == failed_key else "need", encoded)

    # The prompt's helpers, and the reference under the function's own name: a check that
    # calls it by name (HumanEval/33) compares with the reference, where the original harness
    # compared the candidate with itself.
    ns = _check_namespace(task.reference_solution or task.prefix)
    exec(_compiled(test, _CHECK_FILE), ns)
    try:
        ns["check"](candidate)
    except _Stop as stop:
        line = _check_line(test, stop.__traceback__)
        return CheckReplay(stop.outcome, check_line=line, need=stop.args_encoded)
    except Exception as e:  # the check's own verdict on the values, whatever it raised
        message = str(e)
        if isinstance(e, AssertionError) and not e.args and last:
            message = "your function returned " + repr(last[0])[:300]
        line = _check_line(test, e.__traceback__)
        return CheckReplay("failed", type(e).__name__, message, line)
    return CheckReplay("passed")


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
    head = futures + _CODEC_SOURCE + prefix
    source = head + body + _CHECK_CALLS.format(name=task.entry_point)
    return Program(source, head.count("\n"), body.count("\n"))
