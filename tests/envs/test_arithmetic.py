import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rlrf
from envs.arithmetic import ArithmeticEnv, extract_integer


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("The answer is 14", 14),
        ("2 + 3 = 5", 5),
        ("<answer>-7</answer> and later 8", -7),
        ("\\boxed{12} then 13", 12),
        ("it is 1,000", 1000),
        ("It is -4.", -4),
        ("9 - 5 = 4", 4),
        ("8 - 3", 3),  # a minus after a number is an operator, not a sign
        # cut off mid-expression: the trailing operand is not an answer
        ("2 + 2 = 4, 3 + 4 = 7, 4 + 5 =", 7),
        ("no digits at all", None),
    ],
)
def test_extract_integer(response, expected):
    assert extract_integer(response) == expected


def test_rewards_and_feedback_never_give_the_answer():
    env = ArithmeticEnv(digits=1, ops="+")
    task = env.task_ids("train")[0]
    gold = int(env.gold_answer(task))
    assert env.evaluate(task, f"<answer>{gold}</answer>").reward == 1.0
    high = env.evaluate(task, f"<answer>{gold + 3}</answer>")
    assert high.reward == 0.0
    [fb] = high.feedback_items
    assert fb.kind.value == "wrong_answer" and "too high (by less than 10)" in fb.text
    assert str(gold) not in fb.text.replace(str(gold + 3), "")
    low = env.evaluate(task, f"<answer>{gold - 40}</answer>").feedback_items[0].text
    assert "too low (by about 10 or more)" in low
    assert env.evaluate(task, "no idea").feedback_items[0].kind.value == "format"


def test_tasks_are_deterministic_and_splits_disjoint():
    a, b = ArithmeticEnv(), ArithmeticEnv()
    assert [a.prompt(t) for t in a.task_ids("test")[:5]] == [
        b.prompt(t) for t in b.task_ids("test")[:5]
    ]
    assert not set(a.task_ids("train")) & set(a.task_ids("test"))
    with pytest.raises(ValueError, match="subset of"):
        ArithmeticEnv(ops="/")
    rlrf.check_env(rlrf.make("rlrf/Arithmetic-v0", digits=1, ops="+"))


# ---- hostile answers (issue 16) -----------------------------------------------------------

# The single regex the extraction used before; kept as the reference for short inputs.
_OLD_INT_RE = re.compile(r"(?:(?<!\d)(?<!\d\s)-)?\d[\d,]*(?![\d,]*\s*[-+*/=×])")


@settings(max_examples=400, deadline=None, database=None)
@given(st.text(alphabet="0123456789,- +*/=×x\n", max_size=30))
def test_linear_extraction_agrees_with_the_old_regex(text):
    found = _OLD_INT_RE.findall(text)
    expected = None
    if found:
        try:
            expected = int(found[-1].replace(",", ""))
        except ValueError:
            expected = None
    assert extract_integer(text) == expected


def test_long_digit_runs_are_linear():
    env = ArithmeticEnv()
    task = env.task_ids()[0]
    start = time.perf_counter()
    outcome = env.evaluate(task, "1" * 3000 + " +")  # took ~25-38 s with the old regex
    assert outcome.feedback_items[0].kind.value == "format"
    assert extract_integer("7 " + "1" * 100_000 + " +") == 7
    assert time.perf_counter() - start < 5.0  # slack for 2 shared cores


@pytest.mark.parametrize(
    "response",
    ["<answer>" + "9" * 5000 + "</answer>", "9" * 5000, "\\boxed{-" + "9" * 5000 + "}"],
)
def test_integers_over_the_int_string_limit_are_wrong_answers(response):
    env = ArithmeticEnv()
    task = env.task_ids()[0]
    outcome = env.evaluate(task, response)  # raised ValueError (4,300-digit limit) before
    [fb] = outcome.feedback_items
    assert outcome.reward == 0.0 and fb.kind.value == "wrong_answer"
    assert "more than 4000 digits" in fb.text
    assert ("too low" if "-" in response else "too high") in fb.text
    assert extract_integer(response) is None


def test_an_answer_of_only_commas_is_a_format_problem():
    env = ArithmeticEnv()
    outcome = env.evaluate(env.task_ids()[0], "<answer>,,</answer>")  # int("") raised before
    assert outcome.feedback_items[0].kind.value == "format"
