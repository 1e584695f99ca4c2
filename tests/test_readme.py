"""The README as a front door: short, the two set-up commands first, every guide linked, and a
"write your own algorithm" section whose plugin installs and trains as written.

Every code block of the README (and of docs/) is run or checked by tests/test_docs.py.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TEXT = README.read_text(encoding="utf-8")
GUIDES = ("environments", "training", "sandboxes", "evaluation", "benchmarks", "serving")


def test_readme_starts_with_the_two_commands():
    first_block = re.search(r"```bash\n(.*?)```", TEXT, re.S).group(1)
    first, second = first_block.splitlines()[:2]
    assert first.startswith("make demo") and second.startswith("make test")
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci


def test_readme_is_a_front_door_that_links_every_guide():
    assert len(TEXT.splitlines()) <= 250
    for guide in GUIDES:
        assert f"(docs/{guide}.md" in TEXT, f"README does not link docs/{guide}.md"


def _algorithm_section() -> str:
    match = re.search(r"^## Write your own algorithm\n.*?(?=^## )", TEXT, re.S | re.M)
    assert match, "README has no 'Write your own algorithm' section"
    return match.group(0).rstrip("\n")


def _plugin(tmp_path: Path) -> tuple[Path, list[str]]:
    """Install the section's plugin as a .dist-info on a path; return it and the train argv."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    section = _algorithm_section()
    source = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    entry_points = tomllib.loads(re.search(r"```toml\n(.*?)```", section, re.S).group(1))
    group = entry_points["project"]["entry-points"]["rlrf.algorithms"]
    (name, target), = group.items()  # fmt: skip
    module = target.split(":")[0]
    site = tmp_path / "site"
    site.mkdir()
    (site / f"{module}.py").write_text(source)
    info = site / "acme_rl-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-rl\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[rlrf.algorithms]\n{name} = {target}\n")
    line = next(
        line for line in section.splitlines() if line.startswith("rlrf train --algo")
    )
    return site, line.split()[1:]  # train --algo reinforce ...


def _run(args: list[str], site: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": f"{site}:{ROOT}", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        args, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path
    )


def test_the_algorithm_section_is_short_and_its_command_parses(tmp_path):
    assert len(_algorithm_section().splitlines()) < 60
    site, argv = _plugin(tmp_path)
    code = (
        "import sys\n"
        "from algorithms.commands.train import build_parser\n"
        "p = build_parser('reinforce', 'rlrf train')\n"
        "p.error = lambda message: sys.exit('refused: ' + message)\n"
        f"args = p.parse_args({argv[1:]!r})\n"
        "print(args.baseline_decay)\n"
    )
    result = _run([sys.executable, "-c", code], site, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["0.5"]


@pytest.mark.slow
def test_the_algorithm_section_trains_as_written(tmp_path):
    from algorithms.testing import save_tiny

    site, argv = _plugin(tmp_path)
    model = save_tiny(tmp_path / "tiny")
    small = ["--model", str(model), "--steps", "2", "--questions-per-step", "2",
             "--rollouts-per-question", "2", "--max-new-tokens", "4", "--eval-every", "0",
             "--checkpoint-every", "1", "--progress", "false", "--output-dir", "run"]  # fmt: skip
    result = _run([sys.executable, "-m", "rlrf.cli", *argv, *small], site, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "algorithm: reinforce" in config and "baseline_decay: 0.5" in config
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert metrics.count('"train/pg_loss"') == 2 and '"rollout/baseline"' in metrics
    # the checkpoint keeps the objective's state: a longer run resumes from it
    more = ["--steps", "3", "--resume", "true"]
    resumed = _run([sys.executable, "-m", "rlrf.cli", *argv, *small, *more], site, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count('"train/pg_loss"') == 3
