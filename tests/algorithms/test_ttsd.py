"""Test-time self-distillation and its baselines, on tiny random-weight models."""

from __future__ import annotations

import json

import pytest
import torch

from algorithms.testing import save_tiny, tiny_model, tiny_tokenizer
from algorithms.ttsd import (
    METHODS,
    QuestionResult,
    TTSDConfig,
    attempts_to_reach,
    discovery_at_k,
    run_methods,
)
from rlrf import Feedback, FeedbackKind, Outcome, RLRFEnv
from rlrf.errors import ConfigError


def _fingerprint(model) -> float:
    return float(sum(p.detach().double().sum() for p in model.parameters()))


class ScriptedEnv(RLRFEnv):
    """Every response is graded in order; the ``succeed_on``-th one (1-based) succeeds.

    Records each graded response and, per grading call, a fingerprint of ``model``'s
    weights, so the tests can see what was sampled and from which weights.
    """

    def __init__(self, succeed_on=None, model=None, feedback="Wrong: use only the letter a."):
        super().__init__()
        self.succeed_on, self.model, self.feedback = succeed_on, model, feedback
        self.seen: list[tuple[str, str]] = []  # (task id, response)
        self.weights: list[tuple[str, float]] = []  # (task id, fingerprint) per call

    def task_ids(self, split="train"):
        return ["q0", "q1", "q2"]

    def prompt(self, task_id):
        return [{"role": "user", "content": f"Question {task_id}: answer."}]

    def evaluate(self, task_id, response, history=()):
        self.seen.append((task_id, response))
        if self.succeed_on is not None and len(self.seen) == self.succeed_on:
            return Outcome(reward=1.0)
        return Outcome(0.0, Feedback(FeedbackKind.WRONG_ANSWER, self.feedback))

    def evaluate_many(self, task_id, responses):
        if self.model is not None:
            self.weights.append((task_id, _fingerprint(self.model)))
        return [self.evaluate(task_id, r) for r in responses]


def _config(**kw):
    base = dict(budget=10, batch_size=4, max_new_tokens=6, micro_batch_size=4)
    return TTSDConfig(**{**base, **kw})


def _run(env, method, config, model=None, tasks=("q0",)):
    model = model if model is not None else tiny_model()
    return run_methods(env, list(tasks), config, methods=[method], model=model,
                       tokenizer=tiny_tokenizer())[method]  # fmt: skip


@pytest.mark.parametrize("method", METHODS)
def test_stops_at_first_success(method):
    env = ScriptedEnv(succeed_on=6)
    (r,) = _run(env, method, _config(budget=16))
    assert r.solved and r.attempts == 6 and r.rounds == 2
    assert len(env.seen) == 8  # the second batch of 4 was graded, nothing after it
    assert r.response == env.seen[5][1]


@pytest.mark.parametrize("method", METHODS)
def test_budget_is_respected(method):
    env = ScriptedEnv(succeed_on=None)
    (r,) = _run(env, method, _config(budget=10))
    assert not r.solved and r.attempts == 10 and r.response is None
    assert len(env.seen) == 10  # 4 + 4 + a last batch of 2
    assert r.rounds == 3


def test_first_batch_is_identical_across_methods():
    seen = {}
    for method in METHODS:
        env = ScriptedEnv()
        _run(env, method, _config(budget=8), model=tiny_model(3))
        seen[method] = [resp for _, resp in env.seen]
    assert len(seen["ttsd"]) == 8
    assert seen["ttsd"][:4] == seen["best_of_k"][:4] == seen["multi_turn"][:4]


@pytest.mark.slow
def test_weights_are_reset_between_questions():
    model = tiny_model(1)
    before = [p.detach().clone() for p in model.parameters()]
    start = _fingerprint(model)
    env = ScriptedEnv(model=model)
    config = _config(budget=12, lr=3e-2)
    results = _run(env, "ttsd", config, model=model, tasks=("q0", "q1"))
    # SDPO steps moved the weights inside each question ...
    for r in results:
        assert len(r.info["updates"]) == 3
        assert all(u["train/grad_norm"] > 0 for u in r.info["updates"])
    by_task = {t: [w for tt, w in env.weights if tt == t] for t in ("q0", "q1")}
    for fps in by_task.values():
        assert len(fps) == 3
        assert fps[0] == pytest.approx(start, abs=0, rel=0)  # every question starts fresh
        assert fps[1] != start and fps[2] != fps[1]
    # ... and the model is left as it was found
    for p, p0 in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, p0)
    # q1 after q0 samples exactly what q1 alone samples
    alone = ScriptedEnv()
    _run(alone, "ttsd", config, model=model, tasks=("q1",))
    assert [x for x in env.seen if x[0] == "q1"] == alone.seen


def test_multi_turn_context_never_exceeds_its_limit():
    env = ScriptedEnv(feedback="Wrong. " + "The answer must contain only the letter a. " * 2)
    config = _config(budget=16, batch_size=2, max_new_tokens=8, max_context_tokens=500)
    (r,) = _run(env, "multi_turn", config)
    tokens = r.info["context_tokens"]
    assert len(tokens) == 16
    assert max(tokens) <= 500 - 8
    assert r.info["dropped"] > 0  # the limit did bite: old attempts were dropped
    assert max(tokens) > min(tokens)  # and the context did carry earlier attempts


def test_multi_turn_prompt_too_long_is_a_config_error():
    env = ScriptedEnv()
    with pytest.raises(ConfigError, match="raise max_context_tokens"):
        _run(env, "multi_turn", _config(max_new_tokens=8, max_context_tokens=20))


def test_discovery_curve_and_ratio():
    rows = [
        QuestionResult("m", "a", True, 2, "x", 1, 0.0),
        QuestionResult("m", "b", True, 5, "y", 2, 0.0),
        QuestionResult("m", "c", False, 6, None, 2, 0.0),
        QuestionResult("m", "d", False, 6, None, 2, 0.0),
    ]
    curve = discovery_at_k(rows, 6)
    assert curve == [0.0, 0.25, 0.25, 0.25, 0.5, 0.5]
    assert attempts_to_reach(curve, 0.5) == 5
    assert attempts_to_reach(curve, 0.75) is None
    assert attempts_to_reach(curve, 0.0) is None


def test_unknown_method_is_rejected():
    with pytest.raises(ConfigError, match="unknown method"):
        run_methods(ScriptedEnv(), ["q0"], _config(), methods=["bon"], model=tiny_model(),
                    tokenizer=tiny_tokenizer())  # fmt: skip


@pytest.mark.slow
def test_cli_writes_results_curves_and_plot(tmp_path, capsys):
    from algorithms.commands.ttsd import main

    model_dir = save_tiny(tmp_path / "tiny")
    out = tmp_path / "out"
    code = main(
        ["--env", "rlrf/Arithmetic-v0", "--env-kwargs", "digits=1", "--tasks", "test-00000",
         "test-00001", "--model", str(model_dir), "--budget", "4", "--batch-size", "2",
         "--max-new-tokens", "4", "--output-dir", str(out)],
        prog="rlrf ttsd",
    )  # fmt: skip
    assert code == 0
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and {r["method"] for r in rows} == set(METHODS)
    curves = [json.loads(x) for x in (out / "discovery.jsonl").read_text().splitlines()]
    assert [c["method"] for c in curves] == list(METHODS)
    assert all(len(c["discovery_at_k"]) == 4 for c in curves)
    assert (out / "discovery.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "discovery@k" in printed and "test-00001" in printed
