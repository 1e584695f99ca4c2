"""Hugging Face dataset connectors of the paper's envs, offline, on fixtures in each schema.

The fixtures (tests/envs/fixtures, see generate.py there) hold a few rows each in the published
schema of hicai-zju/SciKnowEval, the paper's ToolAlpaca split and
livecodebench/code_generation_lite, including a hostile pickle.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import time
from pathlib import Path

import pytest

import rlrf
from envs.code import CodeEnv
from envs.code_data import RefusedPayloadError, _PlainDataUnpickler, load_lcb_dataset
from envs.hf_data import DatasetColumnsError, DatasetSource, DatasetUnavailableError
from envs.science import MultipleChoiceEnv, load_mcq_dataset
from envs.tool_use import ToolUseEnv
from rlrf.errors import ConfigError

datasets = pytest.importorskip("datasets", reason="the data extra: pip install 'rlrf[data]'")

FIXTURES = Path(__file__).parent / "fixtures"
SKE = FIXTURES / "sciknoweval.jsonl"
TOOLS = FIXTURES / "toolalpaca.jsonl"
LCB = FIXTURES / "lcb_code_generation_lite.jsonl"
PWNED_MARKER = "/tmp/rlrf_lcb_fixture_pwned"

pytestmark = pytest.mark.filterwarnings("ignore::rlrf.errors.RLRFWarning")


def _as_parquet(src: Path, tmp_path: Path) -> Path:
    out = tmp_path / (src.stem + ".parquet")
    datasets.load_dataset("json", data_files=str(src), split="train").to_parquet(str(out))
    return out


def _as_saved_folder(src: Path, tmp_path: Path, split: str) -> Path:
    out = tmp_path / (src.stem + "_saved")
    ds = datasets.load_dataset("json", data_files=str(src), split="train")
    datasets.DatasetDict({split: ds}).save_to_disk(str(out))
    return out


# ---- SciKnowEval ---------------------------------------------------------------------------


def test_sciknoweval_reads_the_same_from_jsonl_parquet_and_a_saved_folder(tmp_path):
    kwargs = {"domains": ["Chemistry"], "levels": ["L3"], "test_fraction": 0.5}
    sources = [SKE, _as_parquet(SKE, tmp_path), _as_saved_folder(SKE, tmp_path, "test")]
    loaded = [load_mcq_dataset(DatasetSource(str(s)), **kwargs) for s in sources]
    assert loaded[0] == loaded[1] == loaded[2]
    # 4 chemistry L3 MCQ rows; the L1 row, the physics row and the open-ended row filtered out
    assert len(loaded[0]) == 4
    assert {it.answer for it in loaded[0]} == {"A", "B"}
    assert all(it.domain == "Chemistry" for it in loaded[0])


def test_sciknoweval_ungradable_row_is_skipped_and_counted():
    env = MultipleChoiceEnv(dataset=str(SKE), domains=["chemistry"], levels=["L3"])
    assert env.skipped.counts == {"ungradable": 1}  # answerKey "E" is not an option
    rlrf.check_env(env)
    for task_id in [*env.task_ids("train"), *env.task_ids("test")]:
        assert env.evaluate(task_id, env.gold_answer(task_id)).reward == 1.0


def test_the_env_is_made_by_id_with_dataset_kwargs():
    env = rlrf.make("rlrf/MCQ-v0", dataset=str(SKE), domains=["Physics"], levels=["L3"])
    (task_id,) = [*env.task_ids("train"), *env.task_ids("test")]
    assert "dropped from rest" in env.prompt(task_id)[0]["content"]


def test_columns_that_do_not_match_name_what_was_found_and_what_was_expected(tmp_path):
    rows = [json.loads(line) for line in SKE.read_text().splitlines()]
    bad = tmp_path / "renamed.jsonl"
    bad.write_text("".join(json.dumps({"Q": r["question"], **r}) + "\n" for r in rows)
                   .replace('"question":', '"query":'))
    with pytest.raises(DatasetColumnsError) as e:
        load_mcq_dataset(str(bad))
    msg = str(e.value)
    assert "has columns ['Q', 'answer', 'answerKey', 'choices'" in msg
    assert "'sciknoweval' mapping expects question <- 'question'" in msg
    assert "missing: question <- 'question'" in msg and "columns={" in msg
    # the documented fix: map the field to the column the dataset has
    items = load_mcq_dataset(str(bad), columns={"question": "Q"}, domains=["Physics"])
    assert [it.question for it in items] == [rows[6]["question"]]


def test_a_bad_mapping_is_refused_by_name():
    with pytest.raises(ConfigError, match="unknown field"):
        load_mcq_dataset(str(SKE), columns={"prompt": "question"})
    with pytest.raises(ConfigError, match="not a built-in mapping"):
        load_mcq_dataset(str(SKE), columns="gpqa")
    with pytest.raises(DatasetUnavailableError, match="does not exist"):
        load_mcq_dataset("./no/such/file.parquet")


# ---- hub ids without a network -------------------------------------------------------------


def test_a_hub_id_without_network_names_the_cache_folder_and_does_not_hang(tmp_path, monkeypatch):
    closed = __import__("socket").socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: the probe is refused at once
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    start = time.monotonic()
    with pytest.raises(DatasetUnavailableError) as e:
        MultipleChoiceEnv(dataset="hicai-zju/SciKnowEval", dataset_config="Chemistry")
    assert time.monotonic() - start < 30
    msg = str(e.value)
    assert "'hicai-zju/SciKnowEval' (config='Chemistry') is not in the local cache" in msg
    assert f"127.0.0.1:{port}) did not answer" in msg
    assert str(tmp_path / "hub-cache") in msg and "save_to_disk" in msg


def test_hf_hub_offline_reads_the_cache_only(monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(DatasetUnavailableError, match="HF_HUB_OFFLINE is set. Fill the cache"):
        CodeEnv(dataset="livecodebench/code_generation_lite", dataset_config="release_v6")


# ---- LiveCodeBench -------------------------------------------------------------------------


@pytest.fixture
def no_marker():
    if os.path.exists(PWNED_MARKER):
        os.remove(PWNED_MARKER)
    yield
    assert not os.path.exists(PWNED_MARKER), "the hostile pickle ran"


@pytest.mark.parametrize("form", ["jsonl", "parquet", "saved"])
def test_lcb_hostile_pickle_is_refused_skipped_and_counted(form, tmp_path, no_marker):
    path = {
        "jsonl": lambda: LCB,
        "parquet": lambda: _as_parquet(LCB, tmp_path),
        "saved": lambda: _as_saved_folder(LCB, tmp_path, "test"),
    }[form]()
    env = CodeEnv(dataset=str(path), date_from="2025-02-01", date_until="2025-05-01")
    assert env.skipped.counts == {"refused_test_payload": 1}
    assert "abc391_a" in env.skipped.summary()
    assert list(env.task_ids("train")) == ["abc390_a", "3701"]  # abc360_a is before the window


def test_lcb_jsonl_without_dataset_options_uses_the_plain_loader_and_counts_too(no_marker):
    env = CodeEnv(dataset=str(LCB))
    assert env.skipped.counts == {"refused_test_payload": 1}
    assert list(env.task_ids("train")) == ["abc390_a", "3701", "abc360_a"]


def test_lcb_tests_decode_public_json_and_private_pickles(no_marker):
    tasks = {t.task_id: t for t in load_lcb_dataset(str(LCB), date_from="2025-02-01")}
    stdin, call = tasks["abc390_a"], tasks["3701"]
    assert [(t.input, t.output) for t in stdin.tests] == [("3 4\n", "7\n"), ("10 -2\n", "8\n")]
    assert stdin.public == (0,)
    assert [t.kind for t in call.tests] == ["functional", "functional"]
    assert call.entry_point == "sumArray"


def test_lcb_problems_grade_in_the_sandbox(no_marker):
    env = CodeEnv(dataset=str(LCB), date_from="2025-02-01")
    right = "```python\nprint(sum(map(int, input().split())))\n```"
    assert env.evaluate("abc390_a@all", right).reward == 1.0
    assert env.evaluate("abc390_a@all", "```python\nprint(7)\n```").reward == 0.0
    method = "```python\nclass Solution:\n    def sumArray(self, nums):\n        return sum(nums)\n```"
    assert env.evaluate("3701@all", method).reward == 1.0


def test_the_restricted_unpickler_resolves_no_global_even_when_called_directly():
    data = pickle.dumps(os.getcwd)  # a GLOBAL/STACK_GLOBAL to posix.getcwd
    with pytest.raises(RefusedPayloadError, match=r"posix\.getcwd"):
        _PlainDataUnpickler(io.BytesIO(data)).load()


def test_lcb_columns_that_do_not_match_say_so(tmp_path):
    bad = tmp_path / "lcb.jsonl"
    bad.write_text(LCB.read_text().replace('"question_content"', '"statement_text"'))
    with pytest.raises(DatasetColumnsError, match="missing: question_content <- 'question_content'"):
        load_lcb_dataset(str(bad))
    tasks = load_lcb_dataset(str(bad), columns={"question_content": "statement_text"})
    assert len(tasks) == 3


# ---- ToolAlpaca ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tools() -> ToolUseEnv:
    return ToolUseEnv(dataset=str(TOOLS), test_fraction=0.3)


def test_toolalpaca_rows_become_react_tasks_and_the_malformed_row_is_counted(tools):
    assert tools.skipped.counts == {"malformed": 1}
    ids = [*tools.task_ids("train"), *tools.task_ids("test")]
    assert sorted(ids) == [f"toolalpaca-{i}" for i in range(4046, 4050)]
    rlrf.check_env(tools)
    task = tools.task("toolalpaca-4046")
    assert [f["name"] for f in task.functions] == [
        "getRandomAxolotlImage",
        "searchAxolotlImages",
        "getAxolotlFacts",
    ]
    # the dataset's own ReAct prompt is shown as is
    (message,) = tools.prompt("toolalpaca-4046")
    assert message["content"].endswith("Question: Hey, can you show me a random picture of an axolotl?")


def test_toolalpaca_grading(tools):
    for task_id in [*tools.task_ids("train"), *tools.task_ids("test")]:
        assert tools.evaluate(task_id, tools.gold_answer(task_id)).reward == 1.0
    react = "Thought: search\nAction: searchAxolotlImages\nAction Input: {}"
    good = '{"color": "wild", "gender": "", "size": "medium", "page": 1}'
    assert tools.evaluate("toolalpaca-4047", react.replace("{}", good)).reward == 1.0
    wrong = tools.evaluate("toolalpaca-4047", react.replace("{}", good.replace("wild", "albino")))
    assert wrong.reward == 0.0 and "wrong value" in wrong.feedback[0].text
    assert "albino" in wrong.feedback[0].text and "'wild'" not in wrong.feedback[0].text
    typed = tools.evaluate("toolalpaca-4048", react.replace(
        "searchAxolotlImages", "getAxolotlFacts").replace("{}", '{"category": "habitat", "limit": "3"}'))
    assert typed.feedback[0].kind == rlrf.FeedbackKind.TOOL_VALIDATION
    none = tools.evaluate("toolalpaca-4046", "I would look up an axolotl picture.")
    assert "Action Input" in none.feedback.text


def test_a_folder_of_split_files_keeps_its_splits(tmp_path):
    lines = TOOLS.read_text().splitlines(keepends=True)
    (tmp_path / "train.json").write_text("".join(lines[:3]))
    (tmp_path / "test.json").write_text("".join(lines[3:]))
    env = ToolUseEnv(dataset=str(tmp_path))
    assert list(env.task_ids("train")) == ["toolalpaca-4046", "toolalpaca-4047", "toolalpaca-4048"]
    assert list(env.task_ids("test")) == ["toolalpaca-4049"]
    assert env.skipped.counts == {"malformed": 1}
