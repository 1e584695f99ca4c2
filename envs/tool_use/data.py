"""Tool-use tasks: the ground truth, the task record, and the JSONL loader."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from envs._jsonl import hash_split, jsonl_records
from envs.tool_use.schemas import to_json_schema
from envs.tool_use.toolsets import TOOLSETS
from rlrf.env import Message, user_prompt
from rlrf.errors import ConfigError

__all__ = ["SAMPLE_PATH", "GoldCall", "ToolTask", "load_tool_tasks_jsonl", "task_from_json"]

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
