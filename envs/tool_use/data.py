"""Tool-use tasks: the ground truth, the task record, and the loaders (JSONL, HF datasets)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jsonschema

from envs._jsonl import hash_split, jsonl_records
from envs.hf_data import ColumnMap, DatasetSource, SkipCounter, load_rows, resolve_columns
from envs.tool_use.schemas import to_json_schema
from envs.tool_use.toolsets import TOOLSETS
from rlrf.env import Message, user_prompt
from rlrf.errors import ConfigError, RLRFWarning

__all__ = [
    "SAMPLE_PATH",
    "TOOL_COLUMNS",
    "GoldCall",
    "ToolTask",
    "load_tool_dataset",
    "load_tool_tasks_jsonl",
    "task_from_json",
]

CallFormat = Literal["tags", "react"]

#: The shipped task set.
SAMPLE_PATH = Path(__file__).parent.parent / "data" / "tool_use" / "tasks.jsonl"


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
        call_format: ``"tags"`` (the env's prompt: the tool list and ``<tool_call>`` blocks)
            or ``"react"`` (ToolAlpaca's: ``messages`` are the dataset's own prompt, shown as
            is, and calls are ``Action:`` / ``Action Input:`` lines).

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
    call_format: CallFormat = "tags"

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


class ToolDataWarning(RLRFWarning):
    """Rows of a tool-use dataset were skipped; the message counts them by reason."""


#: The built-in column mappings of :func:`load_tool_dataset` (field -> column).
TOOL_COLUMNS: dict[str, ColumnMap] = {
    # The paper's ToolAlpaca split (the SDPO reference code's datasets/tooluse/*.json): the
    # whole ReAct prompt (tool documentation, format, question) and the gold actions as JSON
    # text: [{"Action": name, "Action_Input": "{json}"}, ...].
    "toolalpaca": ColumnMap(
        "toolalpaca",
        {"prompt": "prompt", "answer": "answer", "id": "idx", "system": "system", "split": "split"},
        frozenset({"prompt", "answer"}),
    ),
    # This package's JSONL fields (see load_tool_tasks_jsonl).
    "rlrf": ColumnMap(
        "rlrf",
        {
            "id": "id",
            "question": "question",
            "functions": "functions",
            "ground_truth": "ground_truth",
            "ordered": "ordered",
            "toolset": "toolset",
            "answer": "answer",
            "split": "split",
        },
        frozenset({"id", "question", "functions", "ground_truth"}),
    ),
}

_JSON_TYPES = {"string", "integer", "number", "boolean", "array", "object"}
_FUNCTION_LINE = re.compile(r"^([A-Za-z_][\w.\-]*):\s")


def _parameter_schema(raw: Mapping[str, Any]) -> dict[str, Any]:
    """ToolAlpaca's ``{"arg": "type. description"}`` as a JSON Schema object (nothing required)."""
    props: dict[str, Any] = {}
    for name, text in raw.items():
        desc = str(text)
        head = desc.split(".", 1)[0].strip().lower()
        prop: dict[str, Any] = {"description": desc}
        if head in _JSON_TYPES:
            prop["type"] = head
        props[str(name)] = prop
    return {"type": "object", "properties": props}


def functions_from_react_prompt(prompt: str) -> list[dict[str, Any]]:
    """The functions a ToolAlpaca prompt documents: ``name: description`` then ``Parameters:``.

    Each becomes ``{"name", "description", "parameters"}`` with a JSON Schema built from the
    documented types (no argument is required: ToolAlpaca does not say which are).
    """
    functions: list[dict[str, Any]] = []
    lines = prompt.splitlines()
    for i, line in enumerate(lines):
        if not line.startswith("Parameters:") or i == 0:
            continue
        head = _FUNCTION_LINE.match(lines[i - 1])
        if head is None or head.group(1) in ("Name", "Description", "Documentation"):
            continue
        try:
            raw = json.loads(line[len("Parameters:") :].strip() or "{}")
        except ValueError:
            raw = {}
        functions.append(
            {
                "name": head.group(1),
                "description": lines[i - 1][head.end() :].strip(),
                "parameters": _parameter_schema(raw if isinstance(raw, dict) else {}),
            }
        )
    return functions


def _react_gold(answer: Any) -> tuple[GoldCall, ...]:
    items = json.loads(answer) if isinstance(answer, str) else answer
    if not isinstance(items, list) or not items:
        raise ValueError("the answer is not a non-empty JSON list of actions")
    gold = []
    for item in items:
        args = item["Action_Input"]
        args = json.loads(args) if isinstance(args, str) and args.strip() else (args or {})
        if not isinstance(args, dict):
            raise ValueError(f"Action_Input of {item['Action']!r} is not a JSON object")
        # ToolAlpaca's "" means "not specified": optional in BFCL's notation, like omitting it
        gold.append(GoldCall(str(item["Action"]), {k: (v,) for k, v in args.items()}))
    return tuple(gold)


def _fit_schemas(
    functions: list[dict[str, Any]], gold: tuple[GoldCall, ...]
) -> list[dict[str, Any]]:
    """Drop the types of a function whose own gold call they would refuse (noisy docs)."""
    out = []
    for f in functions:
        schema = f["parameters"]
        validator = jsonschema.Draft202012Validator(schema)
        if any(
            g.name == f["name"] and not validator.is_valid(g.example_arguments()) for g in gold
        ):
            props = {k: {"description": v.get("description", "")} for k, v in
                     schema["properties"].items()}
            f = {**f, "parameters": {"type": "object", "properties": props}}
        out.append(f)
    return out


def _toolalpaca_task(rec: Mapping[str, Any], test_fraction: float) -> ToolTask:
    prompt = rec["prompt"]
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("the prompt is empty")
    gold = _react_gold(rec["answer"])
    functions = functions_from_react_prompt(prompt)
    known = {f["name"] for f in functions}
    for g in gold:  # a gold action the prompt does not document: still callable, any args
        if g.name not in known:
            functions.append({"name": g.name, "description": "", "parameters": {"type": "object"}})
            known.add(g.name)
    if rec.get("id") not in (None, ""):
        task_id = f"toolalpaca-{rec['id']}"
    else:
        task_id = "toolalpaca-" + hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:12]
    messages: list[Message] = []
    if isinstance(rec.get("system"), str) and rec["system"].strip():
        messages.append({"role": "system", "content": rec["system"]})
    messages.append({"role": "user", "content": prompt})
    return ToolTask(
        id=task_id,
        messages=tuple(messages),
        functions=tuple(_fit_schemas(functions, gold)),
        ground_truth=gold,
        split=str(rec.get("split") or hash_split(task_id, test_fraction)),
        call_format="react",
    )


def load_tool_dataset(
    source: DatasetSource | str,
    *,
    columns: str | Mapping[str, str] | None = None,
    limit: int | None = None,
    test_fraction: float = 0.1,
    skipped: SkipCounter | None = None,
) -> list[ToolTask]:
    """Load tool-use tasks from a Hugging Face dataset (see :mod:`envs.hf_data`).

    Args:
        source: The dataset (a :class:`DatasetSource` or a hub id / path).
        columns: A built-in mapping (:data:`TOOL_COLUMNS`): ``"toolalpaca"`` (the default; the
            paper's ToolAlpaca split: a ReAct ``prompt`` and the gold ``answer`` actions) or
            ``"rlrf"`` (this package's JSONL fields); or ``{field: column}`` overrides of the
            default one.
        limit: Keep the first ``limit`` tasks.
        test_fraction: For rows without a split, the share held out as ``"test"`` (a stable
            hash of the id). A dataset with several splits (a hub dataset, a saved
            ``DatasetDict``, a folder holding ``train.json`` and ``test.json`` like the paper's
            ToolAlpaca split) keeps its own, unless ``dataset_split`` picks one.
        skipped: Counts the rows left out (a warning says how many either way).

    Raises:
        DatasetColumnsError: a required column is missing (the message lists the columns
            found and the mapping expected).

    """
    if isinstance(source, str):
        source = DatasetSource(source)
    mapping = resolve_columns(columns, TOOL_COLUMNS, "toolalpaca")
    rows, found = load_rows(source, default_split="train", keep_splits=True)
    mapping.check(found, source)
    skipped = skipped if skipped is not None else SkipCounter()
    tasks: list[ToolTask] = []
    seen: set[str] = set()
    for i, row in enumerate(rows):
        rec = {k: v for k, v in mapping.apply(row).items() if v is not None}
        where = f"row {i}"
        try:
            if "prompt" in mapping.columns:
                task = _toolalpaca_task(rec, test_fraction)
            else:
                task = task_from_json(rec, where, test_fraction)
        except (ConfigError, ValueError, KeyError, TypeError, AttributeError):
            skipped.add("malformed", where)
            continue
        if task.id in seen:
            skipped.add("duplicate", where)
            continue
        seen.add(task.id)
        tasks.append(task)
        if limit is not None and len(tasks) >= limit:
            break
    if skipped.total:
        warnings.warn(
            f"dataset {source.describe()}: skipped {skipped.summary()}",
            ToolDataWarning,
            stacklevel=2,
        )
    if not tasks:
        raise ConfigError(f"dataset {source.describe()} holds no usable tool-use task")
    return tasks
