"""Run trainer updates on several processes (``torchrun``); the tests compare with one process.

    python -m torch.distributed.run --standalone --nproc_per_node 2 \
        tests/algorithms/engine/ddp_worker.py OUT_DIR CASE [CASE ...]
    python -m torch.distributed.run ... tests/algorithms/engine/ddp_worker.py OUT_DIR --train

Every case builds the same tiny model and the same fixed rows on every process; process r
trains on ``rows[r::world]`` (uneven on purpose) and writes ``OUT_DIR/CASE.rankR.pt`` with
the gradients seen at each optimizer step, the final parameters, the metrics and the error
message if the update raised. ``CASES`` and the helpers are imported by the tests to build
the single-process reference.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

import torch

from algorithms import scoring as policy
from algorithms.engine.batching import Row
from algorithms.engine.trainer import Trainer, TrainingError
from algorithms.grpo.config import GRPOTrainConfig
from algorithms.sdpo.config import SDPOTrainConfig
from algorithms.sdpo.objective import SDPORow
from algorithms.testing import TargetCharEnv, recording_build, tiny_model, tiny_tokenizer

# name -> (algorithm, number of rows, config overrides, rank whose rows get a NaN advantage)
CASES: dict[str, tuple[str, int, dict[str, Any], int | None]] = {
    "grpo": ("grpo", 5, {"micro_batch_size": 2}, None),
    "grpo_seq_mean": (
        "grpo",
        5,
        {"micro_batch_size": 1, "aggregation": "seq_mean_token_mean"},
        None,
    ),
    "sdpo": ("sdpo", 6, {"micro_batch_size": 2}, None),
    "sdpo_token_mix": (
        "sdpo",
        6,
        {"micro_batch_size": 4, "loss_level": "token", "grpo_mix": 0.5},
        None,
    ),
    "one_row": ("grpo", 1, {}, None),
    "two_mini_batches": ("grpo", 3, {"mini_batches": 2}, None),
    "nan_on_rank1": ("grpo", 4, {"micro_batch_size": 1}, 1),
}


def make_trainer(case: str, output_dir: Path) -> Trainer:
    """The case's trainer on a fixed tiny model (identical on every process)."""
    algo, _, overrides, _ = CASES[case]
    flat = dict(overrides)
    sub: dict[str, Any] = {}
    for key in ("aggregation", "loss_level", "grpo_mix"):
        if key in flat:
            sub[key] = flat.pop(key)
    common: dict[str, Any] = dict(
        max_new_tokens=8, lr=1e-2, progress=False, output_dir=str(output_dir), **flat
    )
    if algo == "grpo":
        from algorithms.grpo import GRPOConfig

        cfg: Any = GRPOTrainConfig(grpo=GRPOConfig(**sub), **common)
    else:
        from algorithms.grpo import GRPOConfig
        from algorithms.sdpo import SDPOConfig

        sd = {k: v for k, v in sub.items() if k in ("loss_level", "grpo_mix")}
        cfg = SDPOTrainConfig(
            sdpo=SDPOConfig(top_k=8, teacher_tau=0.1, **sd), grpo=GRPOConfig(), **common
        )
    return Trainer(cfg, env=TargetCharEnv(), model=tiny_model(0), tokenizer=tiny_tokenizer())


def make_rows(case: str) -> list[Row]:
    """Fixed rows: varied prompt/response lengths; SDPO rows at even indices get a teacher.

    Row i belongs to group ``i % 2``, so with two processes a group stays on one process;
    a group's prompts (and teacher prompts) share a 20-token prefix, so the student and
    teacher passes run it once.
    """
    algo, n, _, _ = CASES[case]
    rng = random.Random(7)
    shared = [[rng.randrange(3, 90) for _ in range(20)] for _ in range(2)]
    rows = []
    for i in range(n):
        prefix = shared[i % 2]
        prompt = prefix + [rng.randrange(3, 90) for _ in range(rng.randint(1, 6))]
        response = [rng.randrange(3, 90) for _ in range(rng.randint(2, 7))]
        teacher = None
        if algo == "sdpo" and i % 2 == 0:  # process 1 (odd rows) gets no teacher row
            teacher = prefix + [rng.randrange(3, 90) for _ in range(rng.randint(5, 14))]
        rows.append(
            SDPORow(
                prompt_ids=prompt,
                response_ids=response,
                old_logprobs=[-rng.uniform(3.0, 6.0) for _ in response],
                advantage=rng.uniform(-1.0, 1.0),
                teacher_prompt_ids=teacher,
                group=i % 2,
                trajectory=i // 2,
            )
        )
    return rows


def run_case(trainer: Trainer, rows: list[Row]) -> dict[str, Any]:
    """Run one ``_update`` and record the gradients at every optimizer step."""
    grads: list[dict[str, torch.Tensor]] = []
    step = trainer.optimizer.step

    def recording_step(*args: Any, **kwargs: Any) -> Any:
        grads.append(
            {
                name: p.grad.detach().clone()
                for name, p in trainer.unwrapped.named_parameters()
                if p.grad is not None
            }
        )
        return step(*args, **kwargs)

    trainer.optimizer.step = recording_step  # type: ignore[method-assign]
    shared_prefixes: list[bool] = []
    original = policy._PrefixCache.__dict__["build"]
    policy._PrefixCache.build = recording_build(built=shared_prefixes)  # type: ignore[method-assign]
    error = None
    metrics: dict[str, float] = {}
    try:
        metrics = trainer._update(rows)
    except TrainingError as e:
        error = str(e)
    finally:
        policy._PrefixCache.build = original  # type: ignore[method-assign]
    teacher = None
    module = getattr(getattr(trainer.objective, "teacher", None), "module", None)
    if module is not None:
        teacher = {k: v.detach().clone() for k, v in module.state_dict().items()}
    return {
        "grads": grads,
        "params": {k: v.detach().clone() for k, v in trainer.unwrapped.state_dict().items()},
        "teacher": teacher,
        "metrics": metrics,
        "error": error,
        "prefix_caches": sum(shared_prefixes),
    }


def main(out_dir: str, cases: list[str]) -> None:
    """Run ``cases`` on this process's share of the rows."""
    import torch.distributed as dist

    out = Path(out_dir)
    for case in cases:
        trainer = make_trainer(case, out / f"run-{case}")
        rank, world = trainer.accelerator.process_index, trainer.accelerator.num_processes
        rows = make_rows(case)[rank::world]
        nan_rank = CASES[case][3]
        if nan_rank == rank:
            rows[0].advantage = float("nan")
        result = run_case(trainer, rows)
        result["world"] = world
        torch.save(result, out / f"{case}.rank{rank}.pt")
        if dist.is_initialized():
            dist.barrier()


def train(out_dir: str) -> None:
    """A whole SDPO run (rollouts, updates, evaluation, checkpoints) on every process."""
    cfg = SDPOTrainConfig(
        steps=3, questions_per_step=3, rollouts_per_question=2, max_new_tokens=6,
        micro_batch_size=2, mini_batches=2, lr=1e-3, eval_every=2, eval_tasks=2, eval_k=2,
        checkpoint_every=2, output_dir=out_dir, progress=False, seed=3,
    )  # fmt: skip
    Trainer(
        cfg, env=TargetCharEnv(targets="ab"), model=tiny_model(1), tokenizer=tiny_tokenizer()
    ).train()


if __name__ == "__main__":
    if sys.argv[2] == "--train":
        train(sys.argv[1])
    else:
        main(sys.argv[1], sys.argv[2:])
