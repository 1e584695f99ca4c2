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
  message and position; an integer over :data:`envs._numbers.MAX_INT_DIGITS` digits counts
  as invalid), or more than :data:`~envs.tool_use.env.MAX_CALLS_PER_TURN` (32) calls in one
  response (the rest are ignored);
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

The package is split by concern: :mod:`~envs.tool_use.schemas` (BFCL types to JSON Schema),
:mod:`~envs.tool_use.parsing` (calls out of a response), :mod:`~envs.tool_use.data` (tasks,
ground truth, the loader), :mod:`~envs.tool_use.matching` (BFCL-style comparison),
:mod:`~envs.tool_use.toolsets` (executable backends and their registry) and
:mod:`~envs.tool_use.env` (:class:`ToolUseEnv`).
"""

from envs.tool_use.data import (
    SAMPLE_PATH,
    GoldCall,
    ToolTask,
    load_tool_tasks_jsonl,
    task_from_json,
)
from envs.tool_use.env import ToolUseEnv
from envs.tool_use.parsing import ToolCall, parse_tool_calls
from envs.tool_use.schemas import to_json_schema
from envs.tool_use.toolsets import TOOLSETS, Toolset, register_toolset

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
    "task_from_json",
    "to_json_schema",
]
