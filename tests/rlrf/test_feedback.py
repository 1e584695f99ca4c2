import pytest
from hypothesis import given
from hypothesis import strategies as st

from rlrf import (
    ErrorDetails,
    Feedback,
    FeedbackKind,
    JudgeDetails,
    SchemaViolation,
    TestCaseDetails,
    ToolCallDetails,
    render_feedback,
    tokenize_feedback,
    truncate_text,
)
from rlrf.errors import TrajectoryFormatError


def test_kind_is_a_closed_set():
    assert {k.value for k in FeedbackKind} == {
        "runtime_error",
        "wrong_answer",
        "timeout",
        "memory_limit",
        "format",
        "tool_validation",
        "tool_error",
        "judge_critique",
        "demonstration",
        "other",
    }
    with pytest.raises(ValueError, match="Use FeedbackKind.OTHER"):
        Feedback("stack_trace", "x")


def test_kind_accepts_its_string_value():
    assert Feedback("timeout", "slow").kind is FeedbackKind.TIMEOUT


def test_details_must_be_a_known_type():
    with pytest.raises(TypeError, match="details must be one of"):
        Feedback(FeedbackKind.OTHER, "x", details={"score": 1})


@pytest.mark.parametrize(
    "details",
    [
        None,
        TestCaseDetails("1 2", "3", "4"),
        ErrorDetails("ZeroDivisionError", "division by zero", 3, "x = 1 / 0", "0"),
        ToolCallDetails(
            "get_weather", (SchemaViolation("/city", "1 is not of type 'string'", "type"),)
        ),
        JudgeDetails(0.25, 1.0, "katan"),
    ],
)
def test_dict_round_trip(details):
    fb = Feedback(FeedbackKind.OTHER, "text", details, "src")
    assert Feedback.from_dict(fb.to_dict()) == fb


def test_malformed_record_is_a_format_error():
    with pytest.raises(TrajectoryFormatError, match="Malformed feedback"):
        Feedback.from_dict({"kind": "other"})


def test_render_joins_and_skips_empty():
    items = [
        Feedback(FeedbackKind.FORMAT, "a"),
        Feedback(FeedbackKind.OTHER, ""),
        Feedback(FeedbackKind.OTHER, "b"),
    ]
    assert render_feedback(items) == "a\n\nb"
    assert render_feedback(None) == ""
    assert render_feedback([]) == ""


def test_render_cap_says_it_truncated():
    text = render_feedback(Feedback(FeedbackKind.OTHER, "é" * 3000), max_chars=100)
    assert len(text) <= 100
    assert text.endswith("characters]")
    assert "[... truncated" in text


@given(st.text(), st.integers(0, 300), st.integers(0, 300))
def test_truncate_fits_both_caps_and_never_splits_utf8(text, max_chars, max_bytes):
    out = truncate_text(text, max_chars, max_bytes=max_bytes)
    assert len(out) <= max_chars
    encoded = out.encode("utf-8", "surrogatepass")
    assert len(encoded) <= max_bytes
    encoded.decode("utf-8", "surrogatepass")  # a complete sequence: no cut inside a character
    if len(text) <= max_chars and len(text.encode("utf-8", "surrogatepass")) <= max_bytes:
        assert out == text


def test_truncate_rejects_negative_caps():
    with pytest.raises(ValueError, match=">= 0"):
        truncate_text("abc", -1)


class _SpaceTokenizer:
    """A real (if simple) tokenizer: whitespace split over a growing vocabulary."""

    def __init__(self):
        self.vocab = {}

    def encode(self, text, add_special_tokens=True):
        ids = [self.vocab.setdefault(w, len(self.vocab)) for w in text.split()]
        return ([999] if add_special_tokens else []) + ids


def test_tokenize_feedback_without_special_tokens_and_capped():
    tok = _SpaceTokenizer()
    fb = [
        Feedback(FeedbackKind.WRONG_ANSWER, "expected 5 got 6"),
        Feedback(FeedbackKind.OTHER, "again 5"),
    ]
    assert tokenize_feedback(fb, tok) == [0, 1, 2, 3, 4, 1]
    assert tokenize_feedback(fb, tok, max_tokens=2) == [0, 1]


def test_tokenize_feedback_with_a_hf_tokenizer():
    import tokenizers
    from transformers import PreTrainedTokenizerFast

    model = tokenizers.models.WordLevel({"[UNK]": 0, "wrong": 1, "answer": 2}, unk_token="[UNK]")
    raw = tokenizers.Tokenizer(model)
    raw.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]")
    assert tokenize_feedback(Feedback(FeedbackKind.WRONG_ANSWER, "wrong answer zzz"), tok) == [
        1,
        2,
        0,
    ]
