import json
import subprocess
import sys
from pathlib import Path

from rlrf.cli import main


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
