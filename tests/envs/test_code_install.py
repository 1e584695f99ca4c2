"""A regular (wheel) install: the shipped tests sit in site-packages, and programs still cannot
read them (issue 16: a program that looked its own stdin up there scored 1.0 on 5/5 hard tasks).

The test builds a wheel of this checkout, installs it into a fresh virtual environment (the
dependencies come from the current one through a ``.pth`` line, so nothing is downloaded) and
runs the attack through ``rlrf.make("rlrf/Code-v0")`` there.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Finds the installed problem file, looks its own stdin up and prints the expected output.
ATTACK = textwrap.dedent(
    """
    import json, os, site, sys
    data = sys.stdin.read()
    for d in set(sys.path) | set(site.getsitepackages()):
        path = os.path.join(d, "envs", "data", "code", "problems.jsonl")
        try:
            lines = open(path).read().splitlines()
        except OSError:
            continue
        for line in lines:
            rec = json.loads(line)
            for key in ("public_test_cases", "private_test_cases"):
                for t in json.loads(rec[key] or "[]"):
                    if t["input"].strip() == data.strip():
                        print(t["output"])
                        sys.exit(0)
    print("not found")
    """
)

RUN_IN_VENV = textwrap.dedent(
    """
    import json, subprocess, sys
    import envs, rlrf
    attack, out = sys.argv[1], {"envs": envs.__file__}
    env = rlrf.make("rlrf/Code-v0", difficulty="hard", limit=5).unwrapped
    ids = list(env.task_ids("test"))
    block = "```python\\n" + attack + "\\n```"
    out["rewards"] = [env.evaluate(t, block).reward for t in ids]
    gold = [env.evaluate(t, "```python\\n" + env.gold_answer(t) + "\\n```").reward for t in ids]
    out["gold_rewards"] = gold
    # Control: the same program outside the sandbox finds the answer (the attack is real).
    test = env.task(ids[0]).tests[-1]
    p = subprocess.run([sys.executable, "-c", attack], input=test.input, text=True,
                       capture_output=True, timeout=60)
    out["control"] = [p.stdout.strip(), test.output.strip()]
    env.close()
    print(json.dumps(out))
    """
)


@pytest.mark.slow
def test_wheel_install_keeps_the_shipped_tests_out_of_the_sandbox(tmp_path: Path) -> None:
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("rlrf", "envs", "sandboxes", "algorithms"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    run = {"check": True, "capture_output": True, "text": True, "timeout": 300}
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    dist = tmp_path / "dist"
    # Offline when this environment has setuptools (it has after `pip install -e .`);
    # otherwise pip fetches the build backend from PyPI.
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    subprocess.run([*pip, "wheel", "--no-deps", *isolation, "-w", dist, src], **run)
    (wheel,) = dist.glob("rlrf-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], **run)
    python = venv / "bin" / "python"
    # The venv's own pip: this environment's pip would uninstall the editable rlrf first.
    subprocess.run([python, "-m", "pip", "-q", "install", "--no-deps", "--no-index", wheel], **run)
    site_dir = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], **run
    ).stdout.strip()
    # Dependencies (gymnasium, ...) from this environment; its editable finder is not loaded.
    Path(site_dir, "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
    p = subprocess.run(
        [python, "-c", RUN_IN_VENV, ATTACK], cwd=tmp_path, env=env, **{**run, "check": False}
    )
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    # The layout under test: the package and its data in the fresh venv's site-packages.
    assert out["envs"].startswith(site_dir), out["envs"]
    assert Path(site_dir, "envs", "data", "code", "problems.jsonl").is_file()
    assert out["control"][0] == out["control"][1] != "not found"
    assert out["gold_rewards"] == [1.0] * 5
    assert out["rewards"] == [0.0] * 5
    assert importlib.util.find_spec("envs").origin == str(ROOT / "envs" / "__init__.py")
