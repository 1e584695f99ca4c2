"""JSON Schema for tool parameters: BFCL's flavour mapped onto Draft 2020-12."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

__all__ = ["json_pointer", "to_json_schema"]

_BFCL_TYPES = {"dict": "object", "float": "number", "tuple": "array"}


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


def json_pointer(path: Iterable[Any]) -> str:
    """The JSON pointer (RFC 6901) of a path of keys and indices, ``""`` for the top."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)
