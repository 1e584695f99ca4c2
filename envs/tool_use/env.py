"""The tool-use environment: prompts with the tool list, validation, grading, multi-turn."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from typing import Any

import jsonschema

from envs._text import last_tagged
from envs.hf_data import DatasetSource, SkipCounter
from envs.tool_use.data import (
    SAMPLE_PATH,
    GoldCall,
    ToolTask,
    load_tool_dataset,
    load_tool_tasks_jsonl,
)
from envs.tool_use.matching import best_assignment, compare_call, short_json
from envs.tool_use.parsing import (
    TAG_CLOSE,
    TAG_OPEN,
    ToolCall,
    parse_react_calls,
    parse_tool_calls,
)
from envs.tool_use.schemas import json_pointer, to_json_schema
from envs.tool_use.toolsets import TOOLSETS
from rlrf.env import Message, Outcome, RLRFEnv
from rlrf.errors import ConfigError
from rlrf.feedback import (
    Feedback,
    FeedbackKind,
    SchemaViolation,
    ToolCallDetails,
    truncate_text,
)

__all__ = ["MAX_CALLS_PER_TURN", "ToolUseEnv"]

_MAX_MESSAGE_CHARS = 300
#: Calls read from one response; more are ignored with ``format`` feedback. Bounds the work of
#: a turn and, for multi-turn tasks, the tool messages it adds to the transcript.
MAX_CALLS_PER_TURN = 32


_SINGLE_TURN_INSTRUCTIONS = (
    "To call a function, answer with one block per call:\n"
    '<tool_call>{"name": "function_name", "arguments": {"arg": "value"}}</tool_call>\n'
    "Make every call the request needs, with arguments that follow the schema."
)
_MULTI_TURN_INSTRUCTIONS = (
    "To call a function, answer with one block per call:\n"
    '<tool_call>{"name": "function_name", "arguments": {"arg": "value"}}</tool_call>\n'
    "The results come back in tool messages. When you know the answer, reply without a tool "
    "call and put the final answer inside <answer></answer>."
)


def _tool_message(payload: dict[str, Any]) -> str:
    """The JSON of a tool result; a result JSON cannot hold becomes an error, not a crash."""
    try:
        return json.dumps(payload, ensure_ascii=False, default=str)
    except (ValueError, RecursionError, TypeError) as e:  # a 5,000-digit int, deep nesting
        error = f"the tool's result cannot be sent as JSON ({type(e).__name__})"
        return json.dumps({"name": payload.get("name"), "error": error}, ensure_ascii=False)


class ToolUseEnv(RLRFEnv):
    """Tool-calling tasks validated with JSON Schema and checked against ground truth.

    Args:
        tasks: A JSONL path (see :func:`load_tool_tasks_jsonl`) or :class:`ToolTask`
            objects; default: the shipped set.
        max_turns: Turns per episode for multi-turn tasks (single-turn tasks end after one).
        reveal_gold: Name the allowed values in ``tool_error`` feedback on a wrong value.
        partial_credit: Reward the fraction of ground-truth calls matched instead of 0/1.
        strict_arguments: Reject arguments that the schema does not list (BFCL does).
        system_prompt: Text placed before the tool list in the system message (not used by
            ReAct tasks, whose prompt is the dataset's own).
        dataset: A Hugging Face dataset instead of ``tasks``: a hub id, a ``save_to_disk``
            folder, or a Parquet/JSONL file (see :func:`envs.tool_use.data.load_tool_dataset`;
            the default mapping reads the paper's ToolAlpaca split).
        dataset_config: The hub config of ``dataset``.
        dataset_split: The split of ``dataset`` (default ``"train"``).
        dataset_revision: The hub revision of ``dataset``.
        columns: The column mapping: ``"toolalpaca"``, ``"rlrf"`` or ``{field: column}``.
        limit: Keep the first ``limit`` tasks of ``dataset``.
        test_fraction: The share of ``dataset`` rows without a split held out as ``"test"``.

    """

    def __init__(
        self,
        tasks: str | os.PathLike[str] | Iterable[ToolTask] | None = None,
        *,
        max_turns: int = 5,
        reveal_gold: bool = False,
        partial_credit: bool = False,
        strict_arguments: bool = True,
        system_prompt: str = "You are a helpful assistant that can call functions.",
        dataset: str | None = None,
        dataset_config: str | None = None,
        dataset_split: str | None = None,
        dataset_revision: str | None = None,
        columns: str | dict[str, str] | None = None,
        limit: int | None = None,
        test_fraction: float = 0.1,
    ) -> None:
        #: Rows of ``dataset`` left out, by reason.
        self.skipped = SkipCounter()
        if dataset is not None:
            if tasks is not None:
                raise ConfigError("ToolUseEnv: pass tasks or dataset, not both")
            source = DatasetSource(dataset, dataset_config, dataset_split, dataset_revision)
            task_list = load_tool_dataset(
                source,
                columns=columns,
                limit=limit,
                test_fraction=test_fraction,
                skipped=self.skipped,
            )
        elif tasks is None or isinstance(tasks, (str, os.PathLike)):
            task_list = load_tool_tasks_jsonl(tasks or SAMPLE_PATH)
        else:
            task_list = list(tasks)
        if not task_list:
            raise ConfigError("ToolUseEnv needs at least one task")
        if max_turns < 1:
            raise ConfigError(f"max_turns must be >= 1, got {max_turns}")
        self._tasks = {t.id: t for t in task_list}
        if len(self._tasks) != len(task_list):
            raise ConfigError("ToolUseEnv: task ids must be unique")
        self._ids: dict[str, list[str]] = {"train": [], "test": []}
        for t in task_list:
            self._ids.setdefault(t.split, []).append(t.id)
        self.splits = tuple(sorted(self._ids, key=lambda s: (s != "train", s)))
        self.max_turns = max_turns if any(t.toolset for t in task_list) else 1
        self.reveal_gold = reveal_gold
        self.partial_credit = partial_credit
        self.strict_arguments = strict_arguments
        self.system_prompt = system_prompt
        self._validators: dict[tuple[str, str], jsonschema.protocols.Validator] = {}

    # ---- the task set ----

    def task(self, task_id: str) -> ToolTask:
        """Return the :class:`ToolTask` of ``task_id``."""
        try:
            return self._tasks[task_id]
        except KeyError:
            raise KeyError(f"unknown tool task id {task_id!r}") from None

    def task_ids(self, split: str = "train") -> Sequence[str]:
        """Return the ids of ``split``."""
        return self._ids.get(split, [])

    def tools(self, task_id: str) -> list[dict[str, Any]]:
        """The task's tools in the OpenAI format (for chat templates that take ``tools=``)."""
        return self.task(task_id).tools

    def prompt(self, task_id: str) -> list[Message]:
        """A system message listing the tools and the call format, then the request."""
        task = self.task(task_id)
        if task.call_format == "react":  # the dataset's own prompt: tools, format, question
            return [dict(m) for m in task.messages]  # type: ignore[misc]
        listing = "\n".join(
            json.dumps(t["function"], ensure_ascii=False, sort_keys=True) for t in task.tools
        )
        extra = [m["content"] for m in task.messages if m["role"] == "system"]
        how = _MULTI_TURN_INSTRUCTIONS if task.toolset else _SINGLE_TURN_INSTRUCTIONS
        system = "\n\n".join(
            [self.system_prompt, *extra, f"Available functions:\n<tools>\n{listing}\n</tools>", how]
        )
        return [{"role": "system", "content": system}] + [
            dict(m) for m in task.messages if m["role"] != "system"
        ]  # type: ignore[return-value]

    def gold_answer(self, task_id: str) -> str | None:
        """A correct single-turn response (``None`` for multi-turn tasks)."""
        task = self.task(task_id)
        if task.toolset:
            return None
        if task.call_format == "react":
            return "\n".join(
                f"Action: {g.name}\nAction Input: "
                + json.dumps(g.example_arguments(), ensure_ascii=False)
                for g in task.ground_truth
            )
        return "\n".join(
            TAG_OPEN
            + json.dumps({"name": g.name, "arguments": g.example_arguments()}, ensure_ascii=False)
            + TAG_CLOSE
            for g in task.ground_truth
        )

    # ---- validation ----

    def _validator(self, task: ToolTask, name: str) -> jsonschema.protocols.Validator | None:
        key = (task.id, name)
        if key not in self._validators:
            spec = next((f for f in task.functions if f.get("name") == name), None)
            if spec is None:
                return None
            schema = to_json_schema(
                spec.get("parameters") or {"type": "object"}, strict=self.strict_arguments
            )
            try:
                jsonschema.Draft202012Validator.check_schema(schema)
            except jsonschema.SchemaError as e:
                raise ConfigError(
                    f"task {task.id!r}: the parameters schema of {name!r} is not a valid "
                    f"Draft 2020-12 schema: {e.message}"
                ) from e
            self._validators[key] = jsonschema.Draft202012Validator(schema)
        return self._validators[key]

    def _check_call(self, task: ToolTask, k: int, call: ToolCall) -> Feedback | None:
        """Format/unknown-function/schema problems of one call, as feedback (None if fine)."""
        label = f"Call #{k}" + (f" to '{call.name}'" if call.name else "")
        if call.error is not None:
            return Feedback(
                FeedbackKind.FORMAT,
                f"{label}: {call.error}.",
                ToolCallDetails(call.name or None),
                "tool_use",
            )
        validator = self._validator(task, call.name)
        if validator is None:
            names = ", ".join(f"'{f['name']}'" for f in task.functions)
            return Feedback(
                FeedbackKind.TOOL_ERROR,
                f"{label}: there is no function named '{call.name}'; available: {names}.",
                ToolCallDetails(call.name),
                "tool_use",
            )
        errors = sorted(validator.iter_errors(call.arguments), key=lambda e: list(e.path))
        if not errors:
            return None
        violations = tuple(
            SchemaViolation(
                json_pointer(e.absolute_path),
                truncate_text(e.message, _MAX_MESSAGE_CHARS),
                str(e.validator),
            )
            for e in errors
        )
        lines = [
            f"- at {v.pointer or 'the top level'} ({v.validator}): {v.message}" for v in violations
        ]
        text = f"{label}: the arguments violate the function's schema:\n" + "\n".join(lines)
        return Feedback(
            FeedbackKind.TOOL_VALIDATION,
            truncate_text(text, self.feedback_max_chars),
            ToolCallDetails(call.name, violations),
            "tool_use",
        )

    def _parse(
        self, task: ToolTask, response: str
    ) -> tuple[list[ToolCall], list[Feedback], list[bool]]:
        """Parse and check the calls: ``(calls, feedback, whether each call is valid)``.

        At most :data:`MAX_CALLS_PER_TURN` calls are kept (the rest is a format problem).
        """
        parse = parse_react_calls if task.call_format == "react" else parse_tool_calls
        calls, errors = parse(response)
        feedback = [
            Feedback(FeedbackKind.FORMAT, truncate_text(msg + ".", 500), source="tool_use")
            for msg in errors[:MAX_CALLS_PER_TURN]
        ]
        if len(calls) > MAX_CALLS_PER_TURN:
            feedback.insert(
                0,
                Feedback(
                    FeedbackKind.FORMAT,
                    f"Your response makes {len(calls)} function calls; at most "
                    f"{MAX_CALLS_PER_TURN} per turn are read, so the rest were ignored. Make "
                    "only the calls the request needs.",
                    source="tool_use",
                ),
            )
            calls = calls[:MAX_CALLS_PER_TURN]
        valid = []
        for k, call in enumerate(calls, 1):
            fb = self._check_call(task, k, call)
            valid.append(fb is None)
            if fb is not None:
                feedback.append(fb)
        return calls, feedback, valid

    # ---- grading ----

    def evaluate(self, task_id: str, response: str, history: Sequence[Message] = ()) -> Outcome:
        """Grade one turn; see the module docstring for rewards and feedback."""
        task = self.task(task_id)
        if task.toolset:
            return self._evaluate_multi_turn(task, response, history)
        calls, feedback, valid = self._parse(task, response)
        if not calls and not feedback:
            how = (
                "with an 'Action: name' line followed by 'Action Input: {...}' (a JSON object)"
                if task.call_format == "react"
                else 'as <tool_call>{"name": ..., "arguments": {...}}</tool_call>'
            )
            return Outcome(
                0.0,
                Feedback(
                    FeedbackKind.FORMAT,
                    f"Your response makes no tool call. Call the function(s) the request needs "
                    f"{how}.",
                    source="tool_use",
                ),
            )
        matched = self._match(task, calls, valid, feedback)
        n_gold = len(task.ground_truth)
        info = {"n_calls": len(calls), "n_matched": matched}
        if not feedback and matched == n_gold == len(calls):
            return Outcome(1.0, success=True, info=info)
        reward = matched / max(n_gold, len(calls), 1) if self.partial_credit else 0.0
        return Outcome(reward, tuple(self._capped(feedback)), success=False, info=info)

    def _capped(self, feedback: list[Feedback]) -> list[Feedback]:
        cap = self.feedback_max_chars
        return [
            f
            if len(f.text) <= cap
            else Feedback(f.kind, truncate_text(f.text, cap), f.details, f.source)
            for f in feedback[:20]
        ]

    def _match(
        self, task: ToolTask, calls: list[ToolCall], valid: list[bool], feedback: list[Feedback]
    ) -> int:
        """Compare ``calls`` with the ground truth; append problems; return how many match.

        Calls that already failed parsing or validation are not compared again (their
        problem is reported once), but they still count towards the number of calls.
        """
        gold = list(task.ground_truth)
        if len(calls) != len(gold):
            feedback.append(
                Feedback(
                    FeedbackKind.TOOL_ERROR,
                    f"The request needs {len(gold)} function call(s); you made {len(calls)}.",
                    source="tool_use",
                )
            )
        if not calls or not gold:
            return 0
        if task.ordered:
            pairs = [(i, i) for i in range(min(len(calls), len(gold)))]
            if len(calls) == len(gold) and all(valid):
                unordered = self._pairs_unordered(calls, gold)
                if all(not compare_call(calls[i], gold[j], False) for i, j in unordered) and any(
                    i != j for i, j in unordered
                ):
                    feedback.append(
                        Feedback(
                            FeedbackKind.TOOL_ERROR,
                            "The calls are right but in the wrong order: make them in the "
                            "order the request describes.",
                            source="tool_use",
                        )
                    )
                    return 0
        else:
            pairs = self._pairs_unordered(calls, gold)
        matched = 0
        for i, j in pairs:
            if not valid[i]:
                continue
            problems = compare_call(calls[i], gold[j], self.reveal_gold)
            if not problems:
                matched += 1
                continue
            text = f"Call #{i + 1} to '{calls[i].name}': " + "; ".join(problems) + "."
            feedback.append(
                Feedback(
                    FeedbackKind.TOOL_ERROR,
                    truncate_text(text, self.feedback_max_chars),
                    ToolCallDetails(calls[i].name),
                    "tool_use",
                )
            )
        return matched

    @staticmethod
    def _pairs_unordered(calls: list[ToolCall], gold: list[GoldCall]) -> list[tuple[int, int]]:
        """Pair calls with gold calls so that the fewest problems remain."""
        n = max(len(calls), len(gold))
        # Pad to a square matrix; a padded pair costs a lot so real pairs win.
        cost = [
            [
                len(compare_call(calls[i], gold[j], False)) + (calls[i].name != gold[j].name) * 5
                if i < len(calls) and j < len(gold)
                else 100
                for j in range(n)
            ]
            for i in range(n)
        ]
        assignment = best_assignment(cost)
        return [(i, assignment[i]) for i in range(len(calls)) if assignment[i] < len(gold)]

    # ---- multi-turn ----

    def _replay_calls(self, task: ToolTask, history: Sequence[Message]) -> list[ToolCall]:
        """The valid calls made in earlier assistant turns of this episode."""
        done = []
        for m in history:
            if m.get("role") != "assistant":
                continue
            calls, _ = parse_tool_calls(m.get("content", ""))
            calls = calls[:MAX_CALLS_PER_TURN]  # as many as were executed in that turn
            done.extend(c for c in calls if self._check_call(task, 1, c) is None)
        return done

    def _evaluate_multi_turn(
        self, task: ToolTask, response: str, history: Sequence[Message]
    ) -> Outcome:
        toolset = TOOLSETS[task.toolset]  # type: ignore[index]
        calls, feedback, valid = self._parse(task, response)
        earlier = self._replay_calls(task, history)
        if not calls and not feedback:
            return self._final_answer(task, response, earlier)
        backends = toolset.factory()
        for call in earlier:  # rebuild the backends' state: the env itself is stateless
            try:
                backends[call.name](**(call.arguments or {}))
            except Exception:
                continue
        results: list[Message] = []
        for k, (call, ok) in enumerate(zip(calls, valid, strict=False), 1):
            if not ok or call.name not in backends:
                payload = {"name": call.name, "error": "not executed: the call is invalid"}
            else:
                try:
                    payload = {
                        "name": call.name,
                        "result": backends[call.name](**(call.arguments or {})),
                    }
                except Exception as e:  # a backend error is feedback, not a crash
                    message = truncate_text(f"{type(e).__name__}: {e}", _MAX_MESSAGE_CHARS)
                    payload = {"name": call.name, "error": message}
                    feedback.append(
                        Feedback(
                            FeedbackKind.TOOL_ERROR,
                            f"Call #{k} to '{call.name}' failed: {message}",
                            ToolCallDetails(call.name),
                            "tool_use",
                        )
                    )
            results.append({"role": "tool", "content": _tool_message(payload)})
        if not results:  # unreadable blocks only: say so in the next observation too
            results.append(
                {"role": "tool", "content": json.dumps({"error": "no readable tool call"})}
            )
        return Outcome(
            0.0,
            tuple(self._capped(feedback)),
            success=False,
            done=False,
            observation=tuple(results),
            info={"n_calls": len(calls)},
        )

    def _final_answer(self, task: ToolTask, response: str, earlier: list[ToolCall]) -> Outcome:
        problems = []
        missing = [
            g for g in task.ground_truth if not any(not compare_call(c, g, False) for c in earlier)
        ]
        if missing:
            names = ", ".join(sorted({f"'{g.name}'" for g in missing}))
            detail = (
                "" if not self.reveal_gold else " (" + "; ".join(self._gold_text(missing)) + ")"
            )
            problems.append(
                Feedback(
                    FeedbackKind.TOOL_ERROR,
                    f"You answered before making every call the request needs: no matching "
                    f"call to {names} was made{detail}.",
                    source="tool_use",
                )
            )
        ok_answer = True
        if task.answer:
            tagged = last_tagged(response, "answer", strip=False)  # linear, unlike a lazy regex
            text = (response if tagged is None else tagged).lower()
            ok_answer = any(
                re.search(rf"(?<![\w.]){re.escape(a.lower())}(?![\w])", text) for a in task.answer
            )
            if not ok_answer:
                problems.append(
                    Feedback(
                        FeedbackKind.WRONG_ANSWER,
                        "Your final answer does not match what the tool results give. Use "
                        "the tools' results and put the answer inside <answer></answer>.",
                        source="tool_use",
                    )
                )
        if not problems:
            return Outcome(1.0, success=True)
        return Outcome(0.0, tuple(problems), success=False)

    @staticmethod
    def _gold_text(golds: list[GoldCall]) -> list[str]:
        return [f"{g.name}({short_json(g.example_arguments(), 200)})" for g in golds]
