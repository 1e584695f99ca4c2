"""examples/sdpo_minimal.py: its first update equals the Trainer's on the same seed and batch."""

from __future__ import annotations

import ast
import copy
import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

from algorithms.engine.trainer import Trainer
from algorithms.sampling.hf import HFPolicy
from algorithms.sdpo import distillation_loss, teacher_contexts_for_group
from algorithms.sdpo.config import SDPOConfig, SDPOTrainConfig
from algorithms.testing import TargetCharEnv, tiny_model, tiny_tokenizer
from rlrf import Feedback, FeedbackKind
from rlrf.rollout import RolloutStats
from rlrf.trajectory import Group, Trajectory, Turn

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "sdpo_minimal.py"


def _example():
    spec = importlib.util.spec_from_file_location("sdpo_minimal", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it runs
    spec.loader.exec_module(module)
    return module


def _recording(optimizer) -> list[list[torch.Tensor]]:
    grads: list[list[torch.Tensor]] = []

    def hook(opt, args, kwargs):
        grads.append([p.grad.detach().clone() for g in opt.param_groups for p in g["params"]])

    optimizer.register_step_pre_hook(hook)
    return grads


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_first_update_equals_the_trainers(alpha, tmp_path):
    ex = _example()
    args = ex.Args(
        questions_per_step=2, rollouts_per_question=4, max_new_tokens=10, lr=1e-3,
        top_k=8, alpha=alpha, teacher_tau=0.5,
    )  # fmt: skip
    env, tok = TargetCharEnv(targets="ab"), tiny_tokenizer()

    # the example, called piece by piece on a tiny model
    student = tiny_model(0).train()
    policy = HFPolicy(student, tok)
    groups = ex.sample_groups(env, policy, args, step=0)
    trainer_groups = copy.deepcopy(groups)
    rows = ex.make_rows(groups, policy, args)
    assert 0 < len(rows) <= 8
    teacher = ex.make_teacher(student)
    optimizer = ex.make_optimizer(student, args)
    ex_grads = _recording(optimizer)
    metrics = ex.update(student, teacher, optimizer, rows, args)

    # the Trainer: same initial weights, same groups, the same SDPO options
    config = SDPOTrainConfig(
        sdpo=SDPOConfig(top_k=8, alpha=alpha, teacher_tau=0.5),
        lr=args.lr, max_new_tokens=10, micro_batch_size=3, logit_chunk_size=4,
        output_dir=str(tmp_path), progress=False,
    )  # fmt: skip
    trainer = Trainer(config, env=env, model=tiny_model(0), tokenizer=tok)
    tr_grads = _recording(trainer.optimizer.optimizer)
    tr_metrics = trainer.learn(trainer_groups, RolloutStats())

    assert tr_metrics["rollout/trained_rows"] == len(rows)
    assert math.isclose(metrics["loss"], tr_metrics["train/loss"], rel_tol=1e-5, abs_tol=1e-8)
    assert math.isclose(
        metrics["divergence"], tr_metrics["train/divergence"], rel_tol=1e-5, abs_tol=1e-8
    )
    assert math.isclose(metrics["grad_norm"], tr_metrics["train/grad_norm"], rel_tol=1e-4)
    assert len(ex_grads) == len(tr_grads) == 1
    for a, b in zip(ex_grads[0], tr_grads[0], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * (float(b.abs().max()) + 1e-12))
    # AdamW's first step moves each weight by about lr: the weights agree far below that
    for a, b in zip(student.parameters(), trainer.unwrapped.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=args.lr * 1e-2)
    for a, b in zip(
        teacher.parameters(), trainer.objective.teacher.module.parameters(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=args.lr * 1e-2)
    moved = max(float((a - b).abs().max()) for a, b in zip(
        student.parameters(), tiny_model(0).parameters(), strict=True))  # fmt: skip
    assert moved > args.lr / 2  # the update did happen


@pytest.mark.slow
def test_the_example_runs_end_to_end():
    ex = _example()
    args = ex.parse_args(
        ["--steps", "2", "--questions-per-step", "2", "--rollouts-per-question", "4",
         "--max-new-tokens", "8", "--lr", "1e-3"]
    )  # fmt: skip
    history = ex.main(args, tiny_model(0), tiny_tokenizer(), TargetCharEnv(targets="ab"))
    assert [h["step"] for h in history] == [1, 2]
    assert all("loss" in h and math.isfinite(h["loss"]) for h in history)


def test_the_example_writes_sdpo_out_itself():
    # what the example is compared on is its own code: nothing of SDPO's comes from the library
    tree = ast.parse(EXAMPLE.read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in imported if m.startswith(("algorithms.sdpo", "algorithms.losses"))}
    assert "algorithms" not in imported


def test_teacher_chats_equal_the_librarys():
    ex = _example()

    def turn(response, reward, *feedback):
        return Turn(response, reward, tuple(Feedback(FeedbackKind.OTHER, f) for f in feedback))

    prompt = ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"})
    cases = [
        [turn("5", 0.0, "too high", "try again"), turn("<think>hm</think> 4", 1.0),
         turn("4", 1.0, "right, but say why"), turn("3", None, "lost")],
        [turn("x", 0.0), turn("y", 0.5, "close")],  # no solution: feedback only, or nothing
        [turn("<think>all thought</think>", 1.0), turn("z", 0.0)],  # an empty solution is none
    ]  # fmt: skip
    shown = []
    for turns in cases:
        group = Group("e", "t", [Trajectory("e", "t", prompt, [t]) for t in turns])
        want = teacher_contexts_for_group(group, SDPOConfig())
        assert ex.teacher_messages(group, ex.Args()) == want
        shown.append([c is not None for c in want])
    assert shown == [[True, True, True, False], [False, True], [False, False]]


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("top_k", [3, 16])  # 16 = V: an empty tail
def test_loss_equals_the_librarys(alpha, top_k):
    ex = _example()
    args = ex.Args(top_k=top_k, alpha=alpha)
    g = torch.Generator().manual_seed(0)
    student = torch.randn(2, 5, 16, generator=g, dtype=torch.float64) * 3
    teacher = student + torch.randn(2, 5, 16, generator=g, dtype=torch.float64)
    lengths = [5, 2]
    rows = [ex.Row([1], list(range(n)), [2]) for n in lengths]

    class Fixed:  # a "model" returning fixed logits for rows in order
        def __init__(self, logits):
            self.logits, self.calls = logits, 0

        def __call__(self, input_ids):
            i, self.calls = self.calls, self.calls + 1
            n = lengths[i]
            out = torch.zeros(1, input_ids.shape[1], 16, dtype=torch.float64)
            out[0, -n - 1 : -1] = self.logits[i, :n]
            return type("Out", (), {"logits": out})

    s = student.clone().requires_grad_(True)
    loss, stats = ex.sdpo_loss(Fixed(s), Fixed(teacher), rows, args)
    mask = torch.arange(5)[None, :] < torch.tensor(lengths)[:, None]
    s2 = student.clone().requires_grad_(True)
    want, want_stats = distillation_loss(s2, teacher, mask, top_k=top_k, alpha=alpha)
    assert loss.item() == pytest.approx(want.item(), rel=1e-9)
    assert float(stats["divergence"]) == pytest.approx(float(want_stats["divergence"]), rel=1e-9)
    loss.backward()
    want.backward()
    torch.testing.assert_close(s.grad, s2.grad, rtol=1e-7, atol=1e-12)


def test_the_example_is_short():
    assert len(EXAMPLE.read_text().splitlines()) <= 300
