"""MultipleChoiceEnv: answer extraction, 1/0 reward, explanation feedback, the JSONL loader."""

from __future__ import annotations

import json

import pytest

import rlrf
from envs.science import MCQItem, MultipleChoiceEnv, load_mcq_jsonl
from rlrf import FeedbackKind


@pytest.fixture(scope="module")
def env() -> MultipleChoiceEnv:
    return MultipleChoiceEnv()


def test_shipped_set_passes_check_env(env):
    rlrf.check_env(env)
    assert (len(env.task_ids("train")), len(env.task_ids("test"))) == (26, 6)


def test_correct_choice_earns_one(env):
    for task_id in env.task_ids("train"):
        assert env.evaluate(task_id, "Reasoning... " + env.gold_answer(task_id)).reward == 1.0


def test_prompt_lists_options_but_not_the_answer(env):
    text = env.prompt("sci-000")[0]["content"]
    assert "A. joule\nB. newton\nC. watt\nD. pascal" in text
    assert "<answer>LETTER</answer>" in text and "<answer>B</answer>" not in text


def test_last_choice_counts_and_case_is_ignored(env):
    assert env.evaluate("sci-000", "<answer>A</answer> no wait <answer>b</answer>").reward == 1.0
    assert env.evaluate("sci-000", "<answer>B</answer> no wait <answer>A</answer>").reward == 0.0


def test_wrong_answer_gets_the_explanation_as_feedback(env):
    outcome = env.evaluate("sci-000", "<answer>A</answer>")
    (fb,) = outcome.feedback_items
    assert outcome.reward == 0.0 and fb.kind is FeedbackKind.WRONG_ANSWER
    assert fb.text.startswith("Your choice A is wrong. Force is mass times acceleration")


def test_no_feedback_without_explanation_or_when_disabled(env):
    assert env.item("sci-026").explanation is None
    assert env.evaluate("sci-026", "<answer>A</answer>").feedback_items == ()
    quiet = MultipleChoiceEnv(explanation_feedback=False)
    assert quiet.evaluate("sci-000", "<answer>A</answer>").feedback_items == ()


def test_missing_or_invalid_choice_is_format_feedback(env):
    (fb,) = env.evaluate("sci-000", "It is the newton.").feedback_items
    assert fb.kind is FeedbackKind.FORMAT and "(A, B, C, D)" in fb.text
    (fb,) = env.evaluate("sci-000", "<answer>E</answer>").feedback_items
    assert "'E', which is not an option" in fb.text
    assert MultipleChoiceEnv(format_feedback=False).evaluate("sci-000", "x").feedback_items == ()


def test_custom_answer_format():
    env = MultipleChoiceEnv(answer_regex=r"Final answer:\s*\(?([A-D])\)?")
    assert env.evaluate("sci-000", "Final answer: (B)").reward == 1.0
    tagged = MultipleChoiceEnv(answer_tag="choice")
    assert tagged.evaluate("sci-000", "<choice>B</choice>").reward == 1.0
    assert "<choice>LETTER</choice>" in tagged.prompt("sci-000")[0]["content"]


def test_loader_accepts_sciknoweval_and_plain_records(tmp_path):
    path = tmp_path / "q.jsonl"
    records = [
        {
            "question": "2+2?",
            "choices": {"text": ["3", "4"], "label": ["A", "B"]},
            "answerKey": "B",
        },
        {"id": "q2", "question": "Sky?", "options": ["blue", "green", "red"], "answer": 0},
        {
            "id": "q3",
            "question": "Sun?",
            "options": {"X": "star", "Y": "planet"},
            "answer": "star",
            "split": "test",
        },
    ]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    items = load_mcq_jsonl(path)
    assert [it.answer for it in items] == ["B", "A", "X"]
    assert items[2].split == "test" and items[1].labels == ("A", "B", "C")
    env = MultipleChoiceEnv(path)
    rlrf.check_env(env)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "not valid JSON"),
        ('{"question": "q", "options": ["a", "b"], "answer": "Z"}', "neither one of the labels"),
        ('{"question": "q", "options": ["a"], "answer": 0}', "at least 2 options"),
        ('{"options": ["a", "b"], "answer": 0}', "missing or empty 'question'"),
        # a raw ValueError / RecursionError before (the shared JSONL reader, issue 16)
        ('{"question": "q", "answer": ' + "9" * 5000 + "}", r"an integer with 5000 digits"),
        ("[" * 100_000, r"nested too deeply"),
    ],
)
def test_loader_errors_name_file_line_and_problem(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(rlrf.ConfigError, match=message) as e:
        load_mcq_jsonl(path)
    assert f"{path}:1" in str(e.value)


def test_loader_names_a_line_that_is_not_utf8(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"question": "q", "options": ["a", "b"], "answer": 0}\n"caf\xe9"\n')
    with pytest.raises(rlrf.ConfigError, match=r"bad.jsonl:2: not UTF-8"):
        load_mcq_jsonl(path)  # a raw UnicodeDecodeError before


def test_items_can_be_passed_directly():
    env = MultipleChoiceEnv([MCQItem("x", "Pick B.", ("A", "B"), ("no", "yes"), "B")])
    assert env.evaluate("x", "<answer>B</answer>").solved


def test_registered_id_makes_the_env():
    env = rlrf.make("rlrf/MCQ-v0")
    assert isinstance(env, MultipleChoiceEnv) and env.env_id == "rlrf/MCQ-v0"
