r"""Competitive programming with judge-style rich feedback: ``rlrf/Code-v0``, ``rlrf/HumanEval-v0``.

The policy answers a problem statement with a program: the last ```` ```python ```` block of its
response (``code_block="first"`` takes the first; untagged blocks count when no tagged one
exists). The program runs in a sandbox (:mod:`sandboxes`, ``"local"`` by default) once per
test; outputs are compared **in the parent**, so expected outputs never enter the sandbox.
Programs may import the standard library only: no installed package is readable in the
sandbox (the tests shipped in ``envs/data`` would be); to allow one, preload it, e.g.
``sandbox_kwargs={"preload": ("numpy",)}``.

Reward: 1.0 when every graded test passes, else 0.0 (``reward="fraction"``: the fraction of
tests passed). ``None`` only when the sandbox itself failed (trainers skip such rollouts);
``info["sandbox_error"]`` then says why, so such failures can be counted apart. Anything a
program does, including writing garbage to its result channel or returning a value nested too
deep to grade, is the program's failure: 0.0 with typed feedback.

Feedback (one item, capped at ``feedback_max_chars``, 2,000 by default), as a judge site shows
it to a human:

* ``format``: no code block, an empty one, a block cut off before its closing fence, or a
  program over ``max_code_chars``;
* ``runtime_error``: error type and message, the failing line of the submitted code, the last
  executed input (also for exceeding the output limit);
* ``timeout`` / ``memory_limit``: the limit and the input;
* ``wrong_answer``: how many tests failed, and the two shortest failing cases (input, output,
  expected); for HumanEval, the failed assertion.

Public and private tests: the ``"train"`` split's task ids are graded, for reward and feedback,
on the public tests only (a seeded, deterministic random half of each problem's tests by
default; ``public_tests="published"`` uses the dataset's own public tests where it has them).
The ``"test"`` split holds the same problems with ids ending in ``@all``, graded on every test,
as the paper evaluates LiveCodeBench. HumanEval has one ``check`` per problem, so both splits
grade it in full.

A group of responses (:meth:`CodeEnv.evaluate_many`) is graded concurrently: every
(response, test) run goes to the sandbox's worker pool at once, in test order. A response's
remaining tests are skipped once one of its tests hits a runtime error or a limit (its
reward is 0 either way, and the feedback names the first such test in test order), unless
``reward="fraction"``, which runs them all.

No verdict is computed where the untrusted program runs. Stdin/stdout tests compare stdout,
functional tests the call's return value (strict JSON), in the parent. HumanEval's
``check(candidate)`` never enters the sandbox either: the calls it makes are recorded once with
the reference solution (:func:`envs.code_program.record_check_calls`), the sandbox computes
the candidate's return values for those arguments (plain built-in values, as tagged strict
JSON: an object whose ``__eq__`` always says True cannot make the trip), and ``check`` is
replayed in the parent against them (:func:`envs.code_program.replay_check`), with the
prompt's own helper functions, however the program redefines them. Forging the sandbox's
result channel only chooses the program's answers. A problem whose check cannot be recorded
(it fails on the reference solution, or passes arguments that are not plain values) is left
out by :func:`envs.code_data.load_humaneval` with a warning; all 164 HumanEval problems are
recorded. A check that calls the function with arguments computed from earlier return values
is replayed in rounds (at most :data:`envs.code_program.MAX_CHECK_ROUNDS` sandbox runs; past
that, the test fails). The replayed check runs the dataset's trusted test code in this process
on values the program chose; they are bounded by the sandbox's output cap.

>>> env = CodeEnv(difficulty="easy")  # doctest: +SKIP
>>> _ = env.reset(options={"task_id": "sum-two"})  # doctest: +SKIP
>>> program = "```python\nprint(sum(map(int, input().split())))\n```"
>>> env.step_result(program).reward  # doctest: +SKIP
1.0
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import sandboxes
from envs.code_data import (
    CodeDataError,
    CodeTask,
    CodeTest,
    load_humaneval,
    load_lcb_dataset,
    load_lcb_jsonl,
    load_shipped,
    public_indices,
)
from envs.code_feedback import (
    HARD_FAILURES,
    Program,
    TestResult,
    Verdict,
    code_feedback,
    parse_traceback,
)
from envs.code_program import (
    CALL_ENTRY,
    CHECK_ENTRY,
    MAX_CHECK_ROUNDS,
    ExtractedCode,
    build_program,
    extract_code,
    record_check_calls,
    replay_check,
)
from envs.hf_data import DatasetSource, SkipCounter
from rlrf.env import Message, Outcome, RLRFEnv, user_prompt
from rlrf.errors import ConfigError, EnvError
from rlrf.feedback import ErrorDetails, Feedback, FeedbackKind
from sandboxes.compare import (
    CompareMode,
    ReturnValueError,
    json_match,
    loads_bounded,
    outputs_match,
)

__all__ = [
    "ALL_TESTS_SUFFIX",
    "CodeEnv",
    "CodeTask",
    "CodeTest",
    "ExtractedCode",
    "build_program",
    "extract_code",
    "load_humaneval",
    "load_lcb_jsonl",
    "load_shipped",
]


def _with_recorded_checks(task: CodeTask) -> CodeTask:
    """Record the calls of a check test that does not list them yet (a hand-made task)."""
    if not any(t.kind == "check" and not t.output for t in task.tests):
        return task
    try:
        calls = record_check_calls(task)
    except (ValueError, TypeError, SyntaxError) as e:
        raise CodeDataError(
            f"CodeEnv: problem {task.task_id!r} has a check test that cannot be graded outside "
            f"the sandbox ({e}); give it a reference_solution that passes its check"
        ) from e
    tests = tuple(
        dataclasses.replace(t, output=calls) if t.kind == "check" else t for t in task.tests
    )
    return dataclasses.replace(task, tests=tests)


def _check_answers(r: sandboxes.ExecutionResult) -> tuple[list[Any], bool] | None:
    """``(encoded return values, whether the next call raised)`` from a check run, or None."""
    try:
        reply = loads_bounded(r.return_json or "null")
    except ReturnValueError:
        return None
    if not isinstance(reply, dict) or not isinstance(reply.get("outputs"), list):
        return None
    return reply["outputs"], reply.get("raised") is True


#: Suffix of the ``"test"`` split's task ids: grade on every test, not only the public ones.
ALL_TESTS_SUFFIX = "@all"


class CodeEnv(RLRFEnv):
    """Programming problems graded by running tests in a sandbox (see the module docstring).

    Args:
        dataset: ``"shipped"`` (the problems in ``envs/data/code``), ``"humaneval"``, a path to
            a LiveCodeBench-format JSONL file, a Hugging Face dataset in LiveCodeBench's
            schema (a hub id such as ``"livecodebench/code_generation_lite"``, a
            ``save_to_disk`` folder, a Parquet file; :func:`envs.code_data.load_lcb_dataset`),
            or a sequence of :class:`CodeTask`. Problems whose test payload is refused (not
            plain data) or malformed are skipped and counted in :attr:`skipped`.
        difficulty: Keep only problems of these difficulties (``"easy"``, ...).
        limit: Keep only the first ``limit`` problems.
        public_tests: ``"random"``: a seeded random ``public_fraction`` of each problem's
            tests; ``"published"``: the dataset's own public tests (random where it has none).
        public_fraction: The share of tests that are public under ``"random"``.
        split_seed: Seed of the public/private split.
        reward: ``"all"`` (1.0 only when every test passes) or ``"fraction"``.
        code_block: Which ```` ```python ```` block is the program: ``"last"`` or ``"first"``.
        time_limit_s: CPU seconds per test (a problem's own limit wins).
        memory_limit_mb: Memory per test in MiB (a problem's own limit wins).
        compare: How stdout is compared: ``"tokens"`` (whitespace-insensitive), ``"exact"``,
            ``"numeric"`` (floats within ``abs_tol`` / ``rel_tol``).
        abs_tol: Absolute tolerance for ``"numeric"``.
        rel_tol: Relative tolerance for ``"numeric"``.
        feedback_max_chars: Cap on the feedback text.
        max_code_chars: Programs longer than this are refused with ``format`` feedback.
        sandbox: A :class:`sandboxes.Sandbox` (not closed by the env) or a backend name.
        sandbox_kwargs: Options of the backend the env creates (e.g. ``{"workers": 4}``).
        system_prompt: Optional system message.
        dataset_config: The hub config (e.g. ``"release_v6"``) of a Hugging Face ``dataset``.
        dataset_split: Its split (default ``"test"``, LiveCodeBench's only one).
        dataset_revision: Its hub revision (branch, tag or commit).
        columns: Its column mapping: ``"livecodebench"`` (the default) or ``{field: column}``
            overrides (:data:`envs.code_data.LCB_COLUMNS`).
        date_from: Keep problems with ``contest_date`` on or after this ``YYYY-MM-DD``.
        date_until: Keep problems with ``contest_date`` before this ``YYYY-MM-DD`` (the
            paper's LiveCodeBench v6: ``date_from="2025-02-01", date_until="2025-05-01"``).

    """

    def __init__(
        self,
        dataset: str | os.PathLike[str] | Sequence[CodeTask] = "shipped",
        *,
        difficulty: str | Sequence[str] | None = None,
        limit: int | None = None,
        public_tests: Literal["random", "published"] = "random",
        public_fraction: float = 0.5,
        split_seed: int = 0,
        reward: Literal["all", "fraction"] = "all",
        code_block: Literal["last", "first"] = "last",
        time_limit_s: float = 4.0,
        memory_limit_mb: int = 256,
        compare: CompareMode = "tokens",
        abs_tol: float = 1e-6,
        rel_tol: float = 1e-9,
        feedback_max_chars: int = 2000,
        max_code_chars: int = 100_000,
        sandbox: sandboxes.Sandbox | str = "local",
        sandbox_kwargs: Mapping[str, Any] | None = None,
        system_prompt: str | None = None,
        dataset_config: str | None = None,
        dataset_split: str | None = None,
        dataset_revision: str | None = None,
        columns: str | Mapping[str, str] | None = None,
        date_from: str | None = None,
        date_until: str | None = None,
    ) -> None:
        for name, value, allowed in (
            ("public_tests", public_tests, ("random", "published")),
            ("reward", reward, ("all", "fraction")),
            ("code_block", code_block, ("last", "first")),
            ("compare", compare, ("tokens", "exact", "numeric")),
        ):
            if value not in allowed:
                raise ConfigError(f"CodeEnv: {name}={value!r} is not one of {allowed}")
        if feedback_max_chars < 200:
            raise ConfigError(
                f"CodeEnv: feedback_max_chars={feedback_max_chars} is too small to hold a "
                "test case; use 200 or more"
            )
        #: Problems of the dataset left out, by reason ("refused_test_payload", "malformed").
        self.skipped = SkipCounter()
        hub = {
            "config": dataset_config,
            "split": dataset_split,
            "revision": dataset_revision,
            "columns": columns,
            "date_from": date_from,
            "date_until": date_until,
        }
        tasks = self._load(dataset, difficulty, hub, self.skipped, limit)
        if limit is not None:
            tasks = tasks[:limit]
        if not tasks:
            raise CodeDataError("CodeEnv: the dataset holds no problem (check limit/difficulty)")
        tasks = [_with_recorded_checks(t) for t in tasks]
        self._tasks: dict[str, CodeTask] = {}
        for t in tasks:
            if t.task_id in self._tasks or t.task_id.endswith(ALL_TESTS_SUFFIX):
                raise CodeDataError(
                    f"CodeEnv: problem id {t.task_id!r} is duplicated or ends with "
                    f"{ALL_TESTS_SUFFIX!r}; ids must be unique"
                )
            self._tasks[t.task_id] = t
        self._public: dict[str, tuple[int, ...]] = {}
        for t in tasks:
            if public_tests == "published" and t.public:
                self._public[t.task_id] = t.public
            else:
                self._public[t.task_id] = public_indices(
                    len(t.tests), public_fraction, split_seed, t.task_id
                )
        self._ids = {
            "train": [t.task_id for t in tasks],
            "test": [t.task_id + ALL_TESTS_SUFFIX for t in tasks],
        }
        self.reward_mode = reward
        self.code_block = code_block
        self.time_limit_s = float(time_limit_s)
        self.memory_limit_mb = int(memory_limit_mb)
        self.compare, self.abs_tol, self.rel_tol = compare, abs_tol, rel_tol
        self.feedback_max_chars = feedback_max_chars
        self.max_code_chars = max_code_chars
        self.system_prompt = system_prompt
        self._sandbox_spec = sandbox
        self._sandbox_kwargs = dict(sandbox_kwargs or {})
        self._sandbox: sandboxes.Sandbox | None = (
            sandbox if isinstance(sandbox, sandboxes.Sandbox) else None
        )
        self._owns_sandbox = not isinstance(sandbox, sandboxes.Sandbox)
        self._lock = threading.Lock()
        # Built now so a bad limit fails at construction, not at the first step.
        self._limits_for(tasks[0])

    @staticmethod
    def _load(
        dataset: str | os.PathLike[str] | Sequence[CodeTask],
        difficulty: str | Sequence[str] | None,
        hub: Mapping[str, Any],
        skipped: SkipCounter,
        limit: int | None = None,
    ) -> list[CodeTask]:
        hub_given = any(v is not None for v in hub.values())
        builtin = isinstance(dataset, (list, tuple)) or dataset in ("shipped", "humaneval")
        if hub_given and builtin:
            given = sorted(k for k, v in hub.items() if v is not None)
            raise CodeDataError(
                f"CodeEnv: {given} apply to a Hugging Face dataset (a hub id, folder or file), "
                f"not to dataset={dataset!r}"
            )
        if isinstance(dataset, (list, tuple)):
            tasks = list(dataset)
            if not all(isinstance(t, CodeTask) for t in tasks):
                raise CodeDataError("CodeEnv: a dataset sequence must hold envs.code.CodeTask")
        elif dataset == "shipped":
            return load_shipped(difficulty)
        elif dataset == "humaneval":
            tasks = load_humaneval()
        elif (
            not hub_given
            and str(dataset).endswith(".jsonl")
            and os.path.isfile(os.fspath(dataset))
        ):  # LCB's own JSONL: read without the datasets library
            tasks = load_lcb_jsonl(os.fspath(dataset), skipped=skipped)
        elif isinstance(dataset, (str, os.PathLike)) and (
            os.path.exists(os.fspath(dataset)) or "/" in os.fspath(dataset)
        ):  # a folder or file, or a hub id "owner/name"
            source = DatasetSource(
                os.fspath(dataset), hub["config"], hub["split"], hub["revision"]
            )
            return load_lcb_dataset(
                source,
                columns=hub["columns"],
                date_from=hub["date_from"],
                date_until=hub["date_until"],
                difficulty=difficulty,
                limit=limit,  # a hub dataset stops decoding private tests there
                skipped=skipped,
            )
        else:
            raise CodeDataError(
                f"CodeEnv: unknown dataset {dataset!r}: use 'shipped', 'humaneval', a path to a "
                "LiveCodeBench-format .jsonl file, a Hugging Face dataset (an existing folder "
                "or Parquet file, or a hub id 'owner/name'), or a list of CodeTask"
            )
        if difficulty is not None:
            wanted = {difficulty} if isinstance(difficulty, str) else set(difficulty)
            tasks = [t for t in tasks if t.difficulty in wanted]
        return tasks

    # ---- tasks ------------------------------------------------------------------------------

    def task_ids(self, split: str = "train") -> Sequence[str]:
        """``"train"``: graded on public tests; ``"test"``: the same problems, all tests."""
        if split not in self._ids:
            raise EnvError(f"CodeEnv: unknown split {split!r}; use 'train' or 'test'")
        return self._ids[split]

    def task(self, task_id: str) -> CodeTask:
        """The :class:`CodeTask` behind a task id (of either split)."""
        return self._resolve(task_id)[0]

    def graded_tests(self, task_id: str) -> tuple[int, ...]:
        """Indices of the tests that grade ``task_id`` (public ones, or all for ``@all`` ids)."""
        task, all_tests = self._resolve(task_id)
        return tuple(range(len(task.tests))) if all_tests else self._public[task.task_id]

    def _resolve(self, task_id: str) -> tuple[CodeTask, bool]:
        all_tests = task_id.endswith(ALL_TESTS_SUFFIX)
        base = task_id[: -len(ALL_TESTS_SUFFIX)] if all_tests else task_id
        try:
            return self._tasks[base], all_tests
        except KeyError:
            close = difflib.get_close_matches(base, list(self._tasks), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise EnvError(f"CodeEnv: unknown task id {task_id!r}{hint}") from None

    def prompt(self, task_id: str) -> list[Message]:
        """The statement, plus how to answer (a stdin program or a completed function)."""
        task, _ = self._resolve(task_id)
        kinds = {t.kind for t in task.tests}
        if "check" in kinds:
            how = "Write the complete function in one ```python code block."
        elif "functional" in kinds:
            how = (
                "Complete this starter code and put the whole solution in one ```python code "
                f"block:\n```python\n{task.starter_code.rstrip()}\n```"
            )
        else:
            how = (
                "Write a complete Python 3 program that reads the input from standard input "
                "and prints the answer to standard output. Put the program in one ```python "
                "code block."
            )
        return user_prompt(f"{task.statement.rstrip()}\n\n{how}", self.system_prompt)

    def gold_answer(self, task_id: str) -> str | None:
        """The reference solution, when the dataset has one."""
        return self._resolve(task_id)[0].reference_solution

    def gold_response(self, task_id: str) -> str | None:
        """The reference solution in a Python code block, as this env grades a response."""
        gold = self.gold_answer(task_id)
        return None if gold is None else f"```python\n{gold.rstrip()}\n```"

    # ---- grading ----------------------------------------------------------------------------

    def evaluate(self, task_id: str, response: str, history: Sequence[Message] = ()) -> Outcome:
        """Grade one response (see the module docstring)."""
        return self.evaluate_many(task_id, [response])[0]

    def evaluate_many(self, task_id: str, responses: Sequence[str]) -> list[Outcome]:
        """Grade a group of responses to one task, running all their tests concurrently."""
        task, all_tests = self._resolve(task_id)
        indices = self.graded_tests(task_id)
        outcomes: list[Outcome | None] = [None] * len(responses)
        programs: dict[int, dict[str, Program]] = {}
        for i, response in enumerate(responses):
            if not isinstance(response, str):
                raise TypeError(f"CodeEnv: responses must be str, got {type(response).__name__}")
            code, problem = self._code_of(response)
            if code is None:
                outcomes[i] = self._format_outcome(problem, len(indices), all_tests)
                continue
            kinds = {task.tests[k].kind for k in indices}
            programs[i] = {kind: build_program(task, code, kind) for kind in kinds}
        if programs:
            results = self._run(task, indices, programs)
            for i, res in results.items():
                outcomes[i] = self._outcome(task, res, all_tests)
        return [o for o in outcomes if o is not None]

    def _code_of(self, response: str) -> tuple[str | None, str]:
        found = extract_code(response, self.code_block)
        if found.code is None:
            return None, found.problem or "no_block"
        if len(found.code) > self.max_code_chars:
            return None, f"too_long:{len(found.code)}"
        return found.code, ""

    def _format_outcome(self, problem: str, n_tests: int, all_tests: bool) -> Outcome:
        if problem == "cut_off":
            text = (
                "Your response was cut off: the last ```python code block is never closed. "
                "Write a shorter answer that ends the code block with ```."
            )
        elif problem == "empty":
            text = "Your ```python code block is empty. Put the complete program inside it."
        elif problem.startswith("too_long:"):
            n = int(problem.split(":", 1)[1])
            text = (
                f"Your program is {n:,} characters long; the limit is "
                f"{self.max_code_chars:,}. Write a shorter program."
            )
        else:
            text = (
                "No code found: put your complete Python program in a code block that starts "
                "with ```python and ends with ```."
            )
        info = self._info([], n_tests, all_tests)
        return Outcome(0.0, Feedback(FeedbackKind.FORMAT, text, source="code"), info=info)

    def _limits_for(self, task: CodeTask) -> sandboxes.Limits:
        t = task.time_limit_s or self.time_limit_s
        mem = task.memory_limit_mb or self.memory_limit_mb
        # Wall time is looser than CPU time so that a busy machine does not cause timeouts;
        # a program that sleeps is still stopped.
        return sandboxes.Limits(wall_time_s=2 * t + 1, cpu_time_s=t, memory_bytes=mem << 20)

    def _get_sandbox(self) -> sandboxes.Sandbox:
        with self._lock:
            if self._sandbox is None:
                self._sandbox = sandboxes.get(self._sandbox_spec, **self._sandbox_kwargs)
            return self._sandbox

    def _run(
        self, task: CodeTask, indices: Sequence[int], programs: Mapping[int, Mapping[str, Program]]
    ) -> dict[int, list[TestResult]]:
        """Run every (response, test) pair on the sandbox pool; skip after a hard failure."""
        sandbox = self._get_sandbox()
        limits = self._limits_for(task)
        stop_early = self.reward_mode == "all"
        # Test-major order: every response's test k starts before any response's test k+1,
        # so skipping after a failure never hides an earlier failure (deterministic feedback).
        jobs = [(pos, i) for pos in range(len(indices)) for i in programs]
        first_failure = {i: len(indices) for i in programs}
        results: dict[int, list[TestResult]] = {i: [] for i in programs}
        lock = threading.Lock()
        cursor = iter(jobs)

        def worker() -> None:
            while True:
                with lock:
                    job = next(cursor, None)
                    if job is None:
                        return
                    pos, i = job
                    index = indices[pos]
                    test = task.tests[index]
                    if stop_early and first_failure[i] < pos:
                        results[i].append(TestResult(index, test, Verdict.SKIPPED))
                        continue
                program = programs[i][test.kind]
                result = self._grade(task, test, index, program, sandbox, limits)
                with lock:
                    results[i].append(result)
                    if result.verdict in HARD_FAILURES:
                        first_failure[i] = min(first_failure[i], pos)

        n_workers = max(1, min(getattr(sandbox, "max_workers", 1), len(jobs)))
        if n_workers == 1:
            worker()
        else:
            with ThreadPoolExecutor(n_workers, thread_name_prefix="code-grader") as pool:
                for f in [pool.submit(worker) for _ in range(n_workers)]:
                    f.result()
        return {i: sorted(r, key=lambda x: x.index) for i, r in results.items()}

    def _grade(
        self,
        task: CodeTask,
        test: CodeTest,
        index: int,
        program: Program,
        sandbox: sandboxes.Sandbox,
        limits: sandboxes.Limits,
    ) -> TestResult:
        """Run one test and decide its verdict here, in the trusted parent."""
        if test.kind == "check":
            return self._grade_check(task, test, index, program, sandbox, limits)
        try:
            if test.kind == "stdin":
                r = sandbox.run(program.source, test.input, limits)
            else:
                r = sandbox.run_function(program.source, CALL_ENTRY, test.args_json(), limits)
        except sandboxes.SandboxError as e:  # the judge is down: no verdict, not a failure
            return TestResult(
                index, test, Verdict.SANDBOX_ERROR, message=f"{type(e).__name__}: {e}"
            )
        return self._judge(test, index, program, r)

    def _judge(
        self, test: CodeTest, index: int, program: Program, r: sandboxes.ExecutionResult
    ) -> TestResult:
        """The verdict of a finished run, for everything but a check's pass or fail."""
        status = r.status
        S = sandboxes.ExecutionStatus
        if status is S.SANDBOX_ERROR:
            return TestResult(index, test, Verdict.SANDBOX_ERROR, message=r.message)
        if status is S.TIMEOUT:
            return TestResult(index, test, Verdict.TIMEOUT, message=r.message)
        if status is S.MEMORY_LIMIT:
            return TestResult(index, test, Verdict.MEMORY_LIMIT, message=r.message)
        if status is S.OUTPUT_LIMIT:
            err = ErrorDetails("OutputLimitExceeded", r.message, last_input=test.input)
            return TestResult(index, test, Verdict.OUTPUT_LIMIT, error=err, message=r.message)
        if status is S.OK:
            if test.kind == "stdin":
                ok = outputs_match(
                    r.stdout, test.output, self.compare, abs_tol=self.abs_tol, rel_tol=self.rel_tol
                )
                verdict = Verdict.PASSED if ok else Verdict.WRONG_ANSWER
                return TestResult(index, test, verdict, actual=r.stdout)
            if test.kind == "functional" and r.return_json is not None:
                try:
                    loads_bounded(r.return_json)
                except ReturnValueError as e:  # the program's failure, never the grader's
                    err = ErrorDetails(
                        "ValueError", f"your function's return value cannot be graded: {e}"
                    )
                    return TestResult(index, test, Verdict.RUNTIME_ERROR, error=err)
                ok = json_match(r.return_json, json.loads(test.output), rel_tol=self.rel_tol)
                verdict = Verdict.PASSED if ok else Verdict.WRONG_ANSWER
                return TestResult(index, test, verdict, actual=r.return_json)
        return self._runtime_error(test, index, program, r)

    def _grade_check(
        self,
        task: CodeTask,
        test: CodeTest,
        index: int,
        program: Program,
        sandbox: sandboxes.Sandbox,
        limits: sandboxes.Limits,
    ) -> TestResult:
        """Run the recorded calls in the sandbox, then replay ``check`` here on the answers."""
        calls = json.loads(test.output)
        for _round in range(MAX_CHECK_ROUNDS):
            try:
                r = sandbox.run_function(
                    program.source, CHECK_ENTRY, json.dumps([json.dumps(calls)]), limits
                )
            except sandboxes.SandboxError as e:
                return TestResult(
                    index, test, Verdict.SANDBOX_ERROR, message=f"{type(e).__name__}: {e}"
                )
            answers = _check_answers(r) if r.status is sandboxes.ExecutionStatus.OK else None
            if answers is None:
                return self._judge(test, index, program, r)
            outputs, raised = answers
            try:
                replay = replay_check(task, calls, outputs, raised)
            except (ValueError, TypeError, RecursionError) as e:  # answers that are not values
                err = ErrorDetails("TypeError", f"your function's return value is unusable: {e}")
                return TestResult(index, test, Verdict.RUNTIME_ERROR, error=err)
            if replay.outcome == "passed":
                return TestResult(index, test, Verdict.PASSED)
            if replay.outcome == "failed":
                err = ErrorDetails(replay.error_type, replay.message, None, replay.check_line)
                return TestResult(index, test, Verdict.WRONG_ANSWER, error=err, in_test_code=True)
            if replay.outcome == "raised":
                result = self._runtime_error(test, index, program, r)
                assert result.error is not None
                err = dataclasses.replace(result.error, last_input=replay.check_line)
                return dataclasses.replace(result, error=err)
            calls = [*calls, replay.need]
        err = ErrorDetails(
            "AssertionError",
            f"the check needed more than {MAX_CHECK_ROUNDS} rounds of calls",
            None,
            None,
        )
        return TestResult(index, test, Verdict.WRONG_ANSWER, error=err, in_test_code=True)

    @staticmethod
    def _runtime_error(
        test: CodeTest, index: int, program: Program, r: sandboxes.ExecutionResult
    ) -> TestResult:
        error_type, message, frames = parse_traceback(r.stderr)
        if not error_type and test.kind != "stdin" and r.exit_code is not None:
            error_type = "SystemExit"
            message = "your program exited (sys.exit or os._exit) before the tests finished"
        elif not error_type:
            error_type = "SystemExit"
            message = message or r.message or "the program stopped early"
        located = [loc for loc in (program.locate(f) for f in frames) if loc is not None]
        line = line_text = None
        in_test = bool(located) and located[-1][0] == "test"
        if located and not in_test:
            _, line, line_text = located[-1]
        test_lines = [loc[2] for loc in located if loc[0] == "test"]
        if in_test:
            line_text = test_lines[-1]
        last_input = test.input if test.kind != "check" else None
        err = ErrorDetails(error_type, message, line, line_text, last_input)
        return TestResult(index, test, Verdict.RUNTIME_ERROR, error=err, in_test_code=in_test)

    def _outcome(self, task: CodeTask, results: list[TestResult], all_tests: bool) -> Outcome:
        info = self._info(results, len(results), all_tests)
        broken = [r for r in results if r.verdict is Verdict.SANDBOX_ERROR]
        if broken:
            # Only the sandbox's own failure leaves the reward missing; the key tells it apart
            # from a program's failure (a 0) for whoever counts missing rewards.
            info["sandbox_error"] = broken[0].message or "sandbox error"
            text = f"The sandbox failed while grading ({broken[0].message}); no verdict."
            return Outcome(None, Feedback(FeedbackKind.OTHER, text, source="code"), info=info)
        passed = sum(r.verdict is Verdict.PASSED for r in results)
        feedback = code_feedback(
            results,
            max_chars=self.feedback_max_chars,
            time_limit_s=task.time_limit_s or self.time_limit_s,
            memory_limit_mb=task.memory_limit_mb or self.memory_limit_mb,
        )
        all_passed = passed == len(results)
        if self.reward_mode == "fraction":
            reward = passed / len(results)
        else:
            reward = 1.0 if all_passed else 0.0
        return Outcome(reward, feedback, success=all_passed, info=info)

    @staticmethod
    def _info(results: Sequence[TestResult], n_tests: int, all_tests: bool) -> dict[str, Any]:
        return {
            "tests_passed": sum(r.verdict is Verdict.PASSED for r in results),
            "tests_total": n_tests,
            "graded_on": "all" if all_tests else "public",
            "verdicts": [r.verdict.value for r in results],
        }

    def close(self) -> None:
        """Close the sandbox the env created (a sandbox passed in is left open)."""
        with self._lock:
            if self._sandbox is not None and self._owns_sandbox:
                self._sandbox.close()
                self._sandbox = None
        super().close()
