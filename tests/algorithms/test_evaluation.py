"""``rlrf eval``: metrics, resumable output, bad input, and a real OpenAI-compatible server."""

from __future__ import annotations

import itertools
import json
import random
import re
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import algorithms.evaluation as evaluation
import rlrf
from algorithms.evaluation import EvalConfig, evaluate, pass_at_k
from algorithms.testing import save_tiny
from rlrf import Feedback, FeedbackKind, Outcome, RLRFEnv, Sample, SamplingParams
from rlrf.cli import main as rlrf_main
from rlrf.trajectory import Group, read_trajectories
from tests import llm_katan
from tests.toy_envs import CountdownEnv, GuessEnv

rlrf.register("evaltest/TargetChar-v0", "algorithms.testing:TargetCharEnv", override=True)


class FlakyJudgeEnv(RLRFEnv):
    """Tasks ``m*`` cannot be graded until ``FlakyJudgeEnv.up`` (like a judge that is down)."""

    up = False

    def task_ids(self, split="train"):
        return ["ok0", "m1", "ok2", "m3"]

    def prompt(self, task_id):
        return [{"role": "user", "content": f"Answer task {task_id}."}]

    def evaluate(self, task_id, response, history=()):
        if task_id.startswith("m") and not FlakyJudgeEnv.up:
            return Outcome(None, Feedback(FeedbackKind.OTHER, "judge unreachable"))
        if "x" in response:
            return Outcome(1.0)
        return Outcome(0.0, Feedback(FeedbackKind.WRONG_ANSWER, "say x"))


rlrf.register("evaltest/FlakyJudge-v0", FlakyJudgeEnv, override=True)
rlrf.register("evaltest/Countdown-v0", CountdownEnv, override=True)
rlrf.register("evaltest/Guess-v0", GuessEnv, override=True)


class ScriptedBackend:
    """A real SamplingBackend whose i-th sample of every prompt is ``texts[i]``; on a chat
    that already holds an env observation it answers ``"go"``. Counts the prompts it saw."""

    def __init__(self, texts: Sequence[str]):
        self.texts = list(texts)
        self.prompts: list[list] = []

    def sample(self, prompts, n, params: SamplingParams) -> list[list[Sample]]:
        out = []
        for p in prompts:
            self.prompts.append(list(p))
            waiting = any("Still waiting" in m["content"] for m in p)
            texts = ["go"] * n if waiting else [self.texts[i % len(self.texts)] for i in range(n)]
            out.append([Sample(t, None, None, "stop") for t in texts])
        return out


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _groups(out: Path) -> list[Group]:
    return [g for g in read_trajectories(out / "trajectories.jsonl") if isinstance(g, Group)]


# ---- pass@k -------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 5, 6])
def test_pass_at_k_equals_the_fraction_of_k_subsets_holding_a_success(n):
    for c in range(n + 1):
        outcomes = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(outcomes, k))
            brute = sum(any(s) for s in subsets) / len(subsets)
            assert pass_at_k(n, c, k) == pytest.approx(brute)


def test_pass_at_k_rejects_impossible_counts():
    with pytest.raises(ValueError, match="c <= n"):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(4, 1, 5)


# ---- a local HF model --------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A random-weight model folder (config, weights, tokenizer), written once."""
    return save_tiny(tmp_path_factory.mktemp("tiny") / "tiny")


def test_tiny_hf_model_end_to_end_through_the_cli(tmp_path, capsys, tiny_folder):
    model = tiny_folder
    out = tmp_path / "eval"
    args = ["eval", "--env", "evaltest/TargetChar-v0", "--model", str(model), "--rollouts-per-question", "3",
            "--tasks", "3", "--max-new-tokens", "6", "--output-dir", str(out), "--no-progress",
            "--batch-tasks", "2", "--env-kwargs", "n_test=5", "--env-kwargs", "targets=\"ab\""]  # fmt: skip
    assert rlrf_main(args) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    groups = _groups(out)
    assert [g.task_id for g in groups] == ["e0", "e1", "e2"]
    assert all(len(g) == 3 for g in groups)
    # every number in the summary follows from the stored responses
    successes = [[t.success for t in g.trajectories] for g in groups]
    assert summary["avg@3"] == pytest.approx(sum(sum(s) / 3 for s in successes) / 3)
    assert summary["pass@"]["1"] == pytest.approx(summary["avg@3"])
    assert summary["pass@3"] == pytest.approx(sum(any(s) for s in successes) / 3)
    rewards = [t.reward for g in groups for t in g.trajectories]
    assert summary["reward_mean"] == pytest.approx(sum(rewards) / 9)
    spread = [len({t.reward for t in g.trajectories}) > 1 for g in groups]
    assert summary["tasks_with_reward_spread"] == pytest.approx(sum(spread) / 3)
    tokens = [len(t.turns[0].response_token_ids) for g in groups for t in g.trajectories]
    assert summary["response_tokens_mean"] == pytest.approx(sum(tokens) / 9)
    assert 1 <= summary["response_tokens_mean"] <= 6
    n_feedback = sum(len(t.feedback) for g in groups for t in g.trajectories)
    assert sum(v for k, v in summary["feedback_kinds"].items() if k != "no_feedback") == n_feedback
    # TargetCharEnv's feedback names the target; a response cut at 6 tokens is marked
    assert set(summary["feedback_kinds"]) <= {"wrong_answer", "no_feedback"}
    tasks = _rows(out / "tasks.jsonl")
    assert [t["task_id"] for t in tasks] == ["e0", "e1", "e2"]
    assert [t["successes"] for t in tasks] == [sum(s) for s in successes]
    report = (out / "report.md").read_text()
    assert "| avg@3 |" in report and "eval.png" in report
    assert (out / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"avg@3 {summary['avg@3']:.3f}" in printed
    assert json.loads((out / "eval_config.json").read_text())["k"] == 3


def test_resume_skips_finished_tasks_and_drops_a_half_written_line(tmp_path):
    out = tmp_path / "eval"
    cfg = dict(env="evaltest/TargetChar-v0", model="m", k=2, max_tokens=4, out=str(out),
               batch_tasks=1, env_kwargs={"n_test": 4})  # fmt: skip
    backend = ScriptedBackend(["aaa", "ab"])
    first = evaluate(EvalConfig(tasks=2, **cfg), backend=backend, progress=False)
    assert first.resumed == 0 and [g.task_id for g in first.groups] == ["e0", "e1"]
    kept = (out / "trajectories.jsonl").read_text()
    # a crash mid-write of task e2's line: half a JSON record, no newline
    half = json.dumps({"schema_version": 1, "type": "group", "task_id": "e2"})[:30]
    (out / "trajectories.jsonl").write_text(kept + half)
    second = evaluate(EvalConfig(tasks=4, **cfg), backend=backend, progress=False)
    assert second.resumed == 2 and len(backend.prompts) == 4  # only e2 and e3 sampled
    assert [g.task_id for g in second.groups] == ["e0", "e1", "e2", "e3"]
    text = (out / "trajectories.jsonl").read_text()
    assert text.startswith(kept)  # the finished tasks' lines untouched
    assert text.count("\n") == 4 and all(json.loads(line) for line in text.splitlines())
    assert [g.task_id for g in _groups(out)] == ["e0", "e1", "e2", "e3"]
    assert second.groups[0].to_dict() == first.groups[0].to_dict()
    third = evaluate(EvalConfig(tasks=4, **cfg), backend=backend, progress=False)
    assert (
        third.resumed == 4
        and len(backend.prompts) == 4
        and (out / "trajectories.jsonl").read_text() == text
    )


def test_resume_refuses_results_of_another_evaluation(tmp_path):
    out = tmp_path / "eval"
    cfg = dict(env="evaltest/TargetChar-v0", model="m", max_tokens=4, out=str(out), tasks=1)
    backend = ScriptedBackend(["aaa", "ab"])
    evaluate(EvalConfig(k=2, **cfg), backend=backend, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(rlrf.ConfigError, match=r"k: 2 there, 3 now.*--fresh"):
        evaluate(EvalConfig(k=3, **cfg), backend=backend, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    fresh = evaluate(EvalConfig(k=3, **cfg), backend=backend, fresh=True, progress=False)
    assert fresh.resumed == 0 and len(fresh.groups[0]) == 3


# ---- missing rewards, multi-turn ------------------------------------------------------------


def test_missing_rewards_are_reported_never_scored_zero_and_retried(tmp_path):
    FlakyJudgeEnv.up = False
    out = tmp_path / "eval"
    cfg = EvalConfig(env="evaltest/FlakyJudge-v0", split="train", k=2, out=str(out))
    backend = ScriptedBackend(["x", "no"])
    first = evaluate(cfg, backend=backend, progress=False).summary
    assert first["tasks_missing_reward"] == ["m1", "m3"]
    assert first["samples_missing_reward"] == 4
    assert first["tasks_scored"] == 2
    assert first["avg@2"] == pytest.approx(0.5)  # ok0, ok2: 1 of 2 each; m1, m3 not counted
    assert first["pass@2"] == pytest.approx(1.0)
    assert first["tasks_with_reward_spread"] == 1.0  # rewards 1 and 0 in both scored tasks
    rows = {r["task_id"]: r for r in _rows(out / "tasks.jsonl")}
    assert rows["m1"]["success_rate"] is None and rows["m1"]["rewards"] == [None, None]
    assert "m1" in (out / "report.md").read_text()
    FlakyJudgeEnv.up = True
    try:
        second = evaluate(cfg, backend=backend, progress=False)
    finally:
        FlakyJudgeEnv.up = False
    assert second.resumed == 2  # ok0 and ok2 kept; m1 and m3 graded again
    assert second.summary["tasks_missing_reward"] == []
    assert second.summary["avg@2"] == pytest.approx(0.5)
    assert len(backend.prompts) == 4 + 2


class BoomEnv(FlakyJudgeEnv):
    """Task ``m1`` makes the grader raise: an env bug, not the policy's fault."""

    up = True

    def evaluate(self, task_id, response, history=()):
        if task_id == "m1":
            raise ValueError("grader crashed on m1")
        return Outcome(1.0)


def test_env_errors_are_counted_and_quoted_not_scored(tmp_path, capsys):
    rlrf.register("evaltest/Boom-v0", BoomEnv, override=True)
    cfg = EvalConfig(env="evaltest/Boom-v0", split="train", k=2, out=str(tmp_path / "e"))
    with pytest.warns(Warning, match="grader crashed"):
        summary = evaluate(cfg, backend=ScriptedBackend(["x"]), progress=False).summary
    assert summary["env_errors"] == 2
    assert "grader crashed on m1" in summary["env_error_examples"][0]
    assert summary["tasks_missing_reward"] == ["m1"]
    assert summary["avg@2"] == 1.0 and summary["tasks_scored"] == 3
    assert "grader crashed on m1" in (tmp_path / "e" / "report.md").read_text()


class BrokenSandboxEnv(FlakyJudgeEnv):
    """The grader's sandbox fails on task ``m1`` (as envs report it: ``info["sandbox_error"]``,
    reward missing); the judge of ``m3`` is down (reward missing, no sandbox error)."""

    def evaluate(self, task_id, response, history=()):
        if task_id == "m1":
            return Outcome(None, info={"sandbox_error": "worker died: MemoryError"})
        return super().evaluate(task_id, response, history)


def test_sandbox_errors_are_counted_apart_and_printed(tmp_path):
    rlrf.register("evaltest/BrokenSandbox-v0", BrokenSandboxEnv, override=True)
    cfg = EvalConfig(env="evaltest/BrokenSandbox-v0", split="train", k=2, out=str(tmp_path / "e"))
    result = evaluate(cfg, backend=ScriptedBackend(["x", "no"]), progress=False)
    summary = result.summary
    assert summary["samples_missing_reward"] == 4 and summary["sandbox_errors"] == 2
    assert summary["sandbox_error_examples"] == ["worker died: MemoryError"] * 2
    assert summary["env_errors"] == 0
    text = evaluation.format_summary(cfg, result)
    assert (
        "sandbox errors: 2 of 8 sample(s) not graded because the sandbox itself failed "
        "(reward missing, not 0), e.g. worker died: MemoryError"
    ) in text


def test_multi_turn_envs_are_played_whole(tmp_path):
    backend = ScriptedBackend(["wait", "go"])
    cfg = EvalConfig(env="evaltest/Countdown-v0", split="train", k=2, out=str(tmp_path / "e"))
    summary = evaluate(cfg, backend=backend, progress=False).summary
    (group,) = _groups(tmp_path / "e")
    waited, direct = group.trajectories
    assert [t.response for t in waited.turns] == ["wait", "go"] and waited.success
    assert [t.response for t in direct.turns] == ["go"] and direct.success
    assert summary["turns_mean"] == pytest.approx(1.5)
    assert summary["avg@2"] == 1.0
    assert summary["feedback_kinds"] == {"no_feedback": 1, "other": 1}


class BisectingBackend:
    """Plays the guessing game by bisection, reading "Higher/Lower than N" from the chat."""

    def sample(self, prompts, n, params):
        out = []
        for chat in prompts:
            lo, hi = 10, 99
            for m in chat:
                words = m["content"].rstrip(".").split()
                if m["role"] == "user" and len(words) == 3 and words[1] == "than":
                    if words[0] == "Higher":
                        lo = int(words[2]) + 1
                    else:
                        hi = int(words[2]) - 1
            out.append([Sample(str((lo + hi) // 2), None, None, "stop")] * n)
        return out


def test_gymnasium_style_env_is_played_by_seed_and_resumes(tmp_path, monkeypatch):
    from rlrf.rollout import EVAL_SEED

    cfg = EvalConfig(env="evaltest/Guess-v0", k=2, tasks=4, out=str(tmp_path / "e"))
    result = evaluate(cfg, backend=BisectingBackend(), progress=False)
    assert [t.seed for g in result.groups for t in g.trajectories] == [
        EVAL_SEED + i for i in range(4) for _ in range(2)
    ]
    for g in result.groups:
        secret = int(g.task_id.removeprefix("secret-"))
        for t in g.trajectories:  # a whole stateful episode: bisect until found or 3 turns
            assert t.task_id == g.task_id and 1 <= len(t.turns) <= 3
            assert t.success == (int(t.turns[-1].response) == secret)
            assert all(f.kind is FeedbackKind.WRONG_ANSWER for f in t.feedback)
            assert len(t.feedback) == len(t.turns) - t.success
    s = result.summary
    assert s["turns_mean"] == pytest.approx(
        sum(len(t.turns) for g in result.groups for t in g.trajectories) / 8
    )
    # nothing is left to play, so no model is loaded to re-report
    monkeypatch.setattr(evaluation, "build_backend", lambda config: pytest.fail("loaded"))
    again = evaluate(cfg, progress=False)
    assert again.resumed == 4 and again.summary["avg@2"] == s["avg@2"]


class SeedIgnoringGuess(GuessEnv):
    def reset(self, *, seed=None, options=None):
        chat, _ = super().reset(seed=seed, options=options)
        self.secret = int(random.Random().randint(10, 10**6))
        return chat, {"task_id": f"secret-{self.secret}"}


def test_eval_stops_when_a_group_mixes_tasks(tmp_path):
    rlrf.register("evaltest/SeedIgnoringGuess-v0", SeedIgnoringGuess, override=True)
    out = tmp_path / "e"
    cfg = EvalConfig(env="evaltest/SeedIgnoringGuess-v0", k=2, tasks=2, out=str(out))
    with pytest.raises(rlrf.errors.GroupMismatchError, match=r"reset\(seed=\d+\) gave the"):
        evaluate(cfg, backend=BisectingBackend(), progress=False)
    assert not (out / "summary.json").exists()


# ---- bad input: one line, nothing written -------------------------------------------------


class _FakeHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        server = self.server
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length) or b"{}")
        with server.lock:
            server.requests += 1
            count = server.requests
        mode = server.mode
        if server.fail_after is not None and count > server.fail_after:
            return self._send(503, {"error": {"message": "server went away"}})
        if mode == "flaky" and count <= 2:
            return self._send(500, {"error": {"message": "overloaded"}})
        if mode == "limit_n" and body.get("n", 1) > 1:
            return self._send(400, {"error": {"message": "n must be at most 1"}})
        if mode == "garbage":
            return self._send(200, b"<html>not an API</html>", "text/html")
        if mode == "invalid_json":
            return self._send(200, b'{"choices": [', "application/json")
        if mode == "no_choices":
            return self._send(200, {"id": "x", "object": "chat.completion", "choices": []})
        n = body.get("n", 1)
        choice = {"index": 0, "message": {"role": "assistant", "content": "x"},
                  "finish_reason": "stop"}  # fmt: skip
        return self._send(200, {"id": "x", "object": "chat.completion", "created": 0,
                                "model": body.get("model"), "choices": [choice] * n})  # fmt: skip

    def _send(self, status, payload, ctype="application/json"):
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def fake_server():
    servers = []

    def start(mode):
        server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeHandler)
        server.daemon_threads = True
        server.mode, server.requests, server.lock = mode, 0, threading.Lock()
        server.fail_after = None
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/v1", server

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def _fails_cleanly(capsys, tmp_path, args, *needles):
    out = tmp_path / "eval-out"
    rc = rlrf_main(["eval", *args, "--output-dir", str(out), "--no-progress", "--tasks", "2"])
    err = capsys.readouterr().err.strip()
    assert rc == 1
    assert len(err.splitlines()) == 1 and err.startswith("rlrf eval: error: "), err
    for needle in needles:
        assert needle in err, err
    assert not out.exists()  # nothing half-written for the next run to trust
    return err


def test_env_id_typo(capsys, tmp_path):
    _fails_cleanly(
        capsys, tmp_path, ["--env", "rlrf/Arithmetc-v0"], "Did you mean", "Arithmetic-v0"
    )


def test_missing_model_folder(capsys, tmp_path):
    missing = str(tmp_path / "runs" / "nope" / "final")
    _fails_cleanly(
        capsys,
        tmp_path,
        ["--env", "rlrf/Arithmetic-v0", "--model", missing],
        missing,
        "does not exist",
    )


def test_folder_that_is_not_a_model(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    args = ["--env", "rlrf/Arithmetic-v0", "--model", str(tmp_path / "empty")]
    _fails_cleanly(capsys, tmp_path, args, "no config.json")


def test_run_folder_resolves_to_its_final_model(tmp_path):
    from algorithms.evaluation import resolve_eval_model

    (tmp_path / "run" / "final").mkdir(parents=True)
    (tmp_path / "run" / "final" / "config.json").write_text("{}")
    (tmp_path / "run" / "checkpoints").mkdir()
    final = str(tmp_path / "run" / "final")
    assert resolve_eval_model(str(tmp_path / "run")) == final
    assert resolve_eval_model(final) == final
    with pytest.raises(rlrf.RLRFError, match="not a model folder or a finished run"):
        resolve_eval_model(str(tmp_path / "run" / "checkpoints"))


def test_unreachable_endpoint(capsys, tmp_path):
    url = f"http://127.0.0.1:{llm_katan.free_port()}/v1"
    args = ["--env", "rlrf/Arithmetic-v0", "--base-url", url, "--model", "m", "--max-retries", "1"]
    _fails_cleanly(capsys, tmp_path, args, f"cannot connect to {url}", "2 attempt(s)")


def test_unset_api_key_variable(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("RLRF_TEST_NO_SUCH_KEY", raising=False)
    args = ["--env", "rlrf/Arithmetic-v0", "--base-url", "http://127.0.0.1:9/v1", "--model", "m",
            "--api-key-env", "RLRF_TEST_NO_SUCH_KEY"]  # fmt: skip
    _fails_cleanly(capsys, tmp_path, args, "RLRF_TEST_NO_SUCH_KEY is not set")


@pytest.mark.parametrize(
    ("mode", "needles"),
    [
        ("garbage", ["not an OpenAI chat completion"]),
        ("invalid_json", ["not an OpenAI chat completion"]),
        ("no_choices", ["returned no choices", "'m'"]),
        ("limit_n", ["n=4", "n must be at most 1", "--samples-per-request 1"]),
    ],
)
def test_bad_endpoint_answers(capsys, tmp_path, fake_server, mode, needles):
    url, _ = fake_server(mode)
    args = ["--env", "rlrf/Arithmetic-v0", "--base-url", url, "--model", "m", "--rollouts-per-question", "4",
            "--max-retries", "0"]  # fmt: skip
    _fails_cleanly(capsys, tmp_path, args, url, *needles)


def test_server_that_caps_n_works_with_samples_per_request(tmp_path, fake_server):
    url, server = fake_server("limit_n")
    cfg = EvalConfig(env="rlrf/Arithmetic-v0", base_url=url, model="m", k=3, tasks=2,
                     samples_per_request=1, out=str(tmp_path / "e"))  # fmt: skip
    result = evaluate(cfg, progress=False)
    assert [len(g) for g in result.groups] == [3, 3]
    assert server.requests == 6 == result.summary["endpoint"]["attempts"]


def test_endpoint_failure_mid_run_keeps_finished_tasks_for_the_rerun(tmp_path, fake_server, capsys):
    url, server = fake_server("ok")
    server.fail_after = 2  # one request per task (n=k): tasks 1 and 2 finish, task 3 fails
    out = tmp_path / "e"
    args = ["eval", "--env", "rlrf/Arithmetic-v0", "--base-url", url, "--model", "m", "--rollouts-per-question", "2",
            "--tasks", "4", "--concurrency", "1", "--max-retries", "0", "--output-dir", str(out),
            "--no-progress"]  # fmt: skip
    assert rlrf_main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("rlrf eval: error: ") and "HTTP 503" in err and "server went away" in err
    assert len(_groups(out)) == 2
    assert not (out / "summary.json").exists()  # no report claims a finished evaluation
    server.fail_after = None
    assert rlrf_main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tasks_resumed"] == 2 and summary["endpoint"]["attempts"] == 2
    assert summary["tasks_scored"] == 4 and len(_groups(out)) == 4


def test_server_errors_are_retried_and_counted(tmp_path, fake_server):
    url, server = fake_server("flaky")
    cfg = EvalConfig(env="rlrf/Arithmetic-v0", base_url=url, model="m", k=2, tasks=1,
                     max_retries=3, out=str(tmp_path / "e"))  # fmt: skip
    summary = evaluate(cfg, progress=False).summary
    assert summary["endpoint"] == {"attempts": 3, "retries": 2}
    assert server.requests == 3
    assert summary["tasks_scored"] == 1


# ---- llm-katan serving the embedded model --------------------------------------------------


@pytest.fixture(scope="module")
def katan():
    """llm-katan serving the embedded SmolLM2-135M on 127.0.0.1, API keys checked."""
    with llm_katan.serve("smol", ["--validate-keys", "--api-keys", "openai=katan-key"]) as (
        url,
        _,
    ):
        yield url


@pytest.mark.slow
def test_real_server_eval_then_resume(katan, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KATAN_KEY", "katan-key")
    out = tmp_path / "eval"
    args = ["eval", "--env", "rlrf/Arithmetic-v0", "--base-url", katan, "--model", "smol",
            "--api-key-env", "KATAN_KEY", "--rollouts-per-question", "2", "--tasks", "2", "--max-new-tokens", "16",
            "--concurrency", "2", "--tokenizer", "smollm2-135m", "--output-dir", str(out)]  # fmt: skip
    assert rlrf_main(args) == 0
    bar = capsys.readouterr().err  # tqdm: done/total [elapsed<remaining (the ETA), rate]
    assert "2/2 [" in bar and ("task/s" in bar or "s/task" in bar)
    summary = json.loads((out / "summary.json").read_text())
    groups = _groups(out)
    assert [len(g) for g in groups] == [2, 2]
    responses = [t.response for g in groups for t in g.trajectories]
    assert all(isinstance(r, str) for r in responses) and any(r.strip() for r in responses)
    # the arithmetic env grades every real response: a reward and, unless right, feedback
    assert summary["samples_missing_reward"] == 0
    # --tokenizer: response lengths in the served model's tokens
    lengths = [len(t.turns[0].response_token_ids) for g in groups for t in g.trajectories]
    assert summary["response_tokens_mean"] == pytest.approx(sum(lengths) / 4)
    assert sum(summary["feedback_kinds"].values()) == 4  # kinds, or no_feedback, per response
    assert summary["endpoint"]["attempts"] == 4  # llm-katan ignores n: one request per sample
    assert summary["endpoint"]["retries"] == 0
    # re-running asks nothing new
    assert rlrf_main([*args, "--no-progress"]) == 0
    again = json.loads((out / "summary.json").read_text())
    assert again["tasks_resumed"] == 2 and "endpoint" not in again  # nothing asked, no client


@pytest.mark.slow
def test_real_server_wrong_api_key(katan, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KATAN_KEY", "not-the-key")
    args = ["--env", "rlrf/Arithmetic-v0", "--base-url", katan, "--model", "smol",
            "--api-key-env", "KATAN_KEY", "--max-retries", "0"]  # fmt: skip
    _fails_cleanly(capsys, tmp_path, args, "refused the API key (HTTP 401", "--api-key-env")


class TokenBackend(ScriptedBackend):
    """ScriptedBackend whose samples carry one token id per character."""

    def sample(self, prompts, n, params):
        return [
            [Sample(s.text, list(range(len(s.text))), None, "stop") for s in group]
            for group in super().sample(prompts, n, params)
        ]


def test_eval_prints_response_length_per_turn_with_its_unit(tmp_path):
    cfg = EvalConfig(env="evaltest/Countdown-v0", split="train", k=2, out=str(tmp_path / "e"))
    result = evaluate(cfg, backend=TokenBackend(["wait", "go"]), progress=False)
    # episodes: "wait" + "go" (6 tokens, 2 turns) and "go" (2 tokens, 1 turn)
    line = evaluation.format_summary(cfg, result).splitlines()[3]
    assert line == (
        "mean response 2.7 tokens per turn (4.0 per episode of 1.50 turns); cut at "
        "--max-new-tokens: 0.00 of turns"
    )
    assert "| cut at --max-new-tokens |" in (tmp_path / "e" / "report.md").read_text()


def test_eval_help_shows_each_default_once(capsys):
    with pytest.raises(SystemExit):
        rlrf_main(["eval", "--help"])
    out = capsys.readouterr().out
    flat = " ".join(out.split())
    assert "(default: None)" not in flat
    assert not re.search(r"\(default: [^)]*\) \(default:", flat)
