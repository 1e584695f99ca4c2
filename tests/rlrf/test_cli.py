import json
import subprocess
import sys
from pathlib import Path

import gymnasium
import pytest

import rlrf
from rlrf.cli import main
from tests.toy_envs import GuessEnv


def test_envs_json(capsys):
    assert main(["envs", "--json"]) == 0
    ids = [row["id"] for row in json.loads(capsys.readouterr().out)]
    assert "rlrf/Arithmetic-v0" in ids


def test_check_and_sample(capsys):
    assert main(["check", "rlrf/Arithmetic-v0"]) == 0
    assert "all checks passed" in capsys.readouterr().out
    assert main(["sample", "rlrf/Arithmetic-v0", "--n", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("=== sample") == 2
    assert "reward: 0.0" in out and "reward: 1.0" in out  # a refusal, then the gold answer


def test_unknown_env_is_an_error_not_a_traceback(capsys):
    assert main(["check", "rlrf/Arithmetc-v0"]) == 1
    err = capsys.readouterr().err
    assert "Did you mean: 'rlrf/Arithmetic-v0'?" in err and "Traceback" not in err


def test_help_everywhere():
    # the console script sits beside the interpreter (the venv's bin/), whatever PATH says
    exe = Path(sys.executable).with_name("rlrf")
    assert exe.is_file(), "the rlrf console script is not installed (pip install -e .)"
    for args in ([], ["envs"], ["check"], ["sample"]):
        proc = subprocess.run([exe, *args, "--help"], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and "usage: rlrf" in proc.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "rlrf.cli", "envs"], capture_output=True, text=True, timeout=60
    )
    assert "rlrf/Arithmetic-v0" in proc.stdout


@pytest.fixture
def guess_ids():
    """Register Gymnasium-style toy envs for one test."""
    ids = {"test/Guess-v0": GuessEnv, "test/BrokenGuess-v0": _RaisesOnTurnTwo}
    for env_id, cls in ids.items():
        rlrf.register(env_id, cls, override=True)
    yield
    for env_id in ids:
        rlrf.registry._specs.pop(env_id, None)
        gymnasium.registry.pop(env_id, None)


class _RaisesOnTurnTwo(GuessEnv):
    def step(self, action):
        if self.turn == 1:
            raise RuntimeError("the game server went away")
        return super().step(action)


def test_sample_plays_whole_episodes_of_a_gymnasium_style_env(guess_ids, capsys):
    assert main(["sample", "test/Guess-v0", "--n", "2"]) == 0
    out = capsys.readouterr().out
    secret = GuessEnv().reset(seed=1)[1]["task_id"].removeprefix("secret-")
    # a refusal for three turns (the env's "Reply with a number." each time), then the gold
    assert out.count("[response, turn 3: refusal]") == 1 and "episode truncated after 3" in out
    assert out.count("[user]\nReply with a number.") == 2
    assert f"[response, turn 1: gold response]\n{secret}\nreward: 1.0" in out
    assert "episode terminated after 1 turn(s)" in out


def test_sample_and_check_name_the_failing_env_method_and_turn(guess_ids, capsys):
    assert main(["sample", "test/BrokenGuess-v0", "--n", "1"]) == 1
    err = capsys.readouterr().err
    assert (
        "rlrf sample: error: test/BrokenGuess-v0.step (turn 2) raised RuntimeError: "
        "the game server went away" in err
    )
    assert "Traceback" not in err
    assert main(["check", "test/BrokenGuess-v0"]) == 1
    assert "test/BrokenGuess-v0: step (turn 2) on response" in capsys.readouterr().err


def test_check_passes_a_shipped_gymnasium_style_env(capsys):
    assert main(["check", "rlrf/CodeRepair-v0"]) == 0
    assert "rlrf/CodeRepair-v0: all checks passed" in capsys.readouterr().out


def test_set_values_past_the_integer_digit_limit_are_a_config_error():
    from rlrf.cli import parse_key_values
    from rlrf.errors import ConfigError

    with pytest.raises(ConfigError, match="--set n: the value cannot be read as JSON"):
        parse_key_values(["n=" + "9" * 5000])


def test_env_kwargs_values_past_the_integer_digit_limit_are_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["check", "rlrf/Arithmetic-v0", "--env-kwargs", "n=" + "9" * 5000])
    assert e.value.code == 2
    assert "n: the value cannot be read as JSON" in capsys.readouterr().err
