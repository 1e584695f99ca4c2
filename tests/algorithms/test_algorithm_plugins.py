"""Algorithms from other packages: an ``rlrf.algorithms`` entry point is all it takes.

Each plugin is a genuine ``.dist-info`` folder on ``sys.path`` and each check runs in a fresh
interpreter, so what is tested is what ``pip install acme-rl`` would give.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from algorithms.registry import get_preset, presets, resolve_config
from algorithms.testing import save_tiny
from rlrf.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]

# A REINFORCE with a moving-average baseline: an option of its own (`baseline_decay`), a
# state that checkpoints, and a loss the trainer runs through the Objective protocol.
REINFORCE = '''
    from dataclasses import dataclass, field

    import torch

    from algorithms.config import TrainConfig
    from algorithms.objective import rollout_rows, rollouts_with_reward
    from algorithms.registry import Preset


    @dataclass
    class ReinforceConfig:
        """REINFORCE's options."""

        baseline_decay: float = 0.9
        """Decay of the moving-average reward baseline."""


    @dataclass
    class ReinforceTrainConfig(TrainConfig):
        """REINFORCE: the training options plus its own section."""

        reinforce: ReinforceConfig = field(default_factory=ReinforceConfig)
        """REINFORCE's options."""

        def build_objective(self, model, tokenizer):
            return Reinforce(self.reinforce)


    class Reinforce:
        metric_names = ("train/pg_loss", "rollout/baseline")

        def __init__(self, options):
            self.decay = options.baseline_decay
            self.baseline = 0.0

        def rows(self, groups, encode):
            keys = rollouts_with_reward(groups)
            rewards = {k: groups[k[0]].trajectories[k[1]].reward for k in keys}
            mean = sum(rewards.values()) / max(1, len(rewards))
            adv = {k: r - self.baseline for k, r in rewards.items()}
            self.baseline = self.decay * self.baseline + (1 - self.decay) * mean
            return rollout_rows(groups, keys, encode, advantages=adv), {}

        def normalizers(self, rows):
            return {"tokens": float(sum(len(r.response_ids) for r in rows))}

        def loss(self, batch, norm, scorer, *, on_policy):
            hidden, mask = scorer.student_hidden(batch)
            lp = scorer.logprobs(hidden, batch.response_ids)
            per_token = -batch.advantages[:, None] * lp
            loss = torch.where(mask, per_token, torch.zeros_like(lp)).sum() / norm["tokens"]
            return loss, {"pg_loss": loss.detach()}

        def after_optimizer_step(self, model):
            pass

        def rollout_metrics(self, stats):
            return {"rollout/baseline": self.baseline}

        def state_dict(self):
            return {"baseline": self.baseline}

        def load_state_dict(self, state):
            self.baseline = state["baseline"]


    ALGORITHMS = [
        Preset("reinforce", ReinforceTrainConfig, {"lr": 1e-3}, "REINFORCE with a baseline"),
    ]
'''

BROKEN = """
    raise RuntimeError("this plugin is broken on purpose")
"""

TWICE = """
    from algorithms.grpo.config import GRPOTrainConfig
    from algorithms.registry import Preset

    ALGORITHMS = [Preset("grpo", GRPOTrainConfig, {}, "a second grpo")]
"""

LACKS_FIELD = """
    from dataclasses import dataclass

    from algorithms.registry import Preset

    @dataclass
    class NotATrainConfig:
        lr: float = 1e-3

        def build_objective(self, model, tokenizer):
            return None

    ALGORITHMS = [Preset("halfway", NotATrainConfig)]
"""


def _make_dist(root: Path, dist: str, module: str, source: str) -> None:
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[rlrf.algorithms]\n{module} = {module}:ALGORITHMS\n")


def _run(args: list[str], path: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": f"{path}:{ROOT}", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout)


@pytest.fixture
def plugins(tmp_path: Path) -> Path:
    path = tmp_path / "site"
    path.mkdir()
    _make_dist(path, "acme-rl", "acme_rl", REINFORCE)
    _make_dist(path, "broken-rl", "broken_rl", BROKEN)
    return path


def test_the_builtins_register_through_the_same_presets():
    found = presets()
    assert list(found)[:3] == ["grpo", "sdpo", "sdpo-srf"]
    assert found["sdpo-srf"].values["top_k"] == 100
    with pytest.raises(ConfigError, match=r"'sdpp' is not one of .*did you mean 'sdpo'\?"):
        get_preset("sdpp")


def test_a_plugin_algorithm_trains_from_the_cli_with_its_own_option(plugins, tmp_path):
    model = save_tiny(tmp_path / "tiny")
    out = tmp_path / "run"
    # --help shows the plugin's own section and option; the package is not imported by rlrf
    # until it is asked for
    help_run = _run([sys.executable, "-m", "rlrf.cli", "train", "--algo", "reinforce", "--help"],
                    plugins)  # fmt: skip
    assert help_run.returncode == 0, help_run.stderr
    shown = " ".join(help_run.stdout.split())
    assert "reinforce options (REINFORCE's options)" in shown
    assert "--baseline-decay BASELINE_DECAY Decay of the moving-average reward baseline" in shown
    assert "reinforce: REINFORCE with a baseline (lr=0.001)" in shown
    args = [sys.executable, "-m", "rlrf.cli", "train", "--algo", "reinforce",
            "--baseline-decay", "0.5", "--model", str(model), "--env", "rlrf/Arithmetic-v0",
            "--env-kwargs", "digits=1", "--steps", "2", "--questions-per-step", "2",
            "--rollouts-per-question", "2", "--max-new-tokens", "4", "--eval-every", "0",
            "--checkpoint-every", "1", "--progress", "false", "--output-dir", str(out)]  # fmt: skip
    result = _run(args, plugins)
    assert result.returncode == 0, result.stderr[-3000:]
    # the broken plugin is reported by name and does not stop the working one
    assert "rlrf algorithm plugin 'broken-rl:broken_rl'" in result.stderr
    assert "broken on purpose" in result.stderr
    config = (out / "config.yaml").read_text()
    assert "algorithm: reinforce" in config and "baseline_decay: 0.5" in config
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "train/pg_loss" in m]
    assert len(steps) == 2 and all("rollout/baseline" in m for m in steps)
    assert (out / "final" / "config.json").is_file()
    # a YAML section under the plugin's name sets its option
    yaml_path = tmp_path / "run.yaml"
    yaml_path.write_text("algorithm: reinforce\nreinforce:\n  baseline_decay: 0.25\n")
    code = (
        "from algorithms.registry import resolve_config\n"
        f"c = resolve_config({str(yaml_path)!r})\n"
        "print(type(c).__name__, c.reinforce.baseline_decay, c.lr)\n"
    )
    shown = _run([sys.executable, "-c", code], plugins)
    assert shown.stdout.split() == ["ReinforceTrainConfig", "0.25", "0.001"], shown.stderr


def test_bad_plugins_are_named_and_the_builtins_still_work(tmp_path):
    path = tmp_path / "site"
    path.mkdir()
    _make_dist(path, "twice-rl", "twice_rl", TWICE)
    _make_dist(path, "half-rl", "half_rl", LACKS_FIELD)
    _make_dist(path, "broken-rl", "broken_rl", BROKEN)
    code = (
        "import warnings\n"
        "warnings.simplefilter('ignore')\n"
        "from algorithms.registry import plugin_errors, presets, resolve_config\n"
        "for label, message in sorted(plugin_errors().items()):\n"
        "    print(label, '|', message)\n"
        "print('NAMES', sorted(presets()))\n"
        "print('GRPO', type(resolve_config(algorithm='grpo')).__name__)\n"
    )
    result = _run([sys.executable, "-c", code], path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(
        line.startswith("broken-rl:broken_rl |") and "RuntimeError: this plugin is broken" in line
        for line in lines
    )
    assert any(
        line.startswith("twice-rl:twice_rl |")
        and "registers ['grpo'] already registered by 'grpo'" in line
        for line in lines
    )
    assert any(
        line.startswith("half-rl:half_rl |") and "does not subclass" in line
        and "lacks the trainer's fields" in line
        for line in lines
    )  # fmt: skip
    assert "NAMES ['grpo', 'sdpo', 'sdpo-srf']" in lines
    assert "GRPO GRPOTrainConfig" in lines
    # asking for the broken plugin's algorithm names the failure
    ask = _run([sys.executable, "-m", "rlrf.cli", "train", "--algo", "broken_rl"], path)
    assert ask.returncode == 2
    assert "is not one of the installed algorithms" in ask.stderr
    assert "this plugin is broken on purpose" in ask.stderr


def test_a_config_without_an_objective_or_with_unknown_values_is_refused():
    from dataclasses import dataclass

    from algorithms import registry
    from algorithms.config import TrainConfig
    from algorithms.grpo.config import GRPOTrainConfig

    @dataclass
    class NoObjective(TrainConfig):  # no build_objective: nothing to train
        pass

    registry.reload_plugins()
    try:
        with pytest.warns(registry.AlgorithmPluginWarning, match="does not override build_obj"):
            registry._load("acme:none", None, lambda: registry.Preset("none", NoObjective))
        with pytest.warns(registry.AlgorithmPluginWarning, match=r"values name \['top_kk'\]"):
            registry._load(
                "acme:typo", None, lambda: registry.Preset("typo", GRPOTrainConfig, {"top_kk": 1})
            )
        assert "none" not in registry._registry.presets
    finally:
        registry.reload_plugins()


def test_yaml_sections_and_flags_of_other_algorithms_are_refused(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("algorithm: grpo\nsdpo:\n  top_k: 5\n")
    with pytest.raises(ConfigError, match=r"section 'sdpo' configures sdpo, sdpo-srf; algorithm"):
        resolve_config(str(path))
    path.write_text("algorithm: grpo\nacme:\n  beta: 1\n")
    with pytest.raises(
        ConfigError, match=r"section 'acme' belongs to no installed algorithm \(installed: grpo"
    ):
        resolve_config(str(path))
    path.write_text("algorithm: reinforce\n")
    with pytest.raises(ConfigError, match=r"'reinforce' is not one of the installed algorithms"):
        resolve_config(str(path))


def test_old_option_spellings_get_the_new_name(capsys):
    from rlrf.cli import main

    for old, new in [("--max-tokens", "--max-new-tokens"), ("--k", "--rollouts-per-question"),
                     ("--out", "--output-dir"), ("--kwarg", "--env-kwargs")]:  # fmt: skip
        with pytest.raises(SystemExit) as e:
            main(["eval", "--env", "rlrf/Arithmetic-v0", old, "3"])
        assert e.value.code == 2
        assert f"unknown option {old}; did you mean {new}?" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["diagnose", "--env", "rlrf/Arithmetic-v0", "--group-size", "3"])
    assert "did you mean --rollouts-per-question?" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["check", "rlrf/Arithmetic-v0", "--kwarg", "digits=1"])
    assert "did you mean --env-kwargs?" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--algo", "grpo", "--top-k", "3"])
    assert "--top-k is an option of sdpo, sdpo-srf; algorithm 'grpo'" in capsys.readouterr().err
