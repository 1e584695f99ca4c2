"""A Gymnasium-style env installed from its own package: checked, rolled out, trained."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.rlrf.test_registry import _make_dist

GUESS = """
    import rlrf
    from rlrf import Feedback, FeedbackKind, RLRFEnv

    class Guess(RLRFEnv):
        max_turns = 3

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            self.secret = int(self.np_random.integers(10, 100))
            self.turn = 0
            self.chat = [{"role": "user", "content": "Guess my two-digit number."}]
            return list(self.chat), {"task_id": f"secret-{self.secret}"}

        def step(self, response):
            self.turn += 1
            self.chat.append({"role": "assistant", "content": response})
            digits = "".join(c for c in response if c in "0123456789")[:4]
            if digits and int(digits) == self.secret:
                return list(self.chat), 1.0, True, False, {}
            text = "Higher." if digits and int(digits) < self.secret else "Lower or no number."
            self.chat.append({"role": "user", "content": text})
            feedback = (Feedback(FeedbackKind.WRONG_ANSWER, text),)
            return list(self.chat), 0.0, False, self.turn >= 3, {"feedback": feedback}

        def gold_answer(self, task_id):
            return task_id.removeprefix("secret-")

    def register_envs():
        rlrf.register("acme/Guess-v0", "acme_games:Guess", description="guess a number")
"""

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def plugin_path(tmp_path):
    _make_dist(tmp_path, "acme-games", "acme_games", "acme_games:register_envs", GUESS)
    return tmp_path


def _run(args, path, timeout=300):
    env = {"PYTHONPATH": f"{path}:{ROOT}", "PATH": "/usr/bin:/bin"}
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout)


def test_gymnasium_style_plugin_env_is_checked_and_rolled_out(plugin_path):
    code = """
        import random, sys
        import rlrf
        from rlrf.rollout import collect_groups, task_sampler
        from rlrf import Sample, SamplingParams

        assert "acme_games" not in sys.modules
        env = rlrf.make("acme/Guess-v0")
        rlrf.check_env(env)

        class Backend:
            def sample(self, prompts, n, params):
                rng = random.Random(params.seed)
                return [[Sample(str(rng.randint(10, 99)), [1], [-0.1], "stop")
                         for _ in range(n)] for _ in prompts]

        seeds = task_sampler(env, seed=0).next(2)
        groups, stats = collect_groups(env, Backend(), seeds, 3, SamplingParams(seed=1))
        print("GROUPS", [g.task_id for g in groups], [len(g) for g in groups])
        print("TURNS", stats.generations, stats.turns, stats.env_errors)
        print("SAME", all(len({t.task_id for t in g.trajectories}) == 1 for g in groups))
    """
    proc = _run([sys.executable, "-c", textwrap.dedent(code)], plugin_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "GROUPS ['secret-" in out and "[3, 3]" in out and "SAME True" in out
    generations, turns, errors = map(int, out.split("TURNS ")[1].split()[:3])
    assert generations == turns >= 6 and errors == 0


@pytest.mark.slow
def test_gymnasium_style_plugin_env_trains_through_rlrf_train(plugin_path, tmp_path):
    from algorithms.testing import save_tiny

    model = save_tiny(tmp_path / "tiny")
    rlrf_exe = Path(sys.executable).with_name("rlrf")
    args = [rlrf_exe, "train", "--algo", "grpo", "--env", "acme/Guess-v0", "--model", model]
    args += ["--steps", "1", "--questions-per-step", "2", "--rollouts-per-question", "2"]
    args += ["--max-new-tokens", "4", "--eval-every", "0", "--checkpoint-every", "0"]
    args += ["--output-dir", tmp_path / "run", "--progress", "false"]
    proc = _run([str(a) for a in args], plugin_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "run" / "trajectories.jsonl").read_text().count("secret-") >= 2
