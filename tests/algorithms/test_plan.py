"""rlrf train --dry-run (algorithms.plan) on every recipe, with the embedded model and fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from algorithms.commands.train import main
from algorithms.plan import build_plan, format_plan
from algorithms.registry import resolve_config

pytest.importorskip("datasets", reason="the data extra: pip install 'rlrf[data]'")

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "recipes"
FIXTURES = ROOT / "tests" / "envs" / "fixtures"

#: Each recipe's env pointed at the fixture in its dataset's schema.
FIXTURE_ENV_KWARGS = {
    "rlrf/MCQ-v0": {
        "dataset": str(FIXTURES / "sciknoweval.jsonl"),
        "domains": ["Chemistry"],
        "levels": ["L3"],
        "test_fraction": 0.5,
    },
    "rlrf/ToolUse-v0": {"dataset": str(FIXTURES / "toolalpaca.jsonl"), "test_fraction": 0.3},
    "rlrf/Code-v0": {
        "dataset": str(FIXTURES / "lcb_code_generation_lite.jsonl"),
        "date_from": "2025-02-01",
        "date_until": "2025-05-01",
    },
}

pytestmark = pytest.mark.filterwarnings("ignore::rlrf.errors.RLRFWarning")


def test_there_is_a_recipe_per_paper_setting_and_algorithm():
    names = sorted(p.stem for p in RECIPES.glob("*.yaml"))
    assert names == [
        "lcb-grpo",
        "lcb-sdpo",
        "science-grpo",
        "science-sdpo",
        "tool-use-grpo",
        "tool-use-sdpo",
    ]


@pytest.mark.parametrize("recipe", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_recipe_dry_runs_with_the_embedded_model(recipe, tmp_path, monkeypatch, capsys):
    config = resolve_config(str(recipe))
    assert config.model == "Qwen/Qwen3-8B"
    assert (config.questions_per_step, config.rollouts_per_question) == (32, 8)
    assert config.max_new_tokens == 8192 and config.eval_temperature == 0.6
    monkeypatch.chdir(tmp_path)
    kwargs = json.dumps(FIXTURE_ENV_KWARGS[config.env])
    argv = ["--config", str(recipe), "--model", "smollm2-135m", "--env-kwargs", kwargs]
    assert main([*argv, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"plan: {config.algorithm} on {config.env} with smollm2-135m")
    assert f"{config.steps} x 32 questions x 8 rollouts" in out
    assert f"{config.steps * 32 * 8} for training" in out
    assert "memory/device (rough estimate)" in out
    assert out.rstrip().endswith("dry run: nothing was trained; drop --dry-run to start")
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_the_plan_figures(monkeypatch):
    base = resolve_config(
        str(RECIPES / "lcb-sdpo.yaml"),
        overrides={
            "model": "smollm2-135m",
            "env_kwargs": FIXTURE_ENV_KWARGS["rlrf/Code-v0"],
            "steps": 10,
            "eval_every": 4,
            "questions_per_step": 2,
        },
    )
    plan = build_plan(base, world_size=4)
    assert (plan.train_tasks, plan.test_tasks) == (2, 2)
    assert plan.train_generations == 10 * 2 * 8
    assert plan.evaluations == 4  # at the start, after steps 4 and 8, and at the end
    assert plan.eval_generations == 4 * 2 * 4  # 2 held-out tasks, avg@4
    assert plan.epochs_over_train == 10.0
    assert plan.optimizer_steps_per_step == 32
    assert 130e6 < plan.parameters < 140e6
    # FSDP2 shards the training state over the 4 processes; SDPO's EMA teacher is a copy
    weights = plan.parameters * 4 / 4 / 1024**3
    assert plan.memory_gib["weights"] == pytest.approx(weights)
    assert plan.memory_gib["AdamW moments"] == pytest.approx(2 * weights)
    assert "SDPO teacher (ema), a copy of the weights" in plan.memory_gib
    assert plan.tokens_per_step_per_device == -(-plan.tokens_per_step // 4)
    grpo = build_plan(
        resolve_config(str(RECIPES / "lcb-grpo.yaml"), overrides={
            "model": "smollm2-135m", "env_kwargs": FIXTURE_ENV_KWARGS["rlrf/Code-v0"]
        }),
        world_size=1,
    )
    assert not any("teacher" in k for k in grpo.memory_gib)
    # per rollout, GRPO's tokens are the prompt and the response; SDPO adds the teacher's pass
    assert grpo.tokens_per_step / (32 * 8) < plan.tokens_per_step / (2 * 8)
    assert "note: questions_per_step=32 is more than the 2 training tasks" in format_plan(grpo)
