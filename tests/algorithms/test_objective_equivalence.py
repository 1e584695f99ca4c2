"""The trainer's losses and gradients are pinned: a refactoring must not change the math.

Each case runs two training steps (rollouts, rows, teacher contexts, two mini-batches so the
second is off-policy, EMA teacher update, GRPO's reference KL once the policy has moved) and
one loss on fixed rows (a row without a teacher, a response longer than a chunk) with a tiny
random model, and records every gradient the optimizer applies, the step metrics and the
fixed-row loss. ``objective_equivalence.json`` holds what the trainer gave when it was
recorded (before the objective refactoring of issue 12): a SHA-256 of every tensor's bytes
(bit-identical on the same platform) and float64 summaries (compared with a tolerance where
the bytes differ, e.g. another CPU's BLAS).

A deliberate change of the loss math invalidates the fixture; re-record it with
``python tests/algorithms/test_objective_equivalence.py --write`` and say so in the commit.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from algorithms.engine.batching import Row, collate
from algorithms.engine.trainer import Trainer
from algorithms.grpo import GRPOConfig
from algorithms.grpo.config import GRPOTrainConfig
from algorithms.sdpo import SDPOConfig
from algorithms.sdpo.config import SDPOTrainConfig
from algorithms.sdpo.objective import SDPORow
from algorithms.testing import TargetCharEnv, tiny_model, tiny_tokenizer

FIXTURE = Path(__file__).with_name("objective_equivalence.json")

COMMON: dict[str, Any] = dict(
    steps=2,
    questions_per_step=2,
    rollouts_per_question=4,
    max_new_tokens=10,
    micro_batch_size=3,
    mini_batches=2,
    logit_chunk_size=4,
    lr=1e-2,
    eval_every=0,
    checkpoint_every=0,
    progress=False,
)


def _configs(output_dir: str) -> dict[str, Any]:
    common = dict(COMMON, output_dir=output_dir)
    sd = dict(top_k=8, teacher_tau=0.5)
    return {
        "grpo": GRPOTrainConfig(**common),
        "grpo_kl": GRPOTrainConfig(grpo=GRPOConfig(kl_coef=0.5), **common),
        "sdpo_logit": SDPOTrainConfig(sdpo=SDPOConfig(alpha=0.5, **sd), **common),
        "sdpo_token": SDPOTrainConfig(sdpo=SDPOConfig(loss_level="token", **sd), **common),
        "sdpo_mix": SDPOTrainConfig(sdpo=SDPOConfig(grpo_mix=0.9, **sd), **common),
    }


def _fixed_rows(tok: Any) -> list[Row]:
    q = "Question: which letter comes first? "
    return [
        SDPORow(tok.encode(q + "1"), tok.encode("abcdefghij"), [-2.0] * 10, 0.5,
                group=0, trajectory=0, teacher_prompt_ids=tok.encode(q + "1 sol a")),
        SDPORow(tok.encode(q + "1"), tok.encode("ab"), [-1.5] * 2, -0.5, group=0, trajectory=1),
        SDPORow(tok.encode(q + "2"), tok.encode("xyzw"), [-3.0] * 4, 1.0,
                group=1, trajectory=0, teacher_prompt_ids=tok.encode(q + "2 feedback")),
    ]  # fmt: skip


def run_case(config: Any) -> dict[str, Any]:
    """Two training steps and one fixed-row loss; every gradient and metric they give."""
    trainer = Trainer(
        config, env=TargetCharEnv(targets="ab"), model=tiny_model(0), tokenizer=tiny_tokenizer()
    )
    trainer._trajectory_writer = None
    grads: list[list[torch.Tensor]] = []

    def hook(optimizer: Any, args: Any, kwargs: Any) -> None:
        grads.append([p.grad.detach().clone() for p in trainer.unwrapped.parameters()])

    trainer.optimizer.optimizer.register_step_pre_hook(hook)
    metrics = []
    for _ in range(config.steps):
        m = trainer.train_step()
        metrics.append({k: v for k, v in sorted(m.items()) if not k.startswith("timing/")})
    rows = _fixed_rows(trainer.tokenizer)
    loss, _ = trainer._loss(collate(rows), trainer._normalizers(rows), on_policy=False)
    loss.backward()
    fixed = [p.grad.detach().clone() for p in trainer.unwrapped.parameters()]
    return {
        "grads": grads,
        "metrics": metrics,
        "fixed_loss": loss.detach().clone(),
        "fixed_grads": fixed,
        "params": [p.detach().clone() for p in trainer.unwrapped.parameters()],
    }


def _summary(t: torch.Tensor) -> dict[str, Any]:
    x = t.detach().cpu().contiguous()
    d = x.double().reshape(-1)
    w = torch.linspace(-1.0, 1.0, d.numel(), dtype=torch.float64) if d.numel() > 1 else d * 0 + 1
    return {
        "sha256": hashlib.sha256(x.numpy().tobytes()).hexdigest(),
        "values": [float(d.sum()), float((d * d).sum()), float((d * w).sum())],
    }


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """A JSON-friendly digest of :func:`run_case`'s result."""
    return {
        "grads": [[_summary(g) for g in step] for step in result["grads"]],
        "metrics": result["metrics"],
        "fixed_loss": _summary(result["fixed_loss"]),
        "fixed_grads": [_summary(g) for g in result["fixed_grads"]],
        "params": [_summary(p) for p in result["params"]],
    }


def _compare(got: Any, want: Any, where: str, exact: list[bool]) -> None:
    if isinstance(want, dict) and "sha256" in want:
        if got["sha256"] == want["sha256"]:
            return
        exact.append(False)
        for a, b in zip(got["values"], want["values"], strict=True):
            assert a == pytest.approx(b, rel=1e-5, abs=1e-9), where
    elif isinstance(want, dict):
        assert sorted(got) == sorted(want), where
        for key in want:
            _compare(got[key], want[key], f"{where}.{key}", exact)
    elif isinstance(want, list):
        assert len(got) == len(want), where
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            _compare(a, b, f"{where}[{i}]", exact)
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-5, abs=1e-9, nan_ok=True), where
    else:
        assert got == want, where


# Metrics the trainer logs since the fixture was recorded (issue 27's learning-signal
# alarms, issue 26's sandbox-error count): they are new keys, not changes to the recorded
# losses, gradients or metrics.
ADDED_SINCE_RECORDING = frozenset(
    {"rollout/signal_groups_frac", "train/update_ratio", "rollout/sandbox_errors"}
)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["grpo", "grpo_kl", "sdpo_logit", "sdpo_token", "sdpo_mix"])
def test_losses_and_gradients_match_the_recording(case, tmp_path):
    want = json.loads(FIXTURE.read_text())[case]
    got = summarize(run_case(_configs(str(tmp_path))[case]))
    for step in got["metrics"]:
        for key in ADDED_SINCE_RECORDING:
            step.pop(key, None)
    assert len(got["grads"]) == 4  # two steps of two mini-batches
    exact: list[bool] = []
    _compare(json.loads(json.dumps(got)), want, case, exact)


def record(path: Path, tensors: Path | None = None) -> None:
    """Write the fixture (and, optionally, every raw tensor with ``torch.save``)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        results = {name: run_case(cfg) for name, cfg in _configs(tmp).items()}
    path.write_text(json.dumps({k: summarize(v) for k, v in results.items()}, indent=1) + "\n")
    if tensors is not None:
        torch.save(results, tensors)


if __name__ == "__main__":
    if "--write" in sys.argv:
        raw = sys.argv[sys.argv.index("--write") + 1 :]
        record(FIXTURE, Path(raw[0]) if raw else None)
    else:
        sys.exit("usage: python tests/algorithms/test_objective_equivalence.py --write [RAW.pt]")
