"""accelerate's TensorBoard tracker receives the same namespaced metrics as metrics.jsonl."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from algorithms.engine.trainer import Trainer
from algorithms.grpo.config import GRPOTrainConfig
from algorithms.testing import TargetCharEnv, tiny_model, tiny_tokenizer


def _scalar_tags(event_file: Path) -> dict[str, list[int]]:
    """Tag -> steps, read from a TFRecord event file (length, crc, Event proto, crc)."""
    from tensorboardX.proto.event_pb2 import Event

    tags: dict[str, list[int]] = {}
    data = event_file.read_bytes()
    offset = 0
    while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset : offset + 8])
        event = Event.FromString(data[offset + 12 : offset + 12 + length])
        offset += 12 + length + 4
        for value in event.summary.value:
            tags.setdefault(value.tag, []).append(event.step)
    return tags


def test_tensorboard_tracker_logs_the_run(tmp_path):
    cfg = GRPOTrainConfig(
        steps=2, questions_per_step=2, rollouts_per_question=2, max_new_tokens=6,
        eval_every=1, eval_tasks=2, checkpoint_every=0, progress=False,
        trackers=["tensorboard"], output_dir=str(tmp_path),
    )  # fmt: skip
    Trainer(cfg, env=TargetCharEnv(), model=tiny_model(0), tokenizer=tiny_tokenizer()).train()
    (event_file,) = (tmp_path / "rlrf").glob("events.out.tfevents.*")
    tags = _scalar_tags(event_file)
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    for key in ("train/loss", "train/grad_norm", "rollout/reward_mean", "timing/step"):
        assert tags[key] == [r["step"] for r in logged if key in r] == [1, 2]
    assert tags["eval/accuracy"] == [0, 1, 2]
