import json

import pytest

from algorithms.commands.report import main
from algorithms.report import write_report
from rlrf import Feedback, FeedbackKind, Group, Trajectory, TrajectoryWriter, Turn
from rlrf.errors import RLRFError


def _run(tmp_path, name, accs):
    run = tmp_path / name
    run.mkdir()
    lines = []
    for step, acc in enumerate(accs):
        lines.append(
            {
                "step": step,
                "generations": 8 * step,
                "eval/accuracy": acc,
                "rollout/reward_mean": acc / 2,
                "rollout/response_tokens_mean": 40 - step,
                "train/divergence": 0.5 / (step + 1),
            }
        )
    (run / "metrics.jsonl").write_text(
        "\n".join(json.dumps(x) for x in lines) + '\n{"step": 9, "gen'
    )
    (run / "config.yaml").write_text(
        f"algorithm: {name}\nenv: rlrf/Arithmetic-v0\nsteps: {len(accs)}\n"
    )
    t = Trajectory(
        "rlrf/Arithmetic-v0",
        "train-1",
        ({"role": "user", "content": "What is 2 + 3?"},),
        [Turn("7", 0.0, (Feedback(FeedbackKind.WRONG_ANSWER, "Your answer 7 is too high."),))],
        info={
            "teacher_context": [{"role": "user", "content": "What is 2 + 3?\n\nFeedback: too high"}]
        },
    )
    with TrajectoryWriter(run / "trajectories.jsonl") as w:
        w.write(Group(t.env_id, t.task_id, [t]))
    return run


def test_single_run_report(tmp_path):
    run = _run(tmp_path, "sdpo", [0.1, 0.2, 0.3])
    report = write_report([run])
    assert report == run / "report" / "report.md"
    text = report.read_text()
    assert "| sdpo | 16 | 0.100 → 0.300 | 0.050 → 0.150 |" in text
    for png in ("accuracy.png", "reward.png", "response_length.png", "divergence.png"):
        data = (run / "report" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and f"![{png}]({png})" in text
    assert "Your answer 7 is too high." in text and "Feedback: too high" in text


def test_overlay_needs_out_and_writes_both(tmp_path, capsys):
    a, b = _run(tmp_path, "grpo", [0.1, 0.1]), _run(tmp_path, "sdpo", [0.1, 0.4])
    with pytest.raises(RLRFError, match="needs --output-dir"):
        write_report([a, b])
    assert main([str(a), str(b), "--output-dir", str(tmp_path / "cmp")]) == 0
    text = (tmp_path / "cmp" / "report.md").read_text()
    assert "| grpo |" in text and "| sdpo |" in text


def test_not_a_run_folder(tmp_path):
    with pytest.raises(RLRFError, match="is not a run folder: metrics.jsonl is missing"):
        write_report([tmp_path])


def test_a_multi_turn_example_shows_each_turn_with_its_own_feedback_and_context(tmp_path):
    run = _run(tmp_path, "sdpo", [0.1, 0.2])
    prompt = ({"role": "user", "content": "Guess the number."},)

    def ctx(text):
        return [{"role": "user", "content": text}]

    turns = [
        Turn("5", 0.0, (Feedback(FeedbackKind.WRONG_ANSWER, "too low (turn 1)"),),
             info={"teacher_context": ctx("context of turn 1")}),
        Turn("9", 0.0, (Feedback(FeedbackKind.WRONG_ANSWER, "too high (turn 2)"),),
             info={"teacher_context": ctx("context of turn 2")}),
        Turn("7", 1.0, (), info={"teacher_context": None}),
    ]  # fmt: skip
    t = Trajectory("rlrf/Guess-v0", "g-3", prompt, turns, policy_version=1,
                   info={"teacher_context": ctx("context of turn 1")})  # fmt: skip
    (run / "trajectories.jsonl").unlink()
    with TrajectoryWriter(run / "trajectories.jsonl") as w:
        w.write(Group(t.env_id, t.task_id, [t]))
    text = write_report([run]).read_text()
    example = text.split("example rollouts with feedback")[1]
    # the trajectory was sampled after 1 update and fed metrics.jsonl's step 2
    assert "**Task g-3** (step 2, reward 1.0, 3 turns)" in example
    blocks = [example.index(f"Turn {k}") for k in (1, 2, 3)]
    turn1, turn2, turn3 = (example[a:b] for a, b in zip(blocks, [*blocks[1:], None], strict=True))
    for turn, mine, others in [
        (turn1, ("5", "too low (turn 1)", "context of turn 1"), ("too high", "context of turn 2")),
        (turn2, ("9", "too high (turn 2)", "context of turn 2"), ("too low", "context of turn 1")),
    ]:
        assert all(m in turn for m in mine) and not any(o in turn for o in others), turn
    assert "```text\n7\n```" in turn3 and "Feedback: none" in turn3
    assert "Teacher context: none" in turn3 and "too" not in turn3
