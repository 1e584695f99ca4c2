"""The trainer's malloc tuning: freed blocks stay in the process for the next step."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# In a fresh interpreter: a "step" allocates 64 blocks of 4 to 5 MiB (~290 MiB, like a
# micro-batch's activations) and frees them; print the minor page faults of the second step.
# glibc's default trims the freed heap top back to the system after the first step, so the
# second one faults every page in again; tuned, the second step reuses the first's memory.
SCRIPT = textwrap.dedent(
    """
    import resource, sys, torch
    from algorithms.engine.allocator import reuse_freed_memory
    if sys.argv[1] == "tuned":
        assert reuse_freed_memory()
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [None] * 64
    for step in range(2):
        before = faults()
        for j in range(64):
            blocks[j] = torch.ones(2**20 + 4096 * j)
        for j in range(64):
            blocks[j] = None
    print(faults() - before)
    """
)


def _faults(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt: Linux only")
def test_a_freed_block_is_reused_without_faulting_its_pages_in_again() -> None:
    pages = 256 * 2**20 // 4096
    assert _faults("default") > pages // 2
    assert _faults("tuned") < pages // 20


@pytest.mark.parametrize("reuse", [True, False])
def test_the_trainer_tunes_malloc_on_cpu_unless_told_not_to(
    reuse: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from algorithms.engine import allocator
    from algorithms.engine.trainer import Trainer
    from algorithms.grpo.config import GRPOTrainConfig
    from algorithms.testing import TargetCharEnv, tiny_model, tiny_tokenizer

    calls: list[bool] = []
    monkeypatch.setattr(allocator, "reuse_freed_memory", lambda: calls.append(True) or True)
    cfg = GRPOTrainConfig(
        steps=1, output_dir=str(tmp_path), progress=False, reuse_freed_memory=reuse
    )
    Trainer(cfg, env=TargetCharEnv(targets="ab"), model=tiny_model(0), tokenizer=tiny_tokenizer())
    assert calls == ([True] if reuse else [])
