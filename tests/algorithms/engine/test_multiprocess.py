"""Training on two processes (``torchrun``, gloo on CPU) equals training on one.

Rows are split unevenly between the processes (one process may have none, or none with a
teacher); the gradients each optimizer step sees must equal the single-process gradients on
all the rows, the two processes must end with identical weights, and a non-finite loss on one
process must stop both with a message, not hang them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.algorithms.engine.ddp_worker import CASES, make_rows, make_trainer, run_case
from tests.torchrun import two_processes

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    _two_processes(out, *CASES)
    return out


def _two_processes(out: Path, *args: str) -> None:
    two_processes(Path(__file__).with_name("ddp_worker.py"), out, *args)


def _load(out: Path, case: str, rank: int) -> dict:
    return torch.load(out / f"{case}.rank{rank}.pt", weights_only=False)


def _assert_same_tensors(a: dict, b: dict, exact: bool = False) -> None:
    assert a.keys() == b.keys()
    for name in a:
        if exact:
            assert torch.equal(a[name], b[name]), name
        else:
            torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("case", [c for c, spec in CASES.items() if spec[3] is None])
def test_two_processes_stay_identical(two_process_results: Path, case: str) -> None:
    r0, r1 = (_load(two_process_results, case, r) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    assert r0["error"] is None and r1["error"] is None
    _assert_same_tensors(r0["params"], r1["params"], exact=True)
    if r0["teacher"] is not None:
        _assert_same_tensors(r0["teacher"], r1["teacher"], exact=True)
    expected_steps = CASES[case][2].get("mini_batches", 1)
    assert len(r0["grads"]) == len(r1["grads"]) == expected_steps
    if case in ("grpo", "sdpo", "sdpo_token_mix"):  # micro-batches holding 2+ rows of a group
        assert r0["prefix_caches"] > 0  # the group's shared prompt ran once, through DDP


@pytest.mark.parametrize(
    "case",
    [c for c, spec in CASES.items() if spec[3] is None and spec[2].get("mini_batches", 1) == 1],
)
def test_two_processes_match_one_process(two_process_results: Path, case: str, tmp_path) -> None:
    ref = run_case(make_trainer(case, tmp_path), make_rows(case))
    assert ref["error"] is None and ref["metrics"]["train/optimizer_steps"] == 1
    got = _load(two_process_results, case, 0)
    assert len(got["grads"]) == len(ref["grads"]) == 1
    # Gradients, not parameters: AdamW's first step is about lr * sign(grad), so a gradient
    # of ~1e-9 summed in another order may move a weight the other way.
    _assert_same_tensors(got["grads"][0], ref["grads"][0])
    for key in ("train/loss", "train/grad_norm"):
        assert got["metrics"][key] == pytest.approx(ref["metrics"][key], rel=1e-4, abs=1e-7)


def test_nan_on_one_process_stops_both(two_process_results: Path) -> None:
    r0, r1 = (_load(two_process_results, "nan_on_rank1", r) for r in (0, 1))
    assert r1["error"] is not None and "non-finite loss (nan) at step 1" in r1["error"]
    assert r0["error"] is not None and "non-finite loss on another process" in r0["error"]
    assert r0["grads"] == [] and r1["grads"] == []  # no optimizer step was taken
    _assert_same_tensors(r0["params"], r1["params"], exact=True)


def test_whole_run_on_two_processes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    _two_processes(out, "--train")
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in lines if "rollout/generations" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    # 3 tasks per step over 2 processes (2 + 1), 2 rollouts each: all counted, all written
    assert [r["rollout/generations"] for r in steps] == [6.0, 12.0, 18.0]
    evals = [r for r in lines if "eval/accuracy" in r]
    assert [r["step"] for r in evals] == [0, 2, 3]
    assert all(r["eval/tasks"] == 2 and r["eval/response_tokens_mean"] > 0 for r in evals)
    groups = (out / "trajectories.jsonl").read_text().splitlines()
    assert len(groups) == 9
    assert (out / "final" / "config.json").exists()
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == [
        "step_000002",
        "step_000003",
    ]
