"""ToolUseEnv: parsing, schema validation, ground-truth comparison, multi-turn, BFCL data."""

from __future__ import annotations

import json
import time

import pytest

import rlrf
from envs.bfcl import BFCLEnv, load_bfcl
from envs.tool_use import (
    GoldCall,
    ToolTask,
    ToolUseEnv,
    parse_tool_calls,
    to_json_schema,
)
from rlrf import FeedbackKind


@pytest.fixture(scope="module")
def env() -> ToolUseEnv:
    return ToolUseEnv()


def call(name: str, **arguments) -> str:
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}) + "</tool_call>"


def grade(env: ToolUseEnv, task_id: str, response: str):
    outcome = env.evaluate(task_id, response, env.prompt(task_id))
    return outcome, [(f.kind, f.text) for f in outcome.feedback_items]


def test_shipped_set_passes_check_env(env):
    rlrf.check_env(env)
    assert env.max_turns == 5 and len(env.task_ids("test")) == 4


def test_every_gold_answer_earns_full_reward(env):
    graded = 0
    for task_id in [*env.task_ids("train"), *env.task_ids("test")]:
        gold = env.gold_answer(task_id)
        if gold is not None:
            assert grade(env, task_id, gold)[0].reward == 1.0, task_id
            graded += 1
    assert graded > 0


@pytest.mark.parametrize(
    "response",
    [
        call("get_weather", city="Sydney", unit="fahrenheit"),
        '{"tool_calls": [{"type": "function", "function": {"name": "get_weather", '
        '"arguments": "{\\"city\\": \\"sydney\\", \\"unit\\": \\"fahrenheit\\"}"}}]}',
        'Calling now:\n```json\n[{"name": "get_weather", "arguments": '
        '{"city": "Sydney", "unit": "fahrenheit"}}]\n```',
        # double-encoded arguments inside the tag
        "<tool_call>"
        + json.dumps(
            {
                "name": "get_weather",
                "arguments": json.dumps(json.dumps({"city": "Sydney", "unit": "fahrenheit"})),
            }
        )
        + "</tool_call>",
    ],
)
def test_call_formats_are_all_understood(env, response):
    assert grade(env, "tu-weather-2", response)[0].reward == 1.0


def test_schema_violations_name_pointer_and_validator(env):
    response = call("send_email", to="bob at example", subject="", body="hi", cc="x")
    outcome, feedback = grade(env, "tu-email-1", response)
    assert outcome.reward == 0.0
    kinds = [k for k, _ in feedback]
    assert kinds == [FeedbackKind.TOOL_VALIDATION]  # reported once, not again as a mismatch
    details = outcome.feedback_items[0].details
    pointers = {(v.pointer, v.validator) for v in details.violations}
    assert pointers == {("", "additionalProperties"), ("/subject", "minLength"), ("/to", "pattern")}
    assert "at /to (pattern)" in feedback[0][1]


def test_wrong_type_is_a_schema_violation(env):
    outcome, feedback = grade(env, "tu-timer-1", call("set_timer", minutes="fifteen"))
    assert feedback[0][0] is FeedbackKind.TOOL_VALIDATION
    assert outcome.feedback_items[0].details.violations[0].pointer == "/minutes"


def test_unknown_function_is_a_tool_error_listing_the_available_ones(env):
    _, feedback = grade(env, "tu-weather-2", call("get_wether", city="Sydney"))
    assert feedback == [
        (
            FeedbackKind.TOOL_ERROR,
            "Call #1 to 'get_wether': there is no function named 'get_wether'; "
            "available: 'get_weather'.",
        )
    ]


def test_malformed_json_is_format_feedback_with_position(env):
    outcome, feedback = grade(
        env,
        "tu-weather-2",
        '<tool_call>{"name": "get_weather", "arguments": {"city": 5}</tool_call>',
    )
    assert outcome.reward == 0.0
    assert feedback[0][0] is FeedbackKind.FORMAT
    assert "not valid JSON (Expecting ',' delimiter at line 1 column" in feedback[0][1]


def test_wrong_value_does_not_reveal_the_gold_unless_asked(env):
    response = call("get_weather", city="Paris", unit="fahrenheit")
    _, feedback = grade(env, "tu-weather-2", response)
    assert feedback == [
        (
            FeedbackKind.TOOL_ERROR,
            "Call #1 to 'get_weather': argument 'city' has the wrong value \"Paris\".",
        )
    ]
    assert "Sydney" not in feedback[0][1]
    revealing = ToolUseEnv(reveal_gold=True)
    assert 'allowed: "Sydney"' in grade(revealing, "tu-weather-2", response)[1][0][1]


def test_missing_and_optional_arguments(env):
    _, feedback = grade(
        env,
        "tu-flight-1",
        call("search_flights", origin="SFO", destination="JFK", date="2025-07-01"),
    )
    assert "the required argument 'passengers' is missing" in feedback[0][1]
    # 'unit' is optional in the gold of tu-weather-1: leaving it out is fine
    assert grade(env, "tu-weather-1", call("get_weather", city="tokyo"))[0].reward == 1.0


def test_parallel_calls_match_in_any_order_and_count_is_checked(env):
    both = call("get_weather", city="London") + call("get_weather", city="Paris")
    assert grade(env, "tu-parallel-1", both)[0].reward == 1.0
    outcome, feedback = grade(env, "tu-parallel-1", call("get_weather", city="London"))
    assert outcome.reward == 0.0
    assert (
        FeedbackKind.TOOL_ERROR,
        "The request needs 2 function call(s); you made 1.",
    ) in feedback
    assert (
        ToolUseEnv(partial_credit=True)
        .evaluate("tu-parallel-1", call("get_weather", city="London"))
        .reward
        == 0.5
    )


def test_order_matters_where_the_task_says_so(env):
    swapped = call("set_timer", minutes=10) + call("set_lights", room="bedroom", on=True)
    _, feedback = grade(env, "tu-ordered-1", swapped)
    assert feedback == [
        (
            FeedbackKind.TOOL_ERROR,
            "The calls are right but in the wrong order: make them in the order the request "
            "describes.",
        )
    ]


def test_no_tool_call_is_format_feedback(env):
    outcome, feedback = grade(env, "tu-weather-2", "It is probably warm in Sydney.")
    assert outcome.reward == 0.0 and feedback[0][0] is FeedbackKind.FORMAT


def test_bfcl_types_map_to_json_schema():
    schema = to_json_schema(
        {
            "type": "dict",
            "properties": {
                "x": {"type": "float"},
                "t": {"type": "tuple", "items": {"type": "any"}},
            },
        },
        strict=True,
    )
    assert schema == {
        "type": "object",
        "properties": {"x": {"type": "number"}, "t": {"type": "array", "items": {}}},
        "additionalProperties": False,
    }


def test_parser_survives_huge_and_nested_input():
    calls, errors = parse_tool_calls("[" * 100_000)
    assert calls == []
    calls, errors = parse_tool_calls("a" * 200_000)
    assert calls == [] and errors == []


def test_multi_turn_episode_executes_tools_and_rewards_the_final_answer():
    env = ToolUseEnv()
    obs, _ = env.reset(options={"task_id": "mt-inventory-3"})
    r1 = env.step_result(call("restock", item="banana", quantity=4))
    assert (r1.reward, r1.terminated, r1.truncated) == (0.0, False, False)
    assert r1.observation[-1] == {
        "role": "tool",
        "content": '{"name": "restock", "result": {"item": "banana", "quantity": 9}}',
    }
    r2 = env.step_result(call("sell", item="banana", quantity=20))
    assert r2.feedback[0].kind is FeedbackKind.TOOL_ERROR
    assert "only 9 banana(s) in stock" in r2.observation[-1]["content"]
    r3 = env.step_result(call("sell", item="banana", quantity="two"))
    assert r3.feedback[0].kind is FeedbackKind.TOOL_VALIDATION
    assert "not executed" in r3.observation[-1]["content"]
    r4 = env.step_result(call("sell", item="banana", quantity=2))
    assert '"quantity": 7' in r4.observation[-1]["content"]  # state replayed from history
    final = env.step_result("There are <answer>7</answer> bananas left.")
    assert (final.reward, final.terminated, final.success) == (1.0, True, True)


def test_multi_turn_answer_without_the_needed_calls_fails():
    env = ToolUseEnv()
    env.reset(options={"task_id": "mt-inventory-2"})
    result = env.step_result("<answer>7</answer>")
    assert result.reward == 0.0 and result.terminated
    assert "no matching call to 'sell' was made" in result.feedback[0].text


def test_multi_turn_episode_is_truncated_at_max_turns():
    env = ToolUseEnv(max_turns=2)
    env.reset(options={"task_id": "mt-inventory-1"})
    assert not env.step_result(call("get_stock", item="apple")).done
    last = env.step_result(call("get_stock", item="apple"))
    assert last.truncated and not last.terminated


def test_custom_tasks_without_data_files():
    task = ToolTask(
        id="t1",
        messages=({"role": "user", "content": "Add 2 and 3."},),
        functions=(
            {
                "name": "add",
                "parameters": {
                    "type": "object",
                    "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                    "required": ["a", "b"],
                },
            },
        ),
        ground_truth=(GoldCall("add", {"a": (2, 3), "b": (3, 2)}),),
    )
    env = ToolUseEnv([task])
    assert env.evaluate("t1", call("add", a=3, b=2)).reward == 1.0
    assert env.tools("t1")[0]["type"] == "function"


def test_bfcl_loader_and_env():
    tasks = load_bfcl(("simple", "multiple", "parallel"), limit=30)
    assert len(tasks) == 90
    env = BFCLEnv(limit=30)
    rlrf.check_env(env)
    ids = [*env.task_ids("train"), *env.task_ids("test")]
    assert all(env.evaluate(t, env.gold_answer(t)).reward == 1.0 for t in ids)
    outcome = env.evaluate("simple_python_0", call("calculate_triangle_area", base=10, height="5"))
    assert outcome.feedback_items[0].kind is FeedbackKind.TOOL_VALIDATION


def test_bfcl_rejects_unknown_category():
    with pytest.raises(rlrf.ConfigError, match="unknown BFCL categories"):
        load_bfcl(("simple", "live_whatever"))


def test_registered_ids_make_the_envs():
    assert len(rlrf.make("rlrf/ToolUse-v0").task_ids()) == 18
    bfcl = rlrf.make("rlrf/BFCL-v0", limit=5)
    assert isinstance(bfcl, BFCLEnv) and len(bfcl.task_ids()) + len(bfcl.task_ids("test")) == 15


def test_missing_bfcl_eval_says_how_to_install(monkeypatch):
    import envs.bfcl

    real = envs.bfcl.importlib.util.find_spec
    monkeypatch.setattr(
        envs.bfcl.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "bfcl_eval" else real(name, *a),
    )
    with pytest.raises(rlrf.ConfigError, match="pip install --no-deps bfcl-eval"):
        load_bfcl()


# ---- hostile arguments (issue 16) ---------------------------------------------------------

_HUGE = "9" * 5000  # over Python's 4,300-digit int-string limit


@pytest.mark.parametrize(
    "response",
    [
        '<tool_call>{"name": "get_weather", "arguments": {"city": ' + _HUGE + "}}</tool_call>",
        '{"name": "get_weather", "arguments": "{\\"city\\": ' + _HUGE + '}"}',
        'Sure: {"name": "get_weather", "arguments": {"city": ' + _HUGE + "}} done",
    ],
)
def test_integers_over_the_int_string_limit_are_format_feedback(env, response):
    for task_id in ("tu-weather-1", "mt-inventory-3"):  # single- and multi-turn
        outcome, items = grade(env, task_id, response)  # raised ValueError before
        assert outcome.reward == 0.0
        assert any(k is FeedbackKind.FORMAT and "5000 digits" in t for k, t in items), items


def test_integers_beyond_float_range_are_compared_exactly():
    tasks = load_bfcl(("simple",), limit=1)
    env = ToolUseEnv(tasks)
    big = int("1" + "0" * 400)  # float(big) raises OverflowError
    outcome = env.evaluate("simple_python_0", call("calculate_triangle_area", base=big, height=5))
    assert outcome.reward == 0.0
    [fb] = outcome.feedback_items
    assert fb.kind is FeedbackKind.TOOL_ERROR and "argument 'base' has the wrong value" in fb.text


def test_multi_turn_backends_get_huge_numbers_without_crashing():
    env = ToolUseEnv()
    env.reset(options={"task_id": "mt-inventory-3"})
    result = env.step_result(call("restock", item="banana", quantity=10**3000))
    assert result.reward == 0.0 and not result.done
    assert str(10**3000 + 5) in result.observation[-1]["content"]


def test_thousands_of_calls_are_capped_per_turn():
    many = call("get_stock", item="apple") * 3000
    env = ToolUseEnv()
    env.reset(options={"task_id": "mt-inventory-3"})
    start = time.perf_counter()
    # made 3,000 tool messages before, past the chat space's 1,024 (EnvError in step_result)
    result = env.step_result(many)
    assert len(result.observation) <= 40 and not result.done
    assert result.feedback[0].kind is FeedbackKind.FORMAT
    assert "makes 3000 function calls; at most 32 per turn" in result.feedback[0].text
    single = env.evaluate("tu-weather-1", many)  # pairing 3,000 calls took seconds
    assert single.reward == 0.0 and "makes 3000" in single.feedback_items[0].text
    assert time.perf_counter() - start < 5.0  # slack for 2 shared cores


def test_final_answer_with_unclosed_tags_is_linear():
    env = ToolUseEnv()
    env.reset(options={"task_id": "mt-inventory-2"})
    start = time.perf_counter()
    result = env.step_result("<answer>" * 20_000 + "7")
    assert result.done and result.reward == 0.0
    assert time.perf_counter() - start < 5.0  # slack for 2 shared cores


def test_a_tool_result_json_cannot_hold_is_an_error_message(monkeypatch):
    import envs.tool_use.toolsets as toolsets

    spec = {"name": "big", "parameters": {"type": "object", "properties": {}}}

    def backends():
        nested: list = []
        for _ in range(100_000):
            nested = [nested]
        return {"big": lambda: 10**5000, "deep": lambda: nested}

    specs = (spec, {**spec, "name": "deep"})
    monkeypatch.setitem(toolsets.TOOLSETS, "odd", toolsets.Toolset(specs, backends))
    task = ToolTask(
        id="odd-1",
        messages=({"role": "user", "content": "Call big, then deep."},),
        functions=specs,
        ground_truth=(),
        toolset="odd",
    )
    env = ToolUseEnv([task])
    env.reset(options={"task_id": "odd-1"})
    result = env.step_result(call("big") + call("deep"))  # ValueError out of step() before
    assert [json.loads(m["content"])["error"] for m in result.observation[-2:]] == [
        "the tool's result cannot be sent as JSON (ValueError)",
        "the tool's result cannot be sent as JSON (RecursionError)",
    ]
