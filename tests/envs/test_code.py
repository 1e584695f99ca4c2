"""CodeEnv end to end: real programs in the real local sandbox, feedback texts pinned."""

import json

import pytest

import rlrf
from envs.code import CodeEnv
from envs.code_data import CodeDataError, CodeTask, CodeTest
from rlrf import FeedbackKind, check_env
from rlrf.errors import EnvError


def block(code: str) -> str:
    return f"Here is my solution.\n```python\n{code}\n```\n"


SUM_OK = block("a, b = map(int, input().split())\nprint(a + b)")


@pytest.fixture(scope="module")
def env():
    e = CodeEnv(time_limit_s=1.0, memory_limit_mb=128)
    yield e
    e.close()


def grade(env, response, task_id="sum-two@all"):
    return env.evaluate(task_id, response)


# ---- rewards --------------------------------------------------------------------------------


def test_a_correct_program_gets_reward_one_without_feedback(env):
    out = grade(env, SUM_OK)
    assert (out.reward, out.feedback, out.success) == (1.0, None, True)
    assert out.info["tests_passed"] == out.info["tests_total"] == 8
    assert out.info["graded_on"] == "all"


@pytest.mark.slow
def test_every_shipped_reference_solution_passes_all_its_tests(env):
    for task_id in env.task_ids("test"):
        out = env.evaluate(task_id, block(env.gold_answer(task_id)))
        assert out.reward == 1.0, (task_id, out.feedback)


def test_train_ids_grade_on_the_public_half_and_test_ids_on_all_tests(env):
    public = env.graded_tests("sum-two")
    assert len(public) == 4 and env.graded_tests("sum-two@all") == tuple(range(8))
    assert env.task_ids("test") == [t + "@all" for t in env.task_ids("train")]
    assert grade(env, SUM_OK, "sum-two").info["tests_total"] == 4


def test_hard_coding_the_public_tests_gets_no_reward_on_evaluation(env):
    task = env.task("sum-two")
    answers = {
        task.tests[i].input.strip(): task.tests[i].output for i in env.graded_tests("sum-two")
    }
    cheat = block(f"answers = {answers!r}\nprint(answers[input().strip()], end='')")
    assert grade(env, cheat, "sum-two").reward == 1.0
    out = grade(env, cheat, "sum-two@all")
    assert out.reward == 0.0 and not out.success
    assert out.feedback.kind is FeedbackKind.RUNTIME_ERROR  # KeyError on a private input


def test_fraction_reward_counts_every_test():
    with CodeEnv(reward="fraction", time_limit_s=1.0) as env:
        out = env.evaluate("sum-two@all", block("print(0)"))  # right only on "0 0"
    assert out.reward == pytest.approx(1 / 8) and out.success is False


# ---- each feedback kind, produced by a real failing program ----------------------------------


def test_wrong_answer_shows_the_two_shortest_failing_cases(env):
    out = grade(env, block("a, b = map(int, input().split())\nprint(a - b)"))
    assert out.reward == 0.0
    fb = out.feedback
    assert fb.kind is FeedbackKind.WRONG_ANSWER
    assert fb.text == (
        "Wrong answer: 7 of 8 tests failed.\n\n"
        "Input:\n2 3\nYour output:\n-1\nExpected:\n5\n\n"
        "Input:\n-5 7\nYour output:\n-12\nExpected:\n2"
    )
    assert (fb.details.input, fb.details.expected, fb.details.actual) == ("2 3\n", "5\n", "-1\n")


def test_runtime_error_shows_type_message_failing_line_and_input(env):
    out = grade(env, block("a, b = map(int, input().split())\nprint(a // (b - b))"))
    fb = out.feedback
    assert fb.kind is FeedbackKind.RUNTIME_ERROR
    assert fb.text == (
        "Runtime error: ZeroDivisionError: integer division or modulo by zero\n"
        "Line 2 of your code: print(a // (b - b))\n"
        "Last executed input:\n2 3"
    )
    assert (fb.details.error_type, fb.details.line, fb.details.last_input) == (
        "ZeroDivisionError",
        2,
        "2 3\n",
    )
    later = out.info["verdicts"][2:]
    assert set(later) == {"skipped"}  # no time wasted after the first error


def test_syntax_error_is_a_runtime_error_naming_the_line(env):
    fb = grade(env, block("x = 1\nprint(x +)")).feedback
    assert fb.kind is FeedbackKind.RUNTIME_ERROR
    assert fb.text.startswith("Runtime error: SyntaxError: invalid syntax\nLine 2 of your code:")


@pytest.mark.slow
def test_time_limit_shows_the_input(env):
    fb = grade(env, block("while True:\n    pass")).feedback
    assert fb.kind is FeedbackKind.TIMEOUT
    assert fb.text == (
        "Time limit exceeded: your program ran longer than 1 s on this input.\nInput:\n2 3"
    )


def test_memory_limit_shows_the_input(env):
    fb = grade(env, block("x = [bytearray(1 << 24) for _ in range(100)]")).feedback
    assert fb.kind is FeedbackKind.MEMORY_LIMIT
    assert fb.text == (
        "Memory limit exceeded: your program used more than 128 MiB on this input.\nInput:\n2 3"
    )


def test_output_limit_is_reported_as_a_runtime_error(env):
    fb = grade(env, block("while True:\n    print('x' * 10000)")).feedback
    assert fb.kind is FeedbackKind.RUNTIME_ERROR
    assert fb.text.startswith("Output limit exceeded:")


def test_format_feedback_for_no_block_and_cut_off_responses(env):
    none = grade(env, "I would add the numbers.")
    assert none.reward == 0.0 and none.feedback.kind is FeedbackKind.FORMAT
    assert none.feedback.text == (
        "No code found: put your complete Python program in a code block that starts with "
        "```python and ends with ```."
    )
    cut = grade(env, "```python\na, b = map(int, input().split())\nprint(a +")
    assert cut.feedback.kind is FeedbackKind.FORMAT
    assert cut.feedback.text.startswith("Your response was cut off")


def test_feedback_is_capped(env):
    long_line = "x" * 5000
    env_small = CodeEnv(dataset=[CodeTask("t", "s", (CodeTest(long_line, long_line),))])
    with env_small:
        env_small.feedback_max_chars = 300
        fb = env_small.evaluate("t", block("print('y' * 5000)")).feedback
    assert fb.kind is FeedbackKind.WRONG_ANSWER and len(fb.text) <= 300
    assert "[... truncated" in fb.text


# ---- bad input -------------------------------------------------------------------------------


def test_several_blocks_grade_the_last_one(env):
    r = block("print(0)") + "\nFixed:\n" + SUM_OK
    assert grade(env, r).reward == 1.0
    with CodeEnv(code_block="first") as first:
        assert first.evaluate("sum-two@all", r).reward == 0.0


def test_non_utf8_bytes_give_a_clean_failure(env):
    r = block("print('caf\udce9')\n\ud800x = 1")
    out = grade(env, r)
    assert out.reward == 0.0 and out.feedback.kind is FeedbackKind.RUNTIME_ERROR
    assert "SyntaxError" in out.feedback.text


def test_megabyte_responses_are_refused_or_graded_quickly(env):
    huge = block("# " + "y" * 2_000_000 + "\nprint(1)")
    out = grade(env, huge)
    assert out.feedback.kind is FeedbackKind.FORMAT
    assert "2,000,011 characters long; the limit is 100,000" in out.feedback.text
    padded = "blah " * 400_000 + SUM_OK
    assert grade(env, padded).reward == 1.0


# ---- malicious programs ------------------------------------------------------------------------

MALICIOUS = {
    "fork bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
    "memory bomb": "chunks = []\nwhile True:\n    chunks.append(bytearray(1 << 24))",
    "exit(0) before output": "import sys\nsys.exit(0)",
    "os._exit(0)": "import os\nos._exit(0)",
    "output flood": "import sys\nwhile True:\n    sys.stdout.write('5' * 65536)",
    "kill parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",
}


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n == "fork bomb" else n for n in sorted(MALICIOUS)],
)
def test_malicious_programs_fail_cleanly_and_the_env_keeps_working(env, name):
    out = grade(env, block(MALICIOUS[name]))
    assert out.reward == 0.0 and not out.success
    assert out.feedback is not None and len(out.feedback.text) <= 2000
    assert grade(env, SUM_OK).reward == 1.0


# ---- function-call tests (LiveCodeBench's LeetCode problems) ---------------------------------

TWO_SUM = CodeTask(
    "two-sum",
    "Return the indices of the two numbers that add up to target.",
    (
        CodeTest("[2, 7, 11, 15]\n9", "[0, 1]", "functional"),
        CodeTest("[3, 2, 4]\n6", "[1, 2]", "functional"),
        CodeTest("[3, 3]\n6", "[0, 1]", "functional"),
    ),
    entry_point="twoSum",
    starter_code="class Solution:\n    def twoSum(self, nums: List[int], target: int) -> List[int]:",
)
TWO_SUM_OK = """class Solution:
    def twoSum(self, nums: List[int], target: int) -> List[int]:
        seen = {}
        for i, x in enumerate(nums):
            if target - x in seen:
                return [seen[target - x], i]
            seen[x] = i
"""


@pytest.fixture(scope="module")
def fenv():
    e = CodeEnv(dataset=[TWO_SUM], time_limit_s=1.0)
    yield e
    e.close()


def test_functional_tests_call_the_solution_method(fenv):
    assert "class Solution" in fenv.prompt("two-sum")[-1]["content"]
    assert fenv.evaluate("two-sum@all", block(TWO_SUM_OK)).reward == 1.0
    plain = "from __future__ import annotations\ndef twoSum(nums, target):\n    return [0, 1]"
    out = fenv.evaluate("two-sum@all", block(plain))
    assert out.reward == 0.0 and out.feedback.kind is FeedbackKind.WRONG_ANSWER
    assert out.feedback.text == (
        "Wrong answer: 1 of 3 tests failed.\n\n"
        "Arguments (one JSON value per line):\n[3, 2, 4]\n6\n"
        "Your return value:\n[0, 1]\nExpected:\n[1, 2]"
    )


def test_always_equal_objects_and_exit_tricks_fail_function_tests(fenv):
    always = "class Eq(list):\n    def __eq__(self, o):\n        return True\n"
    always += "class Solution:\n    def twoSum(self, nums, target):\n        return Eq()"
    assert fenv.evaluate("two-sum@all", block(always)).reward == 0.0
    weird = "class Eq:\n    def __eq__(self, o):\n        return True\n"
    weird += "class Solution:\n    def twoSum(self, nums, target):\n        return Eq()"
    out = fenv.evaluate("two-sum@all", block(weird))
    assert out.reward == 0.0 and out.feedback.kind is FeedbackKind.RUNTIME_ERROR
    out = fenv.evaluate("two-sum@all", block("import sys\nsys.exit(0)"))
    assert out.reward == 0.0
    assert out.feedback.text.startswith(
        "Runtime error: SystemExit: your program exited (sys.exit or os._exit) before the "
        "tests finished"
    )


RESULT_CHANNEL_BRACKETS = "import os\nos.write(3, b'[' * 5000)\n"


def test_garbage_on_the_result_channel_scores_zero_not_a_missing_reward(env, fenv):
    # It once made the sandbox's worker raise: a sandbox_error, so a missing reward that
    # training and eval averages leave out, where this wrong program must score 0.
    for e, task_id, code in (
        (env, "sum-two@all", RESULT_CHANNEL_BRACKETS),
        (fenv, "two-sum@all", RESULT_CHANNEL_BRACKETS + TWO_SUM_OK),
    ):
        out = e.evaluate(task_id, block(code))
        assert out.reward == 0.0 and "sandbox_error" not in out.info, out
        assert out.feedback.kind in (FeedbackKind.WRONG_ANSWER, FeedbackKind.RUNTIME_ERROR)


def test_a_return_value_nested_5000_deep_is_the_programs_runtime_error(fenv):
    deep = (
        "import sys\nsys.setrecursionlimit(100_000)\n"
        "class Solution:\n    def twoSum(self, nums, target):\n        x = []\n"
        "        for _ in range(5000):\n            x = [x]\n        return x\n"
    )
    fenv.reset(seed=0)
    result = fenv.step_result(block(deep))
    assert result.reward == 0.0 and not result.reward_missing
    assert result.feedback[0].kind is FeedbackKind.RUNTIME_ERROR
    assert "ValueError: your function's return value cannot be graded: the value is nested" in (
        result.feedback[0].text
    )


# ---- groups --------------------------------------------------------------------------------


def test_evaluate_many_grades_a_group_in_order_like_evaluate(env):
    group = [SUM_OK, "no code", block("print(1/0)"), block("print(0)"), SUM_OK]
    many = env.evaluate_many("sum-two", group)
    assert [o.reward for o in many] == [1.0, 0.0, 0.0, 0.0, 1.0]
    for response, outcome in zip(group, many, strict=True):
        single = env.evaluate("sum-two", response)
        assert single.reward == outcome.reward
        assert single.feedback == outcome.feedback


# ---- the env contract ---------------------------------------------------------------------------


def test_check_env_passes_and_registration_works():
    env = rlrf.make("rlrf/Code-v0", limit=5)
    try:
        check_env(env)
        env.reset(seed=0)
        result = env.step_result(SUM_OK)
        assert result.terminated and isinstance(result.feedback, tuple)
    finally:
        env.close()


def test_bad_configuration_and_ids_give_clear_errors(env, tmp_path):
    with pytest.raises(EnvError, match="did you mean 'sum-two'"):
        env.evaluate("sum-tow", SUM_OK)
    with pytest.raises(CodeDataError, match="unknown dataset"):
        CodeEnv(dataset="no-such-dataset")
    with pytest.raises(rlrf.errors.ConfigError, match="reward='best'"):
        CodeEnv(reward="best")
    path = tmp_path / "p.jsonl"
    row = {"question_id": "p", "question_content": "s", "public_test_cases": "[]"}
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(CodeDataError, match="has no tests"):
        CodeEnv(dataset=str(path))


def test_a_broken_sandbox_gives_a_missing_reward_not_a_zero():
    import sandboxes

    sandbox = sandboxes.get("local")
    sandbox.close()
    env = CodeEnv(sandbox=sandbox, limit=2)
    out = env.evaluate("sum-two", SUM_OK)
    assert out.reward is None and out.feedback.kind is FeedbackKind.OTHER
    assert out.feedback.text.startswith("The sandbox failed while grading")
    assert "closed" in out.info["sandbox_error"]  # told apart from a program's failure


def test_gold_response_is_a_code_block_that_scores_one(env):
    # `rlrf sample` plays gold_response: it must be graded as a solution, not as plain text
    task_id = env.task_ids("test")[0]
    gold = env.gold_response(task_id)
    assert gold.startswith("```python\n") and gold.endswith("\n```")
    assert env.evaluate(task_id, gold).reward == 1.0
    assert env.evaluate(task_id, env.gold_answer(task_id)).reward == 0.0  # no code block
