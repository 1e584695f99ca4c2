"""HumanEval through CodeEnv: canonical solutions pass, failures explain themselves."""

import pytest

from envs.code import CodeEnv
from rlrf import FeedbackKind, check_env


def block(code: str) -> str:
    return f"```python\n{code}\n```"


@pytest.fixture(scope="module")
def env():
    e = CodeEnv("humaneval", time_limit_s=1.5)
    yield e
    e.close()


@pytest.mark.slow
def test_all_164_canonical_solutions_pass(env):
    ids = env.task_ids("test")
    assert len(ids) == 164
    failed = [t for t in ids if env.evaluate(t, block(env.gold_answer(t))).reward != 1.0]
    assert failed == []


def test_a_body_only_completion_is_accepted(env):
    task = env.task("HumanEval/0")
    body = task.reference_solution[len(task.prefix) :]
    assert env.evaluate("HumanEval/0", block(body.rstrip())).reward == 1.0


def test_a_failed_assertion_is_a_wrong_answer_with_the_returned_value(env):
    out = env.evaluate("HumanEval/2", block("def truncate_number(number):\n    return None"))
    assert out.reward == 0.0 and out.feedback.kind is FeedbackKind.WRONG_ANSWER
    assert out.feedback.text == (
        "Wrong answer: 1 of 1 test failed.\n\n"
        "Failed check: assert candidate(3.5) == 0.5 (your function returned None)"
    )


def test_a_runtime_error_names_the_line_and_the_check_that_ran_it(env):
    code = "def has_close_elements(numbers, threshold):\n    return 1 / 0"
    out = env.evaluate("HumanEval/0", block(code))
    assert out.feedback.kind is FeedbackKind.RUNTIME_ERROR
    assert out.feedback.text == (
        "Runtime error: ZeroDivisionError: division by zero\n"
        "Line 2 of your code: return 1 / 0\n"
        "While running the check: assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True"
    )


ALWAYS_EQUAL = """
class Eq:
    def __eq__(self, other):
        return True
def has_close_elements(numbers, threshold):
    return Eq()
"""
STR_SUBCLASS = """
class S(str):
    def __eq__(self, other):
        return True
def has_close_elements(numbers, threshold):
    return S('x')
"""
REBIND_TYPE = """
import builtins
class Eq(int):
    def __eq__(self, other):
        return True
builtins.type = lambda x: bool
type = builtins.type
def has_close_elements(numbers, threshold):
    return Eq(1)
"""


@pytest.mark.parametrize(
    "code",
    [
        ALWAYS_EQUAL,
        STR_SUBCLASS,
        REBIND_TYPE,
        "import sys\nsys.exit(0)",
        "import os\nos._exit(0)",
        "print('passed')\nimport sys\nsys.exit(0)",
        pytest.param(
            "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
            marks=pytest.mark.slow,
        ),
    ],
    ids=["always-equal", "str-subclass", "rebind-type", "sys.exit", "os._exit", "print", "fork"],
)
def test_reward_hacks_and_malicious_programs_get_no_reward(env, code):
    out = env.evaluate("HumanEval/0", block(code))
    assert out.reward == 0.0 and out.feedback is not None
    assert env.evaluate("HumanEval/0", block(env.gold_answer("HumanEval/0"))).reward == 1.0


def test_check_env_passes_on_humaneval(env):
    check_env(env)
