"""JudgeEnv against real HTTP servers: a stdlib fault server and llm-katan with a real model."""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import rlrf
from envs.judge import JudgeClient, JudgeEnv, JudgeParseError, parse_verdict
from rlrf import FeedbackKind
from tests import llm_katan

_HERE = Path(__file__).parent
_spec = importlib.util.spec_from_file_location("judge_http_server", _HERE / "judge_http_server.py")
fake = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fake)


@pytest.fixture
def serve():
    """Start an in-process stdlib judge server in a mode; shut all down at the end."""
    started = []

    def start(mode: str, **kwargs) -> fake.JudgeServer:
        server = fake.JudgeServer(mode, **kwargs)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.shutdown()
        server.server_close()


def _env(server_url: str, **kwargs) -> JudgeEnv:
    kwargs.setdefault("max_retries", 0)
    kwargs.setdefault("timeout_s", 5.0)
    return JudgeEnv(base_url=server_url, model="judge", **kwargs)


def _assert_missing(outcome, *needles: str) -> None:
    assert outcome.reward is None
    (fb,) = outcome.feedback_items
    assert fb.kind is FeedbackKind.OTHER
    assert "judge" in fb.text
    for needle in needles:
        assert needle in fb.text, fb.text


# ---- the parser ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "score", "critique"),
    [
        ('{"score": 7, "critique": "ok"}', 7.0, "ok"),
        ('Sure!\n```json\n{"rating": "8/10", "feedback": "good"}\n```', 8.0, "good"),
        ('{"response": "{\\"score\\": 3, \\"critique\\": \\"bad\\"}"}', 3.0, "bad"),
        ('{"response": "The score is 6 because it is short."}', 6.0, None),
        ("Score: 4/5. Missing details.", 8.0, None),
        ('{"score": 7, "critique": "cut off her', 7.0, "cut off her"),
    ],
)
def test_parse_verdict_tolerates_common_shapes(text, score, critique):
    verdict = parse_verdict(text, 0, 10)
    assert verdict.score == score
    if critique is not None:
        assert verdict.critique == critique


@pytest.mark.parametrize("text", [None, "", "   ", "nice answer!", '{"score": 42}', '{"score":'])
def test_parse_verdict_rejects_unusable_answers(text):
    with pytest.raises(JudgeParseError):
        parse_verdict(text, 0, 10)


# ---- the stdlib server --------------------------------------------------------------------


def test_env_passes_check_env_and_normalizes_the_score(serve):
    server = serve("ok")
    env = _env(server.url)
    rlrf.check_env(env)
    outcome = env.evaluate("haiku-autumn", "Leaves fall, red and gold.")
    assert outcome.reward == pytest.approx(0.7)
    (fb,) = outcome.feedback_items
    assert fb.kind is FeedbackKind.JUDGE_CRITIQUE
    assert fb.text == "Mostly right, but add an example."
    assert fb.details.score == 7 and fb.details.max_score == 10
    assert not outcome.solved


def test_cache_answers_repeated_requests_without_http(serve):
    server = serve("ok")
    env = _env(server.url)
    first = env.evaluate("haiku-autumn", "Leaves fall.")
    second = env.evaluate("haiku-autumn", "Leaves fall.")
    third = env.evaluate("haiku-autumn", "Leaves fall!")
    assert first.reward == second.reward == third.reward
    assert server.requests == 2
    assert env.client.stats["cache_hits"] == 1


def test_concurrency_limit_is_respected(serve):
    server = serve("slow", delay=0.3)
    env = _env(server.url, max_concurrency=2)
    start = time.monotonic()
    outcomes = env.evaluate_many("haiku-autumn", [f"answer {i}" for i in range(6)])
    elapsed = time.monotonic() - start
    assert [o.reward for o in outcomes] == [pytest.approx(0.7)] * 6
    assert server.max_inflight == 2  # concurrent, but never more than the limit
    assert elapsed >= 0.85  # 6 requests / 2 slots * 0.3 s


def test_slow_server_times_out_with_missing_reward(serve):
    server = serve("slow", delay=3.0)
    env = _env(server.url, timeout_s=0.4, max_retries=1, backoff_s=0.05)
    start = time.monotonic()
    outcome = env.evaluate("haiku-autumn", "Leaves fall.")
    assert time.monotonic() - start < 2.5
    _assert_missing(outcome, "did not answer within 0.4 s", "2 attempt(s)")
    result = _step(env, "Leaves fall.")
    assert result.reward_missing and result.reward == 0.0


def _step(env, response):
    env.reset(options={"task_id": "haiku-autumn"})
    return env.step_result(response)


@pytest.mark.parametrize(
    ("mode", "needle"),
    [
        ("garbage", "no usable score"),
        ("empty", "empty"),
        ("truncated", "cut off at the token limit"),
        ("invalid_json", "unreadable response"),
    ],
)
def test_bad_judge_answers_give_missing_reward(serve, mode, needle):
    server = serve(mode)
    env = _env(server.url)
    outcome = env.evaluate("haiku-autumn", "Leaves fall.")
    _assert_missing(outcome, needle)
    assert "judge_error" in outcome.info
    assert env.client.stats["failures"] == 1


def test_refused_key_is_reported_and_not_retried(serve):
    server = serve("unauthorized")
    env = _env(server.url, max_retries=3, api_key_env="RLRF_TEST_NO_SUCH_KEY")
    outcome = env.evaluate("haiku-autumn", "Leaves fall.")
    _assert_missing(outcome, "refused the API key", "$RLRF_TEST_NO_SUCH_KEY")
    assert server.requests == 1


def test_transient_errors_are_retried_with_backoff(serve):
    server = serve("flaky", fail_first=2)
    env = _env(server.url, max_retries=2, backoff_s=0.05)
    outcome = env.evaluate("haiku-autumn", "Leaves fall.")
    assert outcome.reward == pytest.approx(0.7)
    assert server.requests == 3


def test_server_without_json_mode_falls_back_to_plain_chat(serve):
    server = serve("no_json_mode")
    env = _env(server.url)
    assert env.evaluate("haiku-autumn", "Leaves fall.").reward == pytest.approx(0.7)
    assert env.client.response_format is None


def test_no_server_gives_missing_reward_fast():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens
    env = _env(f"http://127.0.0.1:{port}/v1", max_retries=1, backoff_s=0.05)
    start = time.monotonic()
    outcomes = env.evaluate_many("haiku-autumn", ["a", "b", "c"])
    assert time.monotonic() - start < 5
    for outcome in outcomes:
        _assert_missing(outcome, "cannot connect")


def test_empty_response_and_odd_text_need_no_crash(serve):
    server = serve("ok")
    env = _env(server.url)
    empty = env.evaluate("haiku-autumn", "  ")
    assert empty.reward == 0.0 and empty.feedback_items[0].kind is FeedbackKind.FORMAT
    assert server.requests == 0  # graded without asking the judge
    odd = env.evaluate("haiku-autumn", "caf\udce9 \ud800 \x00" + "x" * 50_000)
    assert odd.reward == pytest.approx(0.7)


def test_judge_wraps_another_env_with_its_gold_as_reference(serve):
    server = serve("ok")
    env = _env(server.url, base_env="rlrf/Arithmetic-v0")
    task = env.task_ids("train")[0]
    assert env.prompt(task) == rlrf.make("rlrf/Arithmetic-v0").prompt(task)
    gold = rlrf.make("rlrf/Arithmetic-v0").gold_answer(task)
    messages = env.client.messages("r", env.prompt(task), "resp", gold)
    assert f"## Reference answer\n{gold}" in messages[1]["content"]
    assert env.evaluate(task, "<answer>1</answer>").reward == pytest.approx(0.7)


def test_server_killed_mid_run(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, str(_HERE / "judge_http_server.py"), "ok"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("READY"), proc.stderr.read()
        env = _env(f"http://127.0.0.1:{line.split()[1]}/v1", max_retries=1, backoff_s=0.05)
        assert env.evaluate("haiku-autumn", "first").reward == pytest.approx(0.7)
        proc.kill()
        proc.wait(timeout=10)
        after = env.evaluate_many("haiku-autumn", ["first", "second", "third"])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert after[0].reward == pytest.approx(0.7)  # cached before the kill
    for outcome in after[1:]:
        _assert_missing(outcome, "cannot connect")


def test_registered_id_makes_the_env(serve):
    server = serve("ok")
    env = rlrf.make("rlrf/Judge-v0", base_url=server.url, max_retries=0)
    assert env.evaluate("haiku-autumn", "Leaves.").reward == pytest.approx(0.7)


# ---- hostile judges (issue 16) ------------------------------------------------------------


def test_timeout_bounds_the_whole_request_not_each_read(serve):
    # Every byte arrives within 0.1 s, so a per-read timeout never fires: the ~300-byte
    # answer took ~30 s before; the deadline must cut the whole request at timeout_s.
    server = serve("trickle", delay=0.1)
    env = _env(server.url, timeout_s=1.0, max_retries=1, backoff_s=0.05)
    env.client._openai()  # import and build the client first: slow on a loaded machine
    start = time.monotonic()
    outcome = env.evaluate("haiku-autumn", "Leaves fall.")
    elapsed = time.monotonic() - start
    _assert_missing(outcome, "did not answer within 1 s", "2 attempt(s)")
    assert elapsed < 6.0, elapsed  # 2 attempts of 1 s, plus slack for 2 shared cores
    assert server.requests == 2


def test_score_patterns_are_linear_in_the_answer_length():
    start = time.monotonic()
    with pytest.raises(JudgeParseError):  # three adjacent \s* took 11 s on 1,000 spaces
        parse_verdict("score" + " " * 20_000 + "x", 0, 10)
    assert parse_verdict("Score" + " " * 20_000 + "7", 0, 10).score == 7.0
    assert time.monotonic() - start < 3.0  # slack for 2 shared cores


@pytest.mark.parametrize(
    "content",
    [
        "Score: 7/0",
        '{"score": "7/0", "critique": "fine"}',
        "Score: 7/0.0 out of nothing",
        '{"score": "5/-10"}',
        '{"score": ' + "9" * 5000 + "}",  # raised ValueError (int-string limit) before
        "Score: " + "9" * 5000,
        '{"score": 1' + "0" * 400 + "}",  # float() of this int raised OverflowError before
        '{"score": NaN}',
        '{"score": Infinity}',
    ],
)
def test_malformed_scores_are_missing_rewards(serve, content):
    with pytest.raises(JudgeParseError):
        parse_verdict(content, 0, 10)
    server = serve("content", content=content)
    outcome = _env(server.url).evaluate("haiku-autumn", "Leaves fall.")
    _assert_missing(outcome)
    assert "judge_error" in outcome.info


def test_client_rejects_bad_configuration():
    with pytest.raises(rlrf.ConfigError):
        JudgeClient("http://127.0.0.1:1/v1", "m", min_score=5, max_score=5)
    with pytest.raises(rlrf.ConfigError):
        JudgeClient("http://127.0.0.1:1/v1", "m", response_format="xml")


# ---- llm-katan serving the real default model ---------------------------------------------


@pytest.fixture(scope="module")
def katan():
    """llm-katan serving the embedded SmolLM2-135M on 127.0.0.1 (fails, never skips)."""
    with llm_katan.serve("judge") as served:
        yield served


def _assert_judged(env: JudgeEnv, outcomes) -> None:
    """What a working judge server gives: a parsed verdict per answer, with its critique."""
    assert env.client.stats["failures"] == 0, [o.info for o in outcomes]
    for outcome in outcomes:
        assert outcome.reward is not None, outcome.info.get("judge_error")
        assert 0.0 <= outcome.reward <= 1.0
        assert isinstance(outcome.info["judge_score"], float)
        (fb,) = outcome.feedback_items
        assert fb.kind is FeedbackKind.JUDGE_CRITIQUE and fb.text.strip()
        assert fb.details.model == "judge"


@pytest.mark.parametrize("mode", ["unauthorized", "garbage", "invalid_json", "empty"])
def test_the_real_model_check_fails_against_a_broken_server(serve, mode):
    """The assertions of the real-model test below fail on a server that does not judge."""
    env = _env(serve(mode).url)
    outcomes = env.evaluate_many("list-primes", ["2, 3, 5, 7, 11, 13, 17, 19", "banana"])
    with pytest.raises(AssertionError):
        _assert_judged(env, outcomes)


@pytest.mark.slow
def test_real_model_judge_then_server_killed(katan, monkeypatch):
    url, proc = katan
    monkeypatch.setenv("RLRF_JUDGE_API_KEY", "local-test-key")
    env = JudgeEnv(base_url=url, model="judge", max_tokens=16, timeout_s=60, max_retries=0)
    outcomes = env.evaluate_many("list-primes", ["2, 3, 5, 7, 11, 13, 17, 19", "banana"])
    # At temperature 0 the 135M judge (cut at 16 tokens) answers '```json { "score": 0,
    # "critique":' for both: a cut-off verdict that still parses. A missing reward here means
    # the server did not really judge (401, garbage, invalid JSON: see the test above).
    _assert_judged(env, outcomes)
    assert env.client.stats["requests"] == 2
    # Kill the server mid-run: the next steps report a missing reward, nothing raises.
    proc.kill()
    proc.wait(timeout=15)
    for outcome in env.evaluate_many("list-primes", ["2, 3, 5", "7"]):
        _assert_missing(outcome, "cannot connect")
