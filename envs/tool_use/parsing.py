"""Reading tool calls out of a response: ``<tool_call>`` tags, OpenAI-style JSON, or ReAct.

ReAct (:func:`parse_react_calls`) is ToolAlpaca's format, used by the paper's tool-use
setting: ``Action: name`` then ``Action Input: {json}``, once per call.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from envs._numbers import NumberTooLongError, json_error_message, loads_json, raw_decode_json

__all__ = ["TAG_CLOSE", "TAG_OPEN", "ToolCall", "parse_react_calls", "parse_tool_calls"]

#: The tags around one call in the chat-template format.
TAG_OPEN = "<tool_call>"
TAG_CLOSE = "</tool_call>"

_MAX_JSON_ATTEMPTS = 64
_FENCE_RE = re.compile(r"```(?:json|JSON)?\s*\n(.*?)```", re.S)
_REACT_RE = re.compile(r"^[ \t]*Action:[ \t]*([^\n]*)\n[ \t]*Action Input:[ \t]*", re.M)


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
            value = loads_json(value)
        except (ValueError, RecursionError) as e:
            return None, f"its arguments are not valid JSON ({json_error_message(e)})"
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


def parse_tool_calls(response: str) -> tuple[list[ToolCall], list[str]]:
    """Read the tool calls of a response.

    Returns:
        ``(calls, errors)``: the calls in order (a call whose arguments could not be
        decoded has ``error`` set) and messages about ``<tool_call>`` blocks that are not
        JSON at all. Both empty means the response makes no tool call.

    """
    calls: list[ToolCall] = []
    errors: list[str] = []
    if TAG_OPEN in response:
        chunks = response.split(TAG_OPEN)[1:]
        for k, chunk in enumerate(chunks, 1):
            body = chunk.split(TAG_CLOSE, 1)[0].strip()
            fenced = _FENCE_RE.search(body)
            if fenced:
                body = fenced.group(1).strip()
            try:
                value = loads_json(body)
            except (ValueError, RecursionError) as e:
                errors.append(f"<tool_call> block #{k} is not valid JSON ({json_error_message(e)})")
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
    too_long: NumberTooLongError | None = None  # say so when that is all that went wrong
    for text in candidates:
        try:
            found = _calls_from_json(loads_json(text))
        except NumberTooLongError as e:
            too_long = too_long or e
            continue
        except (ValueError, RecursionError):
            continue
        if found:
            return found, errors
    # Scan for an embedded JSON value (prose around it), bounded for huge responses.
    attempts = 0
    for m in re.finditer(r"[{\[]", response):
        attempts += 1
        if attempts > _MAX_JSON_ATTEMPTS:
            break
        try:
            value, _ = raw_decode_json(response, m.start())
        except NumberTooLongError as e:
            too_long = too_long or e
            continue
        except (ValueError, RecursionError):
            continue
        found = _calls_from_json(value)
        if found:
            return found, errors
    if stripped.startswith(("{", "[")) or '"name"' in response:
        if too_long is not None:
            errors.append(f"the tool call is not valid JSON ({too_long})")
            return calls, errors
        try:
            loads_json(stripped)
        except (ValueError, RecursionError) as e:
            errors.append(f"the tool call is not valid JSON ({json_error_message(e)})")
    return calls, errors


def parse_react_calls(response: str) -> tuple[list[ToolCall], list[str]]:
    """Read ReAct calls: ``Action: name`` followed by ``Action Input: {...}`` (a JSON object).

    ToolAlpaca writes an unspecified argument as ``""``; such arguments are dropped, so giving
    ``""`` and leaving the argument out mean the same. An input that is not a JSON object is a
    call with ``error`` set.

    Returns:
        ``(calls, errors)`` as :func:`parse_tool_calls` does; ``errors`` stays empty (a broken
        call carries its own error).

    """
    calls: list[ToolCall] = []
    for m in _REACT_RE.finditer(response):
        name = m.group(1).strip().strip("`'\"")
        if not name:
            calls.append(ToolCall("", None, "its Action line names no function"))
            continue
        try:
            value, _ = raw_decode_json(response, m.end())
        except (ValueError, RecursionError) as e:
            error = f"its Action Input is not valid JSON ({json_error_message(e)})"
            calls.append(ToolCall(name, None, error))
            continue
        args, error = _decode_arguments(value)
        if args is not None:
            args = {k: v for k, v in args.items() if v != ""}
        calls.append(ToolCall(name, args, error))
    return calls, []
