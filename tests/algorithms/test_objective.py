"""A third algorithm plugs into the trainer through the Objective protocol alone."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from algorithms.config import TrainConfig
from algorithms.engine.trainer import Trainer
from algorithms.objective import Objective, rollout_rows, rollouts_with_reward
from algorithms.testing import tiny_model, tiny_tokenizer
from rlrf import Outcome, RLRFEnv
from rlrf.errors import ConfigError


class EvenLength(RLRFEnv):
    """Success when the response has an even number of characters (about half the time)."""

    def task_ids(self, split="train"):
        return ["0", "1"]

    def prompt(self, task_id):
        return [{"role": "user", "content": "go"}]

    def evaluate(self, task_id, response, history=()):
        return Outcome(reward=float(len(response) % 2 == 0))


class RejectionSampling:
    """Rejection-sampling fine-tuning: the NLL of the successful rollouts (not in the library)."""

    metric_names = ("train/nll", "rollout/successes")

    def __init__(self) -> None:
        self.steps = 0

    def rows(self, groups, encode):
        keys = [k for k in rollouts_with_reward(groups) if groups[k[0]].trajectories[k[1]].success]
        rows = rollout_rows(groups, keys, encode, advantages=dict.fromkeys(keys, 1.0))
        return rows, {"successes": float(len(keys))}

    def normalizers(self, rows):
        return {"tokens": float(sum(len(r.response_ids) for r in rows))}

    def loss(self, batch, norm, scorer, *, on_policy):
        hidden, mask = scorer.student_hidden(batch)
        lp = scorer.logprobs(hidden, batch.response_ids)
        nll = -torch.where(mask, lp, torch.zeros_like(lp)).sum() / norm["tokens"]
        return nll, {"nll": nll.detach()}

    def after_optimizer_step(self, model):
        self.steps += 1

    def rollout_metrics(self, stats):
        return {"rollout/successes": stats["successes"]}

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, state):
        self.steps = state["steps"]


@dataclass
class RejectionSamplingConfig(TrainConfig):
    """The shared training options; the objective above."""

    def build_objective(self, model, tokenizer):
        return RejectionSampling()


SMALL = dict(
    steps=1, questions_per_step=2, rollouts_per_question=4, max_new_tokens=6, eval_every=0,
    checkpoint_every=0, progress=False, lr=1e-3, mini_batches=2,
)  # fmt: skip


def test_a_new_objective_trains_checkpoints_and_logs(tmp_path):
    config = RejectionSamplingConfig(output_dir=str(tmp_path), **SMALL)
    trainer = Trainer(config, env=EvenLength(), model=tiny_model(0), tokenizer=tiny_tokenizer())
    assert isinstance(trainer.objective, Objective)
    before = [p.detach().clone() for p in trainer.unwrapped.parameters()]
    metrics = trainer.train_step()
    successes = sum(t.success for g in trainer.last_groups for t in g.trajectories)
    assert 0 < successes < 8, "pick a seed with some successes and some failures"
    assert metrics["rollout/successes"] == successes == metrics["rollout/trained_rows"]
    assert metrics["train/nll"] > 0 and metrics["train/optimizer_steps"] == 2
    assert trainer.objective.steps == 2  # the hook ran after each optimizer step
    after = list(trainer.unwrapped.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    path = trainer.save()
    trainer.objective.steps = 0
    trainer.load(path)
    assert trainer.objective.steps == 2  # its state came back from the checkpoint


def test_an_incomplete_objective_is_refused_by_name(tmp_path):
    class Partial(RejectionSamplingConfig):
        def build_objective(self, model, tokenizer):
            return object()

    with pytest.raises(ConfigError, match=r"lacks \['metric_names', 'rows'.*Objective protocol"):
        Trainer(
            Partial(output_dir=str(tmp_path), **SMALL), env=EvenLength(), model=tiny_model(0),
            tokenizer=tiny_tokenizer(),
        )  # fmt: skip


def test_checkpoints_from_before_the_objective_key_still_load(tmp_path):
    from algorithms.engine.checkpoint import load_checkpoint, save_checkpoint
    from algorithms.sdpo.config import SDPOTrainConfig
    from algorithms.testing import TargetCharEnv

    def make(out):
        config = SDPOTrainConfig(output_dir=str(out), **SMALL)
        return Trainer(config, env=TargetCharEnv(), model=tiny_model(0), tokenizer=tiny_tokenizer())

    trainer = make(tmp_path / "a")
    with torch.no_grad():
        for p in trainer.objective.teacher.module.parameters():
            p.add_(1.0)
    state = load_checkpoint(trainer.save())
    state["teacher"] = state.pop("objective")["teacher"]  # the layout before issue 12
    old = save_checkpoint(tmp_path / "old", 0, state)
    fresh = make(tmp_path / "b")
    fresh.load(old)
    for a, b in zip(
        fresh.objective.teacher.module.parameters(),
        trainer.objective.teacher.module.parameters(),
        strict=True,
    ):
        assert torch.equal(a, b)
    del state["teacher"]  # a GRPO run's checkpoint cannot resume SDPO
    with pytest.raises(ConfigError, match="holds no teacher"):
        fresh.load(save_checkpoint(tmp_path / "grpo", 0, state))
