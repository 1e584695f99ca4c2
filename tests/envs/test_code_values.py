"""The tagged JSON codec that carries a check's return values out of the sandbox."""

import json
import math

import pytest

from envs.code_program import decode_value, encode_value

VALUES = [
    None, True, 0, -7, 2**80, 1.5, "x\u00e9", [], [1, [2.0, "a"]], (), (1, (2, [3])),
    {"a": 1}, {1: "one", (1, 2): [3]}, {1, 2, 3}, frozenset({"a"}), b"\x00\xff",
    complex(1, -2), float("inf"), float("-inf"), [True, 1, 1.0],
]  # fmt: skip


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_round_trip_keeps_value_and_type(value):
    text = json.dumps(encode_value(value), allow_nan=False)  # strict JSON
    back = decode_value(json.loads(text))
    assert back == value and type(back) is type(value)
    if isinstance(value, list):
        assert [type(x) for x in back] == [type(x) for x in value]


def test_nan_round_trips():
    assert math.isnan(decode_value(json.loads(json.dumps(encode_value(float("nan"))))))


class Eq(int):
    def __eq__(self, other):
        return True

    __hash__ = int.__hash__


@pytest.mark.parametrize("value", [Eq(1), [Eq(1)], object(), {"k": print}, type("S", (str,), {})()])
def test_anything_but_plain_builtins_is_refused(value):
    with pytest.raises(TypeError, match="plain built-in values"):
        encode_value(value)


@pytest.mark.parametrize(
    "data", [{"x": 1}, {"t": 1, "d": 2}, {"f": "1e999x"}, {"b": 5}, {}, {"__class__": "Eq"}]
)
def test_forged_tags_are_refused(data):
    with pytest.raises((ValueError, TypeError)):
        decode_value(data)
