"""Memory changes of the update that must not change its math.

One process adds no zero "touching" term to the loss: DDP needs a gradient for every
parameter in every backward, a single process does not, and autograd holds such a zero
gradient of every parameter's size from the start of the backward until the parameter's
real one arrives. A parameter the loss does not reach still gets a zero gradient, so AdamW
decays it and counts its step as before.
"""

from __future__ import annotations

import torch

import algorithms.engine.parallel as parallel_module
from algorithms.engine.trainer import Trainer
from algorithms.grpo.config import GRPOTrainConfig
from algorithms.testing import TargetCharEnv, tiny_model, tiny_tokenizer


def test_one_process_adds_no_zero_term_and_still_decays_unreached_parameters(tmp_path, monkeypatch):
    model = tiny_model(0)
    # a trainable parameter that no forward uses
    model.register_parameter("unused", torch.nn.Parameter(torch.ones(3)))
    cfg = GRPOTrainConfig(
        steps=1,
        questions_per_step=2,
        rollouts_per_question=2,
        max_new_tokens=4,
        micro_batch_size=2,
        lr=0.1,
        weight_decay=0.1,
        eval_every=0,
        checkpoint_every=0,
        progress=False,
        output_dir=str(tmp_path),
    )
    trainer = Trainer(cfg, env=TargetCharEnv(targets="ab"), model=model, tokenizer=tiny_tokenizer())

    def refuse(*_: torch.Tensor) -> torch.Tensor:
        raise AssertionError("a single process built the DDP zero-gradient term")

    monkeypatch.setattr(parallel_module, "zero_touching", refuse)
    before = [p.detach().clone() for p in trainer.unwrapped.parameters()]
    trainer.train_step()
    unused = trainer.unwrapped.unused
    # zero gradient: AdamW only decays it, p <- p (1 - lr wd), and counts the step
    assert torch.allclose(unused.detach(), torch.full((3,), 1.0 - 0.1 * 0.1), rtol=1e-6, atol=0)
    assert int(trainer.optimizer.optimizer.state[unused]["step"]) == 1
    # and the step did train the rest
    after = list(trainer.unwrapped.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True) if a is not unused)
