"""GPU checks (run by benchmarks/gpu_check.sh on a CUDA machine; skipped elsewhere)."""

from __future__ import annotations

import pytest
import torch

from algorithms.engine.trainer import Trainer
from algorithms.grpo.config import GRPOTrainConfig
from algorithms.sdpo.config import SDPOTrainConfig
from algorithms.testing import TargetCharEnv, tiny_model, tiny_tokenizer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("config_cls", [GRPOTrainConfig, SDPOTrainConfig])
def test_bf16_step_on_cuda_updates_the_weights(config_cls, tmp_path):
    config = config_cls(
        steps=1,
        questions_per_step=2,
        rollouts_per_question=4,
        max_new_tokens=8,
        eval_every=0,
        checkpoint_every=0,
        progress=False,
        lr=1e-3,
        mixed_precision="bf16",
        output_dir=str(tmp_path),
    )
    trainer = Trainer(
        config, env=TargetCharEnv(targets="ab"), model=tiny_model(0), tokenizer=tiny_tokenizer()
    )
    assert trainer.unwrapped.device.type == "cuda"
    before = [p.detach().clone() for p in trainer.unwrapped.parameters()]
    metrics = trainer.train_step()
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    moved = sum(
        not torch.equal(a, b) for a, b in zip(before, trainer.unwrapped.parameters(), strict=True)
    )
    assert moved > 0
