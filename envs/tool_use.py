"""Tool (function) calling with JSON Schema validation (``rlrf/ToolUse-v0``).

A task is a user request, the tools the model may call (OpenAI ``tools`` format: a name, a
description and JSON Schema ``parameters``), the ground-truth calls, and optionally a
*toolset* of executable Python backends that makes the task multi-turn.

The response calls tools either with the chat-template tags
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (one block per call) or with
OpenAI-style JSON (``{"tool_calls": [{"function": {"name": ..., "arguments": "..."}}]}``,
a bare list of calls, or one call object, optionally in a code fence). Double-encoded
``arguments`` strings are decoded.

Each call is validated with ``jsonschema`` (Draft 2020-12; BFCL's ``dict``/``float``/
``tuple``/``any`` types are mapped to ``object``/``number``/``array``/no constraint), then
compared with the ground truth in BFCL's style: the function names, every required argument
present, no unexpected argument, every value among the allowed ones (strings compared
case- and punctuation-insensitively, ``5`` equal to ``5.0``), order ignored unless the task
says it matters.

Reward (single-turn): 1.0 when every call parses, validates and matches the ground truth,
else 0.0 (or the fraction of ground-truth calls matched, with ``partial_credit=True``).

Feedback:

* ``format``: no tool call found, or a call that is not valid JSON (with the decoder's
  message and position);
* ``tool_validation``: every schema violation of a call, each with its JSON pointer and the
  validator's message (also in :class:`~rlrf.feedback.ToolCallDetails`);
* ``tool_error``: a call to an unknown function, the wrong number of calls, a missing or
  unexpected argument, a wrong value. It says what is wrong without pasting the gold call
  (set ``reveal_gold=True`` to name the allowed values), and for multi-turn tasks a backend
  that raised.

Multi-turn (tasks with a ``toolset``): a response with tool calls is executed against fresh
backends after replaying the episode's earlier calls (the env keeps no state between
steps); the results return as ``tool`` messages in the next observation and the episode goes
on (reward 0.0 for that step). A response without a tool call is the final answer, rewarded
1.0 when it names the expected answer and every ground-truth call was made during the
episode. Episodes are truncated after ``max_turns`` turns.

Data: :func:`load_tool_tasks_jsonl` (the format of the shipped set in
``envs/data/tool_use/tasks.jsonl``: 16 single-turn and 6 multi-turn tasks) and
:func:`envs.bfcl.load_bfcl` (BFCL's simple, multiple and parallel categories).
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema

from envs._jsonl import hash_split, jsonl_records
from rlrf.env import Message, Outcome, RLRFEnv, user_prompt
from rlrf.errors import ConfigError
from rlrf.feedback import (
    Feedback,
    FeedbackKind,
    SchemaViolation,
    ToolCallDetails,
    truncate_text,
)

__all__ = [
    "SAMPLE_PATH",
    "TOOLSETS",
    "GoldCall",
    "ToolCall",
    "ToolTask",
    "ToolUseEnv",
    "Toolset",
    "load_tool_tasks_jsonl",
    "parse_tool_calls",
    "register_toolset",
    "to_json_schema",
]

#: The shipped task set.
SAMPLE_PATH = Path(__file__).parent / "data" / "tool_use" / "tasks.jsonl"

_BFCL_TYPES = {"dict": "object", "float": "number", "tuple": "array"}
_MAX_JSON_ATTEMPTS = 64
_MAX_MESSAGE_CHARS = 300


# ---- schemas ------------------------------------------------------------------------------


def to_json_schema(schema: Any, *, strict: bool = False) -> Any:
    """Return a Draft 2020-12 JSON Schema for a (possibly BFCL-flavoured) parameter schema.

    BFCL's ``"dict"``, ``"float"`` and ``"tuple"`` become ``"object"``, ``"number"`` and
    ``"array"``; ``"any"`` drops the type constraint. With ``strict``, an object schema that
    lists ``properties`` and says nothing about ``additionalProperties`` rejects unknown
    keys at its top level (BFCL's checker rejects unexpected arguments the same way).
    """
    out = copy.deepcopy(schema)

    def fix(node: Any, top: bool) -> None:
        if isinstance(node, list):
            for x in node:
                fix(x, False)
            return
        if not isinstance(node, dict):
            return
        t = node.get("type")
        if isinstance(t, str):
            if t == "any":
                del node["type"]
            elif t in _BFCL_TYPES:
                node["type"] = _BFCL_TYPES[t]
        elif isinstance(t, list):
            node["type"] = [_BFCL_TYPES.get(x, x) for x in t if x != "any"] or None
            if node["type"] is None:
                del node["type"]
        if isinstance(node.get("required"), bool):  # draft-3 style, invalid in 2020-12
            del node["required"]
        if strict and top and "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for key in ("properties", "patternProperties", "$defs", "definitions"):
            if isinstance(node.get(key), dict):
                for sub in node[key].values():
                    fix(sub, False)
        for key in ("items", "additionalProperties", "not", "if", "then", "else", "contains"):
            if isinstance(node.get(key), (dict, list)):
                fix(node[key], False)
        for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
            if isinstance(node.get(key), list):
                fix(node[key], False)

    fix(out, True)
    return out


def _pointer(path: Iterable[Any]) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


# ---- parsing ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolCall:
    """One tool call read from a response.

    Attributes:
        name: The function name (``""`` when the call had none).
        arguments: The decoded arguments, or ``None`` when they could not be decoded.
        error: Why the call could not be read, else ``None``.

    """

    name: str
    arguments: dict[str, Any] | None
    error: str | None = None


def _decode_arguments(raw: Any) -> tuple[dict[str, Any] | None, str | None]:
    value = raw
    for _ in range(3):  # tolerate double (and triple) encoded JSON strings
        if not isinstance(value, str):
            break
        if not value.strip():
            value = {}
            break
        try:
            value = json.loads(value)
        except (json.JSONDecodeError, RecursionError) as e:
            msg = getattr(e, "msg", type(e).__name__)
            where = f" at line {e.lineno} column {e.colno}" if hasattr(e, "lineno") else ""
            return None, f"its arguments are not valid JSON ({msg}{where})"
    if value is None:
        value = {}
    if not isinstance(value, dict):
        return None, f"its arguments must be a JSON object, got {type(value).__name__}"
    return value, None


def _calls_from_json(value: Any) -> list[ToolCall] | None:
    """Read calls out of a decoded JSON value; ``None`` when it does not look like calls."""
    if isinstance(value, dict) and isinstance(value.get("tool_calls"), list):
        value = value["tool_calls"]
    items = value if isinstance(value, list) else [value]
    if not items:
        return None
    calls: list[ToolCall] = []
    for item in items:
        if not isinstance(item, dict):
            return None
        if isinstance(item.get("function"), dict):  # OpenAI: {"type": "function", "function": {}}
            item = item["function"]
        if "name" in item:
            name = item.get("name")
            raw_args = item.get("arguments", item.get("parameters", {}))
        elif len(item) == 1 and isinstance(next(iter(item.values())), (dict, str)):
            name, raw_args = next(iter(item.items()))  # BFCL style {"fn": {...}}
        else:
            return None
        if not isinstance(name, str) or not name.strip():
            calls.append(ToolCall("", None, "it has no function name"))
            continue
        args, error = _decode_arguments(raw_args)
        calls.append(ToolCall(name.strip(), args, error))
    return calls


_TAG_OPEN = "<tool_call>"
_TAG_CLOSE = "</tool_call>"
_FENCE_RE = re.compile(r"```(?:json|JSON)?\s*\n(.*?)```", re.S)


def _json_error(e: Exception) -> str:
    if isinstance(e, json.JSONDecodeError):
        return f"{e.msg} at line {e.lineno} column {e.colno}"
    return type(e).__name__


def parse_tool_calls(response: str) -> tuple[list[ToolCall], list[str]]:
    """Read the tool calls of a response.

    Returns:
        ``(calls, errors)``: the calls in order (a call whose arguments could not be
        decoded has ``error`` set) and messages about ``<tool_call>`` blocks that are not
        JSON at all. Both empty means the response makes no tool call.

    """
    calls: list[ToolCall] = []
    errors: list[str] = []
    if _TAG_OPEN in response:
        chunks = response.split(_TAG_OPEN)[1:]
        for k, chunk in enumerate(chunks, 1):
            body = chunk.split(_TAG_CLOSE, 1)[0].strip()
            fenced = _FENCE_RE.search(body)
            if fenced:
                body = fenced.group(1).strip()
            try:
                value = json.loads(body)
            except (json.JSONDecodeError, RecursionError) as e:
                errors.append(f"<tool_call> block #{k} is not valid JSON ({_json_error(e)})")
                continue
            found = _calls_from_json(value)
            if found is None:
                errors.append(
                    f'<tool_call> block #{k} is JSON but not a call: use {{"name": "...", '
                    '"arguments": {...}}'
                )
            else:
                calls.extend(found)
        return calls, errors
    candidates = [m.group(1) for m in _FENCE_RE.finditer(response)]
    stripped = response.strip()
    if stripped[:1] in "{[":
        candidates.append(stripped)
    for text in candidates:
        try:
            found = _calls_from_json(json.loads(text))
        except (json.JSONDecodeError, RecursionError):
            continue
        if found:
            return found, errors
    # Scan for an embedded JSON value (prose around it), bounded for huge responses.
    decoder = json.JSONDecoder()
    attempts = 0
    for m in re.finditer(r"[{\[]", response):
        attempts += 1
        if attempts > _MAX_JSON_ATTEMPTS:
            break
        try:
            value, _ = decoder.raw_decode(response, m.start())
        except (json.JSONDecodeError, RecursionError):
            continue
        found = _calls_from_json(value)
        if found:
            return found, errors
    if stripped.startswith(("{", "[")) or '"name"' in response:
        try:
            json.loads(stripped)
        except (json.JSONDecodeError, RecursionError) as e:
            errors.append(f"the tool call is not valid JSON ({_json_error(e)})")
    return calls, errors


# ---- tasks, toolsets ----------------------------------------------------------------------


@dataclass(frozen=True)
class GoldCall:
    """One ground-truth call in BFCL's style.

    Attributes:
        name: The function name.
        allowed: For each argument, the allowed values; ``""`` among them marks the
            argument optional (it may be left out).

    """

    name: str
    allowed: Mapping[str, tuple[Any, ...]]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GoldCall:
        """Build from ``{"fn": {"arg": [allowed, ...]}}`` or ``{"name", "arguments"}``."""
        if "name" in data and "arguments" in data:
            return cls(str(data["name"]), {k: (v,) for k, v in dict(data["arguments"]).items()})
        if len(data) != 1:
            raise ConfigError(
                f"ground-truth call {data!r} must be {{'fn': {{'arg': [allowed...]}}}} or "
                "{'name': ..., 'arguments': {...}}"
            )
        name, args = next(iter(data.items()))
        allowed = {
            k: tuple(v) if isinstance(v, list) else (v,) for k, v in dict(args or {}).items()
        }
        return cls(str(name), allowed)

    def example_arguments(self) -> dict[str, Any]:
        """One valid argument dict: the first allowed value of each non-omitted argument."""
        return {k: _example(v) for k, v in _first_allowed(self.allowed).items()}


def _first_allowed(allowed: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, values in allowed.items():
        alts = values if isinstance(values, (list, tuple)) else [values]
        chosen = next((v for v in alts if v != ""), None)
        if chosen is not None:
            out[k] = chosen
    return out


def _example(value: Any) -> Any:
    """A concrete value from a BFCL gold value (nested dicts hold lists of alternatives)."""
    if isinstance(value, dict):
        return {k: _example(v) for k, v in _first_allowed(value).items()}
    if isinstance(value, list):
        return [_example(x) if isinstance(x, dict) else x for x in value]
    return value


@dataclass(frozen=True)
class Toolset:
    """Executable tool backends for multi-turn tasks.

    Attributes:
        specs: The functions' specs (``{"name", "description", "parameters"}``).
        factory: Returns fresh backends (name -> callable) with fresh state per episode.

    """

    specs: tuple[dict[str, Any], ...]
    factory: Callable[[], Mapping[str, Callable[..., Any]]]


#: Toolsets by name; tasks refer to them with ``"toolset": "<name>"``.
TOOLSETS: dict[str, Toolset] = {}


def register_toolset(name: str, toolset: Toolset, *, override: bool = False) -> None:
    """Make ``toolset`` available to tasks as ``"toolset": name``."""
    if name in TOOLSETS and not override:
        raise ConfigError(f"toolset {name!r} is already registered; pass override=True")
    TOOLSETS[name] = toolset


@dataclass(frozen=True)
class ToolTask:
    """One tool-use task.

    Attributes:
        id: Unique task id.
        messages: The request (user and optional system messages).
        functions: The callable functions: ``{"name", "description", "parameters"}``.
        ground_truth: The calls that solve the task.
        ordered: Whether the calls must come in the ground truth's order.
        toolset: Name of a registered :class:`Toolset` (makes the task multi-turn).
        answer: For multi-turn tasks: acceptable final answers (any one suffices).
        split: ``"train"`` or ``"test"``.

    """

    id: str
    messages: tuple[Message, ...]
    functions: tuple[dict[str, Any], ...]
    ground_truth: tuple[GoldCall, ...]
    ordered: bool = False
    toolset: str | None = None
    answer: tuple[str, ...] = ()
    split: str = "train"
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def tools(self) -> list[dict[str, Any]]:
        """The functions in the OpenAI ``tools`` format, with standard JSON Schema types."""
        return [
            {
                "type": "function",
                "function": {
                    "name": f["name"],
                    "description": f.get("description", ""),
                    "parameters": to_json_schema(f.get("parameters", {"type": "object"})),
                },
            }
            for f in self.functions
        ]


def task_from_json(rec: Mapping[str, Any], where: str, test_fraction: float = 0.2) -> ToolTask:
    """Build a :class:`ToolTask` from a JSON record (see :func:`load_tool_tasks_jsonl`)."""
    try:
        task_id = str(rec["id"])
        question = rec.get("messages", rec.get("question"))
        if isinstance(question, str):
            question = user_prompt(question)
        if isinstance(question, list) and question and isinstance(question[0], list):
            question = question[0]  # BFCL: a list of turns, each a list of messages
        messages = tuple({"role": m["role"], "content": str(m["content"])} for m in question)
        toolset = rec.get("toolset")
        if toolset is not None and toolset not in TOOLSETS:
            raise ConfigError(f"unknown toolset {toolset!r}; registered: {sorted(TOOLSETS)}")
        functions = rec.get("functions", rec.get("function", rec.get("tools")))
        if functions is None and toolset is not None:
            functions = list(TOOLSETS[toolset].specs)
        functions = [f["function"] if "function" in f else f for f in functions or []]
        gold = tuple(GoldCall.from_json(g) for g in rec.get("ground_truth", []))
        answer = rec.get("answer", ())
        answer = (answer,) if isinstance(answer, (str, int, float)) else tuple(answer)
    except (KeyError, TypeError, AttributeError) as e:
        raise ConfigError(
            f"{where}: malformed tool task ({type(e).__name__}: {e}); needs 'id', "
            "'question' or 'messages', 'functions', 'ground_truth'"
        ) from e
    if not messages or not functions:
        raise ConfigError(f"{where}: task {task_id!r} needs a request and at least one function")
    if not gold and toolset is None:
        raise ConfigError(f"{where}: single-turn task {task_id!r} needs 'ground_truth' calls")
    return ToolTask(
        id=task_id,
        messages=messages,
        functions=tuple(functions),
        ground_truth=gold,
        ordered=bool(rec.get("ordered", False)),
        toolset=toolset,
        answer=tuple(str(a) for a in answer),
        split=str(rec.get("split") or hash_split(task_id, test_fraction)),
    )


def load_tool_tasks_jsonl(
    path: str | os.PathLike[str] = SAMPLE_PATH, *, test_fraction: float = 0.2
) -> list[ToolTask]:
    """Load tool tasks from JSONL: one object per line.

    Fields: ``id``; ``question`` (a string or chat messages); ``functions`` (specs with
    JSON Schema or BFCL-style ``parameters``; optional with a ``toolset``); ``ground_truth``
    (BFCL-style ``[{"fn": {"arg": [allowed, ...]}}]``); optional ``ordered``, ``toolset``,
    ``answer`` (multi-turn final answers) and ``split`` (else a stable hash split).
    """
    return [
        task_from_json(rec, where, test_fraction)
        for where, rec in jsonl_records(path, "tool task file")
    ]


# ---- comparing with the ground truth ------------------------------------------------------

_STD_RE = re.compile(r"[ ,./\-_*^]")


def _std(value: Any) -> Any:
    if isinstance(value, str):
        return _STD_RE.sub("", value).lower().replace("'", '"')
    return value


def _same(value: Any, gold: Any) -> bool:
    """BFCL-style equality of one value with one allowed value."""
    if isinstance(gold, dict):
        if not isinstance(value, dict):
            return False
        if set(value) - set(gold):
            return False
        for k, allowed in gold.items():
            alts = allowed if isinstance(allowed, list) else [allowed]
            if k not in value:
                if "" not in alts:
                    return False
            elif not any(a != "" and _same(value[k], a) for a in alts):
                return False
        return True
    if isinstance(gold, (list, tuple)):
        return (
            isinstance(value, (list, tuple))
            and len(value) == len(gold)
            and all(_same(v, g) for v, g in zip(value, gold, strict=False))
        )
    if isinstance(gold, bool) or isinstance(value, bool):
        return isinstance(gold, bool) and isinstance(value, bool) and gold == value
    if isinstance(gold, (int, float)) and isinstance(value, (int, float)):
        return math.isclose(float(value), float(gold), rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(gold, str) and isinstance(value, str):
        return _std(value) == _std(gold)
    return False


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _compare(call: ToolCall, gold: GoldCall, reveal: bool) -> list[str]:
    """The problems of ``call`` against ``gold`` (empty when it matches)."""
    if call.name != gold.name:
        return [f"'{call.name}' is not the function this call should use"]
    args = call.arguments or {}
    problems = []
    for k, alts in gold.allowed.items():
        if k not in args:
            if "" not in alts:
                problems.append(f"the required argument '{k}' is missing")
        elif not any(a != "" and _same(args[k], a) for a in alts):
            hint = ""
            if reveal:
                hint = "; allowed: " + ", ".join(_short(a) for a in alts if a != "")
            problems.append(f"argument '{k}' has the wrong value {_short(args[k])}{hint}")
    for k in args:
        if k not in gold.allowed:
            problems.append(f"argument '{k}' should not be given")
    return problems


def _best_assignment(cost: list[list[int]]) -> list[int]:
    """For each call, the gold index it pairs with, minimizing the total cost."""
    n = len(cost)
    if n <= 6:
        best = min(
            itertools.permutations(range(n)),
            key=lambda p: sum(cost[i][p[i]] for i in range(n)),
        )
        return list(best)
    free, out = set(range(n)), []
    for i in range(n):  # greedy beyond 6 calls: 720 permutations is the exact limit
        j = min(free, key=lambda j: cost[i][j])
        free.discard(j)
        out.append(j)
    return out


# ---- the env ------------------------------------------------------------------------------


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


class ToolUseEnv(RLRFEnv):
    """Tool-calling tasks validated with JSON Schema and checked against ground truth.

    Args:
        tasks: A JSONL path (see :func:`load_tool_tasks_jsonl`) or :class:`ToolTask`
            objects; default: the shipped set.
        max_turns: Turns per episode for multi-turn tasks (single-turn tasks end after one).
        reveal_gold: Name the allowed values in ``tool_error`` feedback on a wrong value.
        partial_credit: Reward the fraction of ground-truth calls matched instead of 0/1.
        strict_arguments: Reject arguments that the schema does not list (BFCL does).
        system_prompt: Text placed before the tool list in the system message.

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
    ) -> None:
        if tasks is None or isinstance(tasks, (str, os.PathLike)):
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
        return "\n".join(
            _TAG_OPEN
            + json.dumps({"name": g.name, "arguments": g.example_arguments()}, ensure_ascii=False)
            + _TAG_CLOSE
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
                _pointer(e.absolute_path),
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
        """Parse and check the calls: ``(calls, feedback, whether each call is valid)``."""
        calls, errors = parse_tool_calls(response)
        feedback = [
            Feedback(FeedbackKind.FORMAT, truncate_text(msg + ".", 500), source="tool_use")
            for msg in errors
        ]
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
            return Outcome(
                0.0,
                Feedback(
                    FeedbackKind.FORMAT,
                    "Your response makes no tool call. Call the function(s) the request needs "
                    'as <tool_call>{"name": ..., "arguments": {...}}</tool_call>.',
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
                if all(not _compare(calls[i], gold[j], False) for i, j in unordered) and any(
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
            problems = _compare(calls[i], gold[j], self.reveal_gold)
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
                len(_compare(calls[i], gold[j], False)) + (calls[i].name != gold[j].name) * 5
                if i < len(calls) and j < len(gold)
                else 100
                for j in range(n)
            ]
            for i in range(n)
        ]
        assignment = _best_assignment(cost)
        return [(i, assignment[i]) for i in range(len(calls)) if assignment[i] < len(gold)]

    # ---- multi-turn ----

    def _replay_calls(self, task: ToolTask, history: Sequence[Message]) -> list[ToolCall]:
        """The valid calls made in earlier assistant turns of this episode."""
        done = []
        for m in history:
            if m.get("role") != "assistant":
                continue
            calls, _ = parse_tool_calls(m.get("content", ""))
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
            results.append(
                {"role": "tool", "content": json.dumps(payload, ensure_ascii=False, default=str)}
            )
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
            g for g in task.ground_truth if not any(not _compare(c, g, False) for c in earlier)
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
            m = re.findall(r"<answer>(.*?)</answer>", response, re.S)
            text = (m[-1] if m else response).lower()
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
        return [f"{g.name}({_short(g.example_arguments(), 200)})" for g in golds]


# ---- the shipped toolsets (stdlib only) ---------------------------------------------------

_WEATHER = {
    "paris": (20, "sunny"),
    "london": (15, "rainy"),
    "tokyo": (25, "cloudy"),
    "new york": (18, "windy"),
    "sydney": (22, "sunny"),
}


def _weather_backends() -> dict[str, Callable[..., Any]]:
    def get_weather(city: str, unit: str = "celsius") -> dict[str, Any]:
        key = city.strip().lower()
        if key not in _WEATHER:
            raise KeyError(f"no weather data for {city!r}; known: {sorted(_WEATHER)}")
        temp, sky = _WEATHER[key]
        if unit == "fahrenheit":
            temp = round(temp * 9 / 5 + 32)
        return {"city": city, "temperature": temp, "unit": unit, "conditions": sky}

    def convert_currency(amount: float, source: str, target: str) -> dict[str, Any]:
        rates = {"USD": 1.0, "EUR": 0.5, "JPY": 100.0, "GBP": 0.25}
        if source not in rates or target not in rates:
            raise ValueError(f"unsupported currency; supported: {sorted(rates)}")
        return {"amount": round(amount / rates[source] * rates[target], 2), "currency": target}

    return {"get_weather": get_weather, "convert_currency": convert_currency}


def _inventory_backends() -> dict[str, Callable[..., Any]]:
    stock = {"apple": 10, "banana": 5, "cherry": 0}

    def get_stock(item: str) -> dict[str, Any]:
        if item not in stock:
            raise KeyError(f"unknown item {item!r}; known: {sorted(stock)}")
        return {"item": item, "quantity": stock[item]}

    def restock(item: str, quantity: int) -> dict[str, Any]:
        if item not in stock:
            raise KeyError(f"unknown item {item!r}; known: {sorted(stock)}")
        stock[item] += quantity
        return {"item": item, "quantity": stock[item]}

    def sell(item: str, quantity: int) -> dict[str, Any]:
        if item not in stock:
            raise KeyError(f"unknown item {item!r}; known: {sorted(stock)}")
        if stock[item] < quantity:
            raise ValueError(f"only {stock[item]} {item}(s) in stock, cannot sell {quantity}")
        stock[item] -= quantity
        return {"item": item, "quantity": stock[item]}

    return {"get_stock": get_stock, "restock": restock, "sell": sell}


def _spec(name: str, description: str, props: dict[str, Any], required: list[str]) -> dict:
    return {
        "name": name,
        "description": description,
        "parameters": {"type": "object", "properties": props, "required": required},
    }


register_toolset(
    "weather",
    Toolset(
        specs=(
            _spec(
                "get_weather",
                "Current weather of a city.",
                {
                    "city": {"type": "string", "description": "City name, e.g. 'Paris'."},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                ["city"],
            ),
            _spec(
                "convert_currency",
                "Convert an amount of money between currencies (USD, EUR, JPY, GBP).",
                {
                    "amount": {"type": "number", "minimum": 0},
                    "source": {"type": "string", "enum": ["USD", "EUR", "JPY", "GBP"]},
                    "target": {"type": "string", "enum": ["USD", "EUR", "JPY", "GBP"]},
                },
                ["amount", "source", "target"],
            ),
        ),
        factory=_weather_backends,
    ),
)
register_toolset(
    "inventory",
    Toolset(
        specs=(
            _spec(
                "get_stock",
                "How many units of an item the shop has.",
                {"item": {"type": "string", "description": "Item name, e.g. 'apple'."}},
                ["item"],
            ),
            _spec(
                "restock",
                "Add units of an item to the stock; returns the new quantity.",
                {"item": {"type": "string"}, "quantity": {"type": "integer", "minimum": 1}},
                ["item", "quantity"],
            ),
            _spec(
                "sell",
                "Remove sold units of an item from the stock; returns the new quantity.",
                {"item": {"type": "string"}, "quantity": {"type": "integer", "minimum": 1}},
                ["item", "quantity"],
            ),
        ),
        factory=_inventory_backends,
    ),
)
