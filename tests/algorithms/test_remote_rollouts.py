"""Training and rollouts on envs behind env servers (``rlrf serve``, OpenEnv's protocol).

The rollout loop does not care which side of the wire an env is on: a training run on served
``rlrf/Arithmetic-v0`` writes the same trajectories as the same run in-process, and rollouts
spread over several servers survive one of them dying, with the rollouts it held ending as
recorded missing rewards while the others finish.
"""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("openenv", reason="the serve extra (pip install 'rlrf[serve]')")

import rlrf
from algorithms.engine.trainer import Trainer
from algorithms.grpo.config import GRPOTrainConfig
from algorithms.testing import tiny_model, tiny_tokenizer
from envs.arithmetic import ArithmeticEnv
from rlrf import RLRFEnv, Sample, SamplingParams
from rlrf.remote.server import EnvServer
from rlrf.rollout import collect_groups

SMALL = dict(
    steps=2, questions_per_step=2, rollouts_per_question=3, max_new_tokens=6, eval_every=0,
    checkpoint_every=0, progress=False, lr=1e-3, seed=3, env_workers=3,
)  # fmt: skip


class SteppedArithmetic(RLRFEnv):
    """The same env in this process, driven by reset(seed)/step as a served env is.

    Over the wire every env is Gymnasium style (the seed picks the task), so this is the
    in-process run with the same seeds; the task-style fast path draws task ids instead.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self.inner = ArithmeticEnv(**kwargs)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        return self.inner.reset(seed=seed, options=options)

    def step(self, action: str):
        return self.inner.step(action)


def _groups(out: Path) -> list[dict]:
    """The trajectories a run wrote, without what names the env's location."""
    records = [json.loads(line) for line in (out / "trajectories.jsonl").read_text().splitlines()]
    for group in records:
        group.pop("env_id", None)
        for traj in group["trajectories"]:
            traj.pop("env_id", None)
            traj.pop("timings", None)
    return records


def test_training_on_a_served_env_writes_the_same_trajectories(tmp_path):
    kwargs = {"digits": 1, "ops": "+"}
    local = Trainer(
        GRPOTrainConfig(output_dir=str(tmp_path / "local"), env_kwargs=kwargs, **SMALL),
        env=SteppedArithmetic(**kwargs), model=tiny_model(4), tokenizer=tiny_tokenizer(),
    )  # fmt: skip
    local.train()
    with EnvServer("rlrf/Arithmetic-v0", kwargs, max_sessions=8) as server:
        served = Trainer(
            GRPOTrainConfig(output_dir=str(tmp_path / "served"), env=f"openenv:{server.url}",
                            **SMALL),
            model=tiny_model(4), tokenizer=tiny_tokenizer(),
        )  # fmt: skip
        served.train()
        assert server.active_sessions == 0, "every rollout's session was closed"
    a, b = _groups(tmp_path / "local"), _groups(tmp_path / "served")
    assert len(a) == len(b) == 4
    # task, prompt, tokens, log-probs, per-turn reward and typed feedback, seeds, versions
    assert a == b
    rewards = [turn["reward"] for g in b for t in g["trajectories"] for turn in t["turns"]]
    assert None not in rewards and len({g["task_id"] for g in b}) == 4


class KillingBackend:
    """Answers every prompt wrong; on the second turn it first stops one of the servers."""

    def __init__(self, victim: EnvServer) -> None:
        self.victim, self.calls = victim, 0
        self.lock = threading.Lock()

    def sample(self, prompts, n, params: SamplingParams):
        with self.lock:
            self.calls += 1
            if self.calls == 2:
                self.victim.stop()
        rng = random.Random(params.seed)
        return [[Sample(str(rng.randint(200, 900)), [1], [-0.5], "stop") for _ in range(n)]
                for _ in prompts]  # fmt: skip


def test_a_dying_server_ends_only_the_rollouts_it_held():
    from tests.toy_envs import GuessEnv

    rlrf.register("remote-test/Guess-v0", GuessEnv, max_turns=3)
    a = EnvServer("remote-test/Guess-v0", max_sessions=16).start()
    b = EnvServer("remote-test/Guess-v0", max_sessions=16).start()
    try:
        env = rlrf.make(f"openenv:{a.url},{b.url}", message_timeout_s=10.0)
        backend = KillingBackend(victim=a)
        groups, stats = collect_groups(
            env, backend, [11, 12], 4, SamplingParams(seed=5), env_workers=8
        )
    finally:
        a.stop()
        b.stop()
    trajectories = [t for g in groups for t in g.trajectories]
    assert len(trajectories) == 8
    died = [t for t in trajectories if t.error is not None]
    lived = [t for t in trajectories if t.error is None]
    # least-loaded placement put half the sessions on each server
    assert len(died) == 4 and len(lived) == 4, [t.error for t in trajectories]
    for t in died:
        assert t.reward is None, "a dead server's rollout is missing, never a made-up 0"
        assert t.error.method == "step" and a.url in t.error.message, t.error
    for t in lived:
        assert t.reward is not None and len(t.turns) == 3  # played to the turn limit
    assert stats.env_errors == 4
