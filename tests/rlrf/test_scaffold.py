"""``rlrf init``: the generated package registers a working env, in both styles."""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
import sysconfig
from pathlib import Path

import gymnasium
import pytest
import tomllib

import rlrf
from rlrf.cli import main as rlrf_main
from rlrf.env import env_style
from rlrf.scaffold import scaffold


@pytest.fixture
def load_package():
    """Import a generated package from its src/ folder; forget it and its env ids afterwards."""
    added: list[tuple[str, str]] = []
    before = set(rlrf.registry)

    def load(root, package):
        src = str(root / "src")
        sys.path.insert(0, src)
        added.append((src, package))
        return importlib.import_module(package)

    yield load
    for src, package in added:
        sys.path.remove(src)
        for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
            del sys.modules[name]
    for env_id in set(rlrf.registry) - before:
        rlrf.registry._specs.pop(env_id, None)
        gymnasium.registry.pop(env_id, None)


@pytest.mark.parametrize(
    ("style", "env_id", "expected_style"),
    [("task", "acme-envs/Reverse-v0", "task"), ("gymnasium", "acme-envs/Guess-v0", "gymnasium")],
)
def test_generated_env_registers_and_passes_check_env(
    tmp_path, load_package, style, env_id, expected_style
):
    root = scaffold("acme-envs", tmp_path / "acme-envs", style=style)
    meta = tomllib.loads((root / "pyproject.toml").read_text())
    assert meta["project"]["name"] == "acme-envs"
    assert meta["project"]["entry-points"]["rlrf.envs"] == {"acme-envs": "acme_envs:register_envs"}
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) == [
        "README.md",
        "pyproject.toml",
        "src/acme_envs/__init__.py",
        "src/acme_envs/env.py",
        "tests/test_env.py",
    ]
    package = load_package(root, "acme_envs")
    package.register_envs()  # what rlrf's plugin loader calls
    env = rlrf.make(env_id)
    assert env_style(env) == expected_style
    rlrf.check_env(env)
    readme = (root / "README.md").read_text()
    assert f"rlrf check {env_id}" in readme and "Rewards" in readme


def test_generated_task_env_grades_as_its_docstring_says(tmp_path, load_package):
    root = scaffold("wordy", tmp_path / "wordy", env_name="Backwards")
    load_package(root, "wordy").register_envs()
    env = rlrf.make("wordy/Backwards-v0")
    _, info = env.reset(options={"task_id": "test-lemon"})
    assert env.step_result("<answer> NOMEL </answer>").reward == 1.0
    for response, kind, text in [
        ("nomel", "format", "Put your answer inside <answer></answer>."),
        ("<answer>nomal</answer>", "wrong_answer", "Letter 4 of your answer is wrong."),
        ("<answer>nom</answer>", "wrong_answer", "Your answer has 3 letters; it should have 5."),
    ]:
        env.reset(options={"task_id": "test-lemon"})
        (feedback,) = env.step_result(response).feedback
        assert (feedback.kind.value, feedback.text) == (kind, text)


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("9lives", "start with a letter"),
        ("has space", "start with a letter"),
        ("json", "already importable"),
        ("class", "Python keyword"),
    ],
)
def test_bad_names_fail_in_one_line_and_create_nothing(tmp_path, capsys, name, needle):
    assert rlrf_main(["init", name, "--dir", str(tmp_path / "pkg")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("rlrf init: error: ") and len(err.splitlines()) == 1 and needle in err
    assert list(tmp_path.iterdir()) == []


def test_occupied_folder_is_refused_and_untouched(tmp_path, capsys):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "notes.txt").write_text("mine")
    assert rlrf_main(["init", "acme", "--dir", str(tmp_path / "pkg")]) == 1
    assert "already exists and is not an empty folder" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "pkg").iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]  # no staging folder left


def test_bad_env_name(tmp_path):
    with pytest.raises(rlrf.ConfigError, match="CamelCase"):
        scaffold("acme", tmp_path / "acme", env_name="lower-case")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("style", "env_id"), [("task", "zeta/Reverse-v0"), ("gymnasium", "zeta/Guess-v0")]
)
def test_pip_install_then_rlrf_check_passes_out_of_the_box(tmp_path, style, env_id):
    """`rlrf init`, `pip install -e` into a fresh venv, `rlrf check`, the package's tests."""
    assert rlrf_main(["init", "zeta", "--style", style, "--dir", str(tmp_path / "zeta")]) == 0
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    # The new venv sees this environment's packages (rlrf, gymnasium, pytest) without copying
    # them: a .pth line that adds this site folder, its own .pth files included.
    parent = sysconfig.get_paths()["purelib"]
    (Path(site) / "_parent.pth").write_text(f"import site; site.addsitedir({parent!r})\n")
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q"]
    subprocess.run([*pip, "--no-deps", "--no-build-isolation", "-e", str(tmp_path / "zeta")],
                   check=True, capture_output=True)  # fmt: skip
    check = subprocess.run(
        [python, "-m", "rlrf.cli", "check", env_id], capture_output=True, text=True, cwd=tmp_path
    )
    assert check.returncode == 0, check.stderr
    assert check.stdout.strip() == f"{env_id}: all checks passed"
    tests = subprocess.run(
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        capture_output=True, text=True, cwd=tmp_path / "zeta",
    )  # fmt: skip
    assert tests.returncode == 0, tests.stdout[-2000:]
    assert "3 passed" in tests.stdout
    # the plugin is found through its entry point only: not importable from this process
    assert importlib.util.find_spec("zeta") is None
