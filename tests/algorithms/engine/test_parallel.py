"""FSDP2 (``parallelism: fsdp2``) on two CPU processes over gloo equals one process.

A tiny random-weight Llama with TIED embeddings (the embedding and the LM head one parameter,
as in SmolLM2) is sharded over two ``torchrun`` processes; each process trains on its share
of fixed rows (uneven, and in SDPO one process has no teacher row). One GRPO and one SDPO
update must give the gradients and updated weights (and SDPO's EMA teacher) of one process
training on all the rows. A whole FSDP2 run (rollouts, evaluation, checkpoints, ``final/``)
must write files that load into one process, and resume. Bad launch configurations are
refused with the command to use instead.

This file is also the worker the tests launch::

    python -m torch.distributed.run --standalone --nproc_per_node 2 \\
        tests/algorithms/engine/test_parallel.py OUT_DIR update|train|resume
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[3]
if __name__ == "__main__":  # launched by torchrun as a script
    sys.path.insert(0, str(ROOT))

from algorithms.engine import parallel as fsdp  # noqa: E402
from algorithms.engine.trainer import Trainer  # noqa: E402
from algorithms.grpo import GRPOConfig  # noqa: E402
from algorithms.grpo.config import GRPOTrainConfig  # noqa: E402
from algorithms.sdpo import SDPOConfig  # noqa: E402
from algorithms.sdpo.config import SDPOTrainConfig  # noqa: E402
from algorithms.testing import TargetCharEnv, tiny_model, tiny_tokenizer  # noqa: E402
from rlrf.errors import ConfigError  # noqa: E402
from tests.algorithms.engine.ddp_worker import make_rows  # noqa: E402
from tests.torchrun import two_processes  # noqa: E402

CASES = ("grpo", "sdpo", "sdpo_gc")  # _gc: with gradient (activation) checkpointing
LR = 1e-2


def tied_model(seed: int = 0) -> Any:
    """A tiny Llama whose LM head IS its embedding (one parameter)."""
    model = tiny_model(seed)
    model.config.tie_word_embeddings = True
    model.lm_head.weight = model.model.embed_tokens.weight
    return model


def make_trainer(case: str, output_dir: Path, parallelism: str) -> Trainer:
    """The case's trainer (micro-batches of 2 rows) on the tied tiny model."""
    algo, _, variant = case.partition("_")
    common: dict[str, Any] = dict(
        gradient_checkpointing=variant == "gc",
        max_new_tokens=8,
        lr=LR,
        micro_batch_size=2,
        progress=False,
        output_dir=str(output_dir),
        parallelism=parallelism,
    )
    if algo == "grpo":
        cfg: Any = GRPOTrainConfig(**common)
    else:
        cfg = SDPOTrainConfig(sdpo=SDPOConfig(top_k=8, teacher_tau=0.1), **common)
    model = tied_model(0)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    return Trainer(cfg, env=TargetCharEnv(), model=model, tokenizer=tiny_tokenizer())


def run_update(trainer: Trainer, rows: list) -> dict[str, Any]:
    """One ``_update``; the full gradients at the optimizer step, weights and teacher after."""
    grads: list[dict[str, torch.Tensor]] = []
    step = trainer.optimizer.step

    def recording_step(*args: Any, **kwargs: Any) -> Any:
        grads.append(
            {
                name: fsdp.full_value(p.grad).detach().clone()
                for name, p in trainer.unwrapped.named_parameters()
                if p.grad is not None
            }
        )
        return step(*args, **kwargs)

    trainer.optimizer.step = recording_step  # type: ignore[method-assign]
    metrics = trainer._update(rows)
    teacher = getattr(getattr(trainer.objective, "teacher", None), "module", None)
    return {
        "grads": grads,
        "params": fsdp.full_tree(dict(trainer.unwrapped.named_parameters())),
        "teacher": None if teacher is None else fsdp.full_tree(teacher.state_dict()),
        "metrics": metrics,
        "sharded": fsdp.is_sharded(trainer.unwrapped),
        "teacher_sharded": None if teacher is None else fsdp.is_sharded(teacher),
    }


def _rows(case: str) -> list:
    return make_rows(case.partition("_")[0])


# --- the worker ------------------------------------------------------------------------------


def _worker_update(out: Path) -> None:
    import torch.distributed as dist

    for case in CASES:
        trainer = make_trainer(case, out / f"run-{case}", "fsdp2")
        rank, world = trainer.accelerator.process_index, trainer.accelerator.num_processes
        result = run_update(trainer, _rows(case)[rank::world])
        result["world"] = world
        result["tied"] = trainer.unwrapped.lm_head.weight is (
            trainer.unwrapped.model.embed_tokens.weight
        )
        result["local_rows"] = trainer.unwrapped.model.embed_tokens.weight.to_local().shape[0]
        torch.save(result, out / f"{case}.rank{rank}.pt")
        dist.barrier()


def _whole_run_config(out: str, steps: int, resume: bool = False) -> SDPOTrainConfig:
    return SDPOTrainConfig(
        steps=steps, questions_per_step=3, rollouts_per_question=2, max_new_tokens=6,
        micro_batch_size=2, lr=1e-3, eval_every=2, eval_tasks=3, eval_k=2,
        checkpoint_every=1, output_dir=out, progress=False, seed=3, parallelism="fsdp2",
        sdpo=SDPOConfig(top_k=8, teacher_tau=0.1), resume=resume,
    )  # fmt: skip


def _worker_train(out: Path, steps: int, resume: bool) -> None:
    cfg = _whole_run_config(str(out / "run"), steps, resume)
    trainer = Trainer(
        cfg, env=TargetCharEnv(targets="ab"), model=tied_model(1), tokenizer=tiny_tokenizer()
    )
    trainer.train()
    teacher = trainer.objective.teacher.module
    state = {
        "params": fsdp.full_tree(dict(trainer.unwrapped.named_parameters())),
        "teacher": fsdp.full_tree(teacher.state_dict()),
    }
    if trainer.accelerator.is_main_process:
        torch.save(state, out / f"end-{steps}{'-resumed' if resume else ''}.pt")


# --- the tests -------------------------------------------------------------------------------


def _two_processes(out: Path, *args: str) -> None:
    two_processes(Path(__file__).resolve(), out, *args)


@pytest.fixture(scope="module")
def fsdp_updates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fsdp")
    _two_processes(out, "update")
    return out


GRAD_TOL = {"rtol": 1e-4, "atol": 1e-6}
WEIGHT_ATOL = 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_fsdp2_update_equals_one_process(fsdp_updates: Path, case: str, tmp_path: Path) -> None:
    r0, r1 = (torch.load(fsdp_updates / f"{case}.rank{r}.pt") for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    assert r0["sharded"] and r0["tied"], "FSDP2 must shard the LM and keep the head tied"
    assert r0["local_rows"] + r1["local_rows"] == len(tiny_tokenizer())  # half each
    ref = run_update(make_trainer(case, tmp_path, "ddp"), _rows(case))
    assert not ref["sharded"] and len(ref["grads"]) == len(r0["grads"]) == 1
    # every process gathers the same full values
    for name in r0["params"]:
        assert torch.equal(r0["params"][name], r1["params"][name]), name
    got_g, ref_g = r0["grads"][0], ref["grads"][0]
    assert got_g.keys() == ref_g.keys()
    for name in ref_g:
        torch.testing.assert_close(got_g[name], ref_g[name], **GRAD_TOL, msg=name)
    # Updated weights: AdamW's first step moves a weight by about lr * sign(grad), so where
    # the gradient is ~0 (summed in another order its sign is noise) a weight may differ by up
    # to 2 * lr; everywhere else the weights agree within WEIGHT_ATOL.
    moved = 0
    for name, want in ref["params"].items():
        got = r0["params"][name]
        firm = ref_g[name].abs() > 1e-6
        torch.testing.assert_close(got[firm], want[firm], rtol=0, atol=WEIGHT_ATOL, msg=name)
        assert (got - want).abs().max() <= 2 * LR + 1e-6, name
        moved += int(firm.sum())
    assert moved > 1000  # the comparison covers most weights
    for key in ("train/loss", "train/grad_norm"):
        assert r0["metrics"][key] == pytest.approx(ref["metrics"][key], rel=1e-4, abs=1e-7)
    if case.startswith("sdpo"):
        assert r0["teacher_sharded"] and not ref["teacher_sharded"]
        for name, want in ref["teacher"].items():
            got = r0["teacher"][name]
            # θ' = (1 - τ) θ0 + τ θ: the student's weight difference scaled by τ = 0.1
            torch.testing.assert_close(got, want, rtol=0, atol=0.1 * 2 * LR + 1e-6, msg=name)
            if name in ref_g:  # where the student's update is firm, so is the teacher's
                firm = ref_g[name].abs() > 1e-6
                torch.testing.assert_close(got[firm], want[firm], rtol=0, atol=1e-6, msg=name)


@pytest.mark.slow
def test_fsdp2_whole_run_checkpoints_load_in_one_process_and_resume(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    _two_processes(tmp_path, "train")  # 2 steps: rollouts, eval, checkpoints, final/
    run = tmp_path / "run"
    end = torch.load(tmp_path / "end-2.pt")
    ckpts = sorted(p.name for p in (run / "checkpoints").glob("step_*"))
    assert ckpts == ["step_000001", "step_000002"]
    # the checkpoint is a one-process checkpoint: a plain trainer loads it
    cfg = dataclasses.replace(_whole_run_config(str(tmp_path / "one"), 2), parallelism="ddp")
    one = Trainer(
        cfg, env=TargetCharEnv(targets="ab"), model=tied_model(1), tokenizer=tiny_tokenizer()
    )
    one.load(run / "checkpoints" / "step_000002")
    assert one.step == 2 and one.optimizer.state_dict()["state"]
    for name, p in one.unwrapped.named_parameters():
        assert torch.equal(p.detach(), end["params"][name]), name
    for name, t in one.objective.teacher.module.state_dict().items():
        assert torch.equal(t, end["teacher"][name]), name
    # final/ is the trained model
    final = AutoModelForCausalLM.from_pretrained(run / "final")
    assert final.lm_head.weight.data_ptr() == final.model.embed_tokens.weight.data_ptr()
    for name, p in final.named_parameters():
        assert torch.equal(p.detach(), end["params"][name]), name
    # resuming under FSDP2 continues from step 2 to step 3
    _two_processes(tmp_path, "resume")
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "rollout/generations" in r] == [1, 2, 3]
    resumed = torch.load(tmp_path / "end-3-resumed.pt")
    assert any(not torch.equal(resumed["params"][n], end["params"][n]) for n in end["params"])


# --- refusals (one process, fast) -------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"lora_r": 8}, "LoRA (lora_r=8)"),
        ({"generation_backend": "vllm"}, "use generation_backend: hf with FSDP2"),
        ({"mixed_precision": "fp16"}, "use mixed_precision: bf16 or no"),
        ({"grpo": GRPOConfig(kl_coef=0.05)}, "set kl_coef: 0"),
    ],
)
def test_fsdp2_refuses_unsupported_options(overrides: dict, expected: str) -> None:
    with pytest.raises(ConfigError, match="parallelism: fsdp2 does not support") as e:
        GRPOTrainConfig(parallelism="fsdp2", **overrides)
    assert expected in str(e.value)
    GRPOTrainConfig(parallelism="ddp", **overrides)  # fine without FSDP2


@pytest.mark.parametrize("teacher", ["trust_region", "live"])
def test_fsdp2_refuses_teachers_that_run_the_student(teacher: str) -> None:
    with pytest.raises(ConfigError, match=f"teacher: {teacher}.*use teacher: ema or frozen"):
        SDPOTrainConfig(parallelism="fsdp2", sdpo=SDPOConfig(teacher=teacher))
    SDPOTrainConfig(parallelism="fsdp2", sdpo=SDPOConfig(teacher="frozen"))


def test_fsdp2_yaml_and_flag_name() -> None:
    with pytest.raises(ConfigError, match="expected one of 'ddp', 'fsdp2'"):
        GRPOTrainConfig(parallelism="fsdp")


@pytest.mark.parametrize("kind", fsdp.FSDP_UNSUPPORTED_ACCELERATE)
def test_accelerate_plugins_are_refused_with_the_command_to_use(kind: str) -> None:
    with pytest.raises(ConfigError, match=f"accelerate is configured for {kind}") as e:
        fsdp.check_launch(kind, 4, fsdp=False)
    assert "--parallelism fsdp2" in str(e.value) and "torchrun --nproc-per-node N" in str(e.value)
    fsdp.check_launch("MULTI_GPU", 4, fsdp=True)  # what it points to is accepted


def test_fsdp2_on_one_process_is_refused(tmp_path: Path) -> None:
    cfg = GRPOTrainConfig(parallelism="fsdp2", output_dir=str(tmp_path), progress=False)
    with pytest.raises(ConfigError, match="this run has one; launch it on several") as e:
        Trainer(cfg, env=TargetCharEnv(), model=tied_model(0), tokenizer=tiny_tokenizer())
    assert "torchrun --nproc-per-node N" in str(e.value)


if __name__ == "__main__":
    _out, _mode = Path(sys.argv[1]), sys.argv[2]
    if _mode == "update":
        _worker_update(_out)
    elif _mode == "train":
        _worker_train(_out, steps=2, resume=False)
    elif _mode == "resume":
        _worker_train(_out, steps=3, resume=True)
    else:
        raise SystemExit(f"unknown mode {_mode!r}")
