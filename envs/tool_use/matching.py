"""Comparing calls with the ground truth, in the semantics of BFCL's AST checker."""

from __future__ import annotations

import itertools
import json
import math
import re
from typing import Any

from envs._numbers import to_float
from envs.tool_use.data import GoldCall
from envs.tool_use.parsing import ToolCall

__all__ = ["best_assignment", "compare_call", "short_json"]

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
        if isinstance(gold, int) and isinstance(value, int):
            return value == gold  # exact, and no OverflowError for ints beyond float range
        return math.isclose(to_float(value), to_float(gold), rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(gold, str) and isinstance(value, str):
        return _std(value) == _std(gold)
    return False


def short_json(value: Any, limit: int = 80) -> str:
    """``value`` as JSON, cut to ``limit`` characters."""
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except (ValueError, RecursionError):  # nested deeper than the encoder goes
        text = f"<{type(value).__name__} nested too deeply to show>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def compare_call(call: ToolCall, gold: GoldCall, reveal: bool) -> list[str]:
    """The problems of ``call`` against ``gold`` (empty when it matches).

    With ``reveal``, a wrong value's problem names the allowed values.
    """
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
                hint = "; allowed: " + ", ".join(short_json(a) for a in alts if a != "")
            problems.append(f"argument '{k}' has the wrong value {short_json(args[k])}{hint}")
    for k in args:
        if k not in gold.allowed:
            problems.append(f"argument '{k}' should not be given")
    return problems


def best_assignment(cost: list[list[int]]) -> list[int]:
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
