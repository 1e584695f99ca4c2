"""The main job's pipeline end to end, at a tiny size (a random-weight model folder)."""

import json

import pytest

from algorithms.testing import save_tiny
from rlrf import read_trajectories
from rlrf.cli import main


@pytest.mark.slow
def test_demo_pipeline_leaves_a_complete_run_folder(tmp_path, capsys):
    model = save_tiny(tmp_path / "tiny")
    out = tmp_path / "run"
    code = main(
        [
            "demo",
            "--model",
            str(model),
            "--steps",
            "2",
            "--output-dir",
            str(out),
            "--set",
            "questions_per_step=2",
            "--set",
            "rollouts_per_question=4",
            "--set",
            "max_new_tokens=8",
            "--set",
            "eval_tasks=4",
            "--set",
            "eval_every=1",
            "--set",
            "progress=false",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    # the main job shows its baseline: GRPO on the same settings, next to the SDPO run
    baseline = tmp_path / "run-grpo"
    assert f"run folders: {out}, {baseline}" in printed
    assert printed.count("held-out accuracy (avg@2, 4 tasks)") == 2
    assert "SDPO (mixed with GRPO): trained 2 steps on 16 generations" in printed
    assert "GRPO: trained 2 steps on 16 generations" in printed
    assert "accuracy @ generations: " in printed and " @ 16" in printed
    import yaml as _yaml

    grpo_config = _yaml.safe_load((baseline / "config.yaml").read_text())
    assert grpo_config["algorithm"] == "grpo" and grpo_config["seed"] == 0
    assert grpo_config["steps"] == 2 and grpo_config["lr"] == 2e-5
    report = (out / "report" / "report.md").read_text()
    assert "| sdpo |" in report and "| grpo |" in report  # both runs overlaid in one report
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2]
    assert records[-1]["rollout/generations"] == 16
    groups = list(read_trajectories(out / "trajectories.jsonl"))
    assert len(groups) == 4 and all(len(g.trajectories) == 4 for g in groups)
    # a random model answers wrongly: every rollout has feedback, hence a teacher context
    trajectories = [t for g in groups for t in g.trajectories]
    assert all(t.feedback for t in trajectories if not t.success)
    assert any(
        "Feedback from your unsuccessful earlier attempt"
        in t.info["teacher_context"][-1]["content"]
        for t in trajectories
        if t.info.get("teacher_context")
    )
    import yaml

    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["algorithm"] == "sdpo" and config["env_kwargs"] == {"digits": 1, "ops": "+"}
    assert config["sdpo"]["grpo_mix"] == 0.9
    assert (out / "final" / "config.json").is_file()
    report = out / "report" / "report.md"
    assert report.is_file()
    for png in ("accuracy.png", "reward.png", "response_length.png", "divergence.png"):
        assert (out / "report" / png).read_bytes()[:4] == b"\x89PNG"
