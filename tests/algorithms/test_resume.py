"""A run killed with SIGKILL and resumed ends bit-identical (CPU) to an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

SCRIPT = textwrap.dedent(
    """
    import sys, time
    from algorithms.config import SDPOTrainConfig
    from algorithms.testing import TargetCharEnv, tiny_model, tiny_tokenizer
    from algorithms.trainer import Trainer

    out, resume, slow = sys.argv[1], sys.argv[2] == "1", float(sys.argv[3])
    cfg = SDPOTrainConfig(
        steps=6, questions_per_step=2, rollouts_per_question=3, max_new_tokens=8,
        micro_batch_size=2, mini_batches=2, epochs=2, lr=1e-3, eval_every=3, eval_tasks=2,
        eval_k=2, checkpoint_every=1, keep_checkpoints=2, output_dir=out, resume=resume,
        progress=False, seed=5,
    )
    trainer = Trainer(cfg, env=TargetCharEnv(targets="ab"), model=tiny_model(3),
                      tokenizer=tiny_tokenizer())
    load = trainer.load
    def reporting_load(path):
        load(path)
        print(f"RESUMED-AT-STEP {trainer.step}", flush=True)
    trainer.load = reporting_load
    if slow:
        original = trainer.train_step
        def paced():
            metrics = original()
            time.sleep(slow)
            return metrics
        trainer.train_step = paced
    trainer.train()
    """
)


def _run(script: Path, out: Path, resume: bool, slow: float = 0.0) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.Popen(
        [sys.executable, str(script), str(out), "1" if resume else "0", str(slow)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _final_state(out: Path) -> dict:
    ckpts = sorted((out / "checkpoints").glob("step_*"))
    return torch.load(ckpts[-1] / "state.pt", weights_only=False)


@pytest.mark.slow
def test_sigkill_and_resume_is_bit_identical(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    ref = _run(script, tmp_path / "ref", resume=False)
    assert ref.wait(timeout=300) == 0, ref.stdout.read().decode()

    out = tmp_path / "killed"
    victim = _run(script, out, resume=False, slow=1.0)
    deadline = time.time() + 240
    while not (out / "checkpoints" / "step_000003" / "DONE").exists():
        assert victim.poll() is None, victim.stdout.read().decode()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (out / "checkpoints" / "step_000006").exists()
    resumed = _run(script, out, resume=True)
    assert resumed.wait(timeout=300) == 0, resumed.stdout.read().decode()
    log = resumed.stdout.read().decode()
    # it continued from the killed run's checkpoint (step 3 or later), not from scratch
    assert int(log.split("RESUMED-AT-STEP ")[1].split()[0]) >= 3, log

    a, b = _final_state(tmp_path / "ref"), _final_state(out)
    assert a["step"] == b["step"] == 6
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["objective"]["teacher"]["module"]:
        assert torch.equal(
            a["objective"]["teacher"]["module"][key], b["objective"]["teacher"]["module"][key]
        ), key
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    for i in sa:
        assert torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"])
    assert a["sampler"] == b["sampler"]
    ref_lines = (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()
    out_lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(ref_lines) == len(out_lines) == 7

    def strip(line):
        return {k: v for k, v in json.loads(line).items() if "timing" not in k}

    assert [strip(x) for x in ref_lines] == [strip(x) for x in out_lines]
    n_ref = len((tmp_path / "ref" / "trajectories.jsonl").read_text().splitlines())
    assert n_ref == len((out / "trajectories.jsonl").read_text().splitlines()) == 12
