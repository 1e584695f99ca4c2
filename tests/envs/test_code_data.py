"""Task model, loaders and response parsing of envs.code (no sandbox needed)."""

import base64
import json
import os
import pickle
import time
import zlib

import pytest

from envs.code import extract_code
from envs.code_data import (
    CodeDataError,
    CodeDataWarning,
    CodeTask,
    CodeTest,
    NoTestsError,
    decode_test_cases,
    load_humaneval,
    load_lcb_jsonl,
    load_shipped,
    public_indices,
)

TESTS = [{"input": "1 2\n", "output": "3\n", "testtype": "stdin"}]


def lcb_compress(obj, protocol=pickle.DEFAULT_PROTOCOL):
    """What LiveCodeBench releases do to their private tests."""
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(obj), protocol))).decode()


def record(qid, public=TESTS, private=(), **extra):
    return {
        "question_id": qid,
        "question_title": qid,
        "question_content": f"Problem {qid}.",
        "starter_code": "",
        "difficulty": "easy",
        "public_test_cases": json.dumps(list(public)),
        "private_test_cases": json.dumps(list(private)),
        "metadata": "{}",
        **extra,
    }


# ---- decoding test cases ---------------------------------------------------------------------


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_lcb_compressed_private_tests_decode_for_every_pickle_protocol(protocol):
    assert decode_test_cases(lcb_compress(TESTS, protocol)) == TESTS


def test_plain_json_and_lists_decode():
    assert decode_test_cases(json.dumps(TESTS)) == TESTS
    assert decode_test_cases(TESTS) == TESTS
    assert decode_test_cases("") == [] and decode_test_cases(None) == []


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/rlrf_code_pwned",))


def test_a_malicious_pickle_is_refused_and_never_run(tmp_path):
    marker = "/tmp/rlrf_code_pwned"
    if os.path.exists(marker):
        os.remove(marker)
    payload = base64.b64encode(zlib.compress(pickle.dumps(_Evil()))).decode()
    with pytest.raises(CodeDataError, match="opcode"):
        decode_test_cases(payload)
    assert not os.path.exists(marker)


def test_a_pickle_of_plain_data_that_is_not_tests_is_refused():
    payload = base64.b64encode(zlib.compress(pickle.dumps(["a", "b"]))).decode()
    with pytest.raises(CodeDataError, match="must be a list of"):
        decode_test_cases(payload)


def test_a_pickled_list_of_test_dicts_decodes_like_the_json_text():
    payload = base64.b64encode(zlib.compress(pickle.dumps(TESTS))).decode()
    assert decode_test_cases(payload) == TESTS


def test_a_zlib_bomb_is_refused():
    payload = lcb_compress([{"input": "x" * 100_000, "output": "", "testtype": "stdin"}])
    with pytest.raises(CodeDataError, match="zlib bomb"):
        decode_test_cases(payload, max_decompressed_bytes=10_000)


def test_garbage_test_cases_are_refused():
    with pytest.raises(CodeDataError):
        decode_test_cases("not json, not base64 !!!")
    with pytest.raises(CodeDataError, match="list"):
        decode_test_cases('{"input": "1"}')


# ---- the task model and the public/private split ---------------------------------------------


def test_a_problem_without_tests_is_refused():
    with pytest.raises(NoTestsError, match="has no tests"):
        CodeTask("p", "statement", ())


def test_functional_tests_need_an_entry_point_and_json():
    with pytest.raises(CodeDataError, match="entry point"):
        CodeTask("p", "s", (CodeTest("[1]", "1", "functional"),))
    with pytest.raises(CodeDataError, match="JSON"):
        CodeTest("not json", "1", "functional")
    assert CodeTest('[1, 2]\n"a"\n', "3", "functional").args_json() == '[[1, 2], "a"]'


def test_public_split_is_a_deterministic_seeded_half():
    a = public_indices(10, 0.5, seed=0, task_id="p1")
    assert a == public_indices(10, 0.5, seed=0, task_id="p1")
    assert len(a) == 5 and len(set(a)) == 5 and all(0 <= i < 10 for i in a)
    others = {public_indices(10, 0.5, seed=s, task_id="p1") for s in range(10)}
    assert len(others) > 1
    assert public_indices(1, 0.5, 0, "p") == (0,)
    assert public_indices(2, 0.5, 0, "p") in {(0,), (1,)}
    assert len(public_indices(3, 0.9, 0, "p")) == 2  # one test always stays private


# ---- loaders -------------------------------------------------------------------------------


def write_jsonl(path, lines):
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def test_lcb_loader_reads_stdin_and_functional_problems_with_compressed_private_tests(tmp_path):
    functional = [{"input": "[2, 7, 11, 15]\n9", "output": "[0, 1]", "testtype": "functional"}]
    path = write_jsonl(
        tmp_path / "lcb.jsonl",
        [
            record("abc001_a", private_test_cases=lcb_compress(TESTS * 2)),
            record(
                "2001",
                public=functional,
                private_test_cases=lcb_compress(functional),
                metadata=json.dumps({"func_name": "twoSum"}),
                starter_code="class Solution:\n    def twoSum(self, nums, target):\n",
            ),
        ],
    )
    a, b = load_lcb_jsonl(path)
    assert (a.task_id, len(a.tests), a.public) == ("abc001_a", 3, (0,))
    assert (b.entry_point, [t.kind for t in b.tests]) == ("twoSum", ["functional"] * 2)


def test_lcb_loader_skips_malformed_lines_with_a_warning_naming_the_line(tmp_path):
    path = write_jsonl(
        tmp_path / "bad.jsonl",
        [
            record("ok1"),
            "{this is not json",
            json.dumps({"question_id": "no-statement", "public_test_cases": "[]"}),
            "",
            record("bad-tests", public_test_cases="@@not base64@@"),
            record("ok2"),
        ],
    )
    with pytest.warns(CodeDataWarning) as caught:
        tasks = load_lcb_jsonl(path)
    assert [t.task_id for t in tasks] == ["ok1", "ok2"]
    messages = [str(w.message) for w in caught]
    assert [m.split(": ")[0] for m in messages] == [f"{path}:2", f"{path}:3", f"{path}:5"]
    assert all("skipped malformed problem" in m for m in messages)


def test_lcb_loader_refuses_a_problem_without_tests_naming_the_line(tmp_path):
    path = write_jsonl(tmp_path / "empty.jsonl", [record("ok"), record("none", public=[])])
    with pytest.raises(NoTestsError, match=r"empty\.jsonl:2: problem 'none' has no tests"):
        load_lcb_jsonl(path)


def test_lcb_loader_refuses_empty_files_and_duplicate_ids(tmp_path):
    with pytest.raises(CodeDataError, match="no usable problem"):
        load_lcb_jsonl(write_jsonl(tmp_path / "blank.jsonl", [""]))
    with pytest.raises(CodeDataError, match="already used on line 1"):
        load_lcb_jsonl(write_jsonl(tmp_path / "dup.jsonl", [record("x"), record("x")]))
    with pytest.raises(CodeDataError, match="cannot read"):
        load_lcb_jsonl(tmp_path / "missing.jsonl")


def test_shipped_problems_are_graded_from_trivial_to_medium():
    tasks = load_shipped()
    assert len(tasks) >= 40
    assert len({t.task_id for t in tasks}) == len(tasks)
    counts = {d: sum(t.difficulty == d for t in tasks) for d in ("easy", "medium", "hard")}
    assert min(counts.values()) >= 8, counts
    by_id = {t.task_id: t for t in tasks}
    assert "two integers" in by_id["sum-two"].statement and by_id["sum-two"].difficulty == "easy"
    for t in tasks:
        assert t.reference_solution and all(x.kind == "stdin" for x in t.tests)
        assert len(t.tests) >= 2 and t.public
    assert {t.difficulty for t in load_shipped("easy")} == {"easy"}


def test_humaneval_loader_has_164_problems_with_a_check_test():
    tasks = load_humaneval()
    assert len(tasks) == 164
    t = tasks[0]
    assert t.task_id == "HumanEval/0" and t.entry_point == "has_close_elements"
    assert [x.kind for x in t.tests] == ["check"] and "def check(candidate)" in t.tests[0].input


# ---- response parsing ------------------------------------------------------------------------


def test_the_last_python_block_is_the_program_unless_configured():
    r = "Try:\n```python\nprint(1)\n```\nBetter:\n```python\nprint(2)\n```\nDone."
    assert extract_code(r).code == "print(2)" and extract_code(r).n_blocks == 2
    assert extract_code(r, "first").code == "print(1)"


def test_tagged_blocks_win_and_untagged_blocks_are_a_fallback():
    r = "```\nprint('untagged')\n```\n```text\nnot code\n```\n```py\nprint('py')\n```"
    assert extract_code(r).code == "print('py')"
    assert extract_code("```\nprint(3)\n```").code == "print(3)"
    assert extract_code("```text\nhi\n```").problem == "no_block"


def test_no_block_empty_block_and_cut_off_responses():
    assert extract_code("print(1)").problem == "no_block"
    assert extract_code("").problem == "no_block"
    assert extract_code("```python\n   \n```").problem == "empty"
    assert extract_code("```python\nprint(1)\n").problem == "cut_off"
    # a complete block followed by a block the generation did not finish: cut off
    cut = "```python\nprint(1)\n```\nNow the fix:\n```python\nprint("
    assert extract_code(cut).problem == "cut_off"
    assert extract_code(cut, "first").code == "print(1)"


def test_megabyte_responses_parse_in_linear_time():
    big = "```python\n" + "x = 1\n" * 200_000 + "```\n" + "`" * 1_000_000 + "\n```python\n"
    t0 = time.perf_counter()
    assert extract_code(big).problem == "cut_off"
    assert extract_code("a" * 3_000_000).problem == "no_block"
    assert time.perf_counter() - t0 < 2.0
