"""Presets: one algorithm name gives one config whether asked from the CLI, Python or YAML."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from algorithms import grpo, sdpo
from algorithms.commands import train as cli
from algorithms.config import config_to_yaml
from algorithms.engine import trainer as trainer_module
from algorithms.engine.trainer import RunResult
from algorithms.registry import presets, resolve_config
from rlrf.errors import ConfigError

FIELDS = {"env": "rlrf/Arithmetic-v0", "steps": 3, "max_new_tokens": 17}


class RecordingTrainer:
    """Stands in for the Trainer: writes the run's config.yaml as Trainer.train does."""

    def __init__(self, config, env=None, model=None, tokenizer=None):
        self.config = config

    def train(self) -> RunResult:
        out = Path(self.config.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(config_to_yaml(self.config), encoding="utf-8")
        return RunResult(output_dir=out, final_model_dir=None, steps=0, generations=0)


@pytest.fixture
def recording(monkeypatch):
    monkeypatch.setattr(trainer_module, "Trainer", RecordingTrainer)


def _written(out: Path) -> dict:
    data = yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8"))
    assert data.pop("output_dir") == str(out)
    return data


def _flags(values: dict) -> list[str]:
    return [x for k, v in values.items() for x in (f"--{k.replace('_', '-')}", str(v))]


_LOSS_CONFIG = {
    "grpo": lambda: (grpo.train, grpo.GRPOConfig()),
    "sdpo": lambda: (sdpo.train, None),
    "sdpo-srf": lambda: (sdpo.train, sdpo.SDPOConfig.successful_rollout()),
}


@pytest.mark.parametrize("algo", ["grpo", "sdpo", "sdpo-srf"])
def test_cli_python_and_yaml_give_the_same_config_yaml(algo, tmp_path, recording):
    runs = {}
    # the command line
    out = tmp_path / "cli"
    assert cli.main(["--algo", algo, *_flags(FIELDS), "--output-dir", str(out)]) == 0
    runs["cli"] = _written(out)
    # Python, by name
    out = tmp_path / "python"
    trainer_module.train(algorithm=algo, output_dir=str(out), **FIELDS)
    runs["python"] = _written(out)
    # Python, through the algorithm's module and its loss config
    out = tmp_path / "module"
    entry, loss_config = _LOSS_CONFIG[algo]()
    entry(config=loss_config, output_dir=str(out), **FIELDS)
    runs["module"] = _written(out)
    # YAML, from the command line and from Python
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"algorithm": algo, **FIELDS}), encoding="utf-8")
    out = tmp_path / "yaml-cli"
    assert cli.main(["--config", str(path), "--output-dir", str(out)]) == 0
    runs["yaml-cli"] = _written(out)
    out = tmp_path / "yaml-python"
    trainer_module.train(config=str(path), output_dir=str(out))
    runs["yaml-python"] = _written(out)

    reference = runs["cli"]
    for where, data in runs.items():
        assert data == reference, where
    flat = {**reference, **reference["grpo"], **reference.get("sdpo", {})}
    for name, value in presets()[algo].values.items():
        assert flat[name] == value, (algo, name)
    assert reference["steps"] == 3 and reference["max_new_tokens"] == 17


def test_the_defaults_are_what_the_readme_says():
    # README: λ = 0.9 is "the default" (the demo's measured winner at 135M)
    assert resolve_config(None).sdpo.grpo_mix == 0.9
    assert resolve_config(None, algorithm="sdpo").algorithm == "sdpo"
    srf = resolve_config(sdpo.SDPOConfig.successful_rollout())
    assert (srf.lr, srf.warmup_steps, srf.sdpo.use_feedback, srf.sdpo.top_k) == (
        1e-5,
        10,
        False,
        100,
    )
    # an explicit loss config is used as given: SDPOConfig() is pure SDPO
    assert resolve_config(sdpo.SDPOConfig()).sdpo.grpo_mix == 0.0
    assert resolve_config(grpo.GRPOConfig(kl_coef=0.1)).grpo.kl_coef == 0.1


def test_flags_win_over_the_file_and_the_file_names_the_algorithm(tmp_path, recording):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"algorithm": "sdpo-srf", "sdpo": {"top_k": 7}, "lr": 3e-4}))
    out = tmp_path / "a"
    cli.main(["--config", str(path), "--lr", "1e-3", "--output-dir", str(out)])
    data = _written(out)
    assert (data["lr"], data["sdpo"]["top_k"], data["warmup_steps"]) == (1e-3, 7, 10)
    out = tmp_path / "b"
    cli.main(["--algo", "sdpo", "--config", str(path), "--output-dir", str(out)])
    assert _written(out)["sdpo"]["grpo_mix"] == 0.9  # --algo wins over the file's algorithm


def test_bad_names_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'top_k'"):
        resolve_config(None, overrides={"topk": 3})
    with pytest.raises(ConfigError, match=r"\['top_k'\] are options of sdpo, sdpo-srf; algorithm 'grpo'"):
        resolve_config(None, algorithm="grpo", overrides={"top_k": 3})
    path = tmp_path / "bad.yaml"
    path.write_text("algorithm: ppo\n")
    with pytest.raises(ConfigError, match="'ppo' is not one of"):
        resolve_config(str(path))


def test_no_math_module_imports_the_command_line():
    code = (
        "import sys\n"
        "import algorithms.engine.trainer, algorithms.grpo, algorithms.sdpo, algorithms.ttsd\n"
        "assert 'algorithms.commands.train' not in sys.modules, 'a library module imports the CLI'\n"
        "import algorithms.commands.train\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    # the command line and the configs are torch-free until a run starts
    code = "import sys, algorithms.commands.train\nassert 'torch' not in sys.modules\n"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"steps": 2.5}, r"SDPOTrainConfig\.steps=2\.5: expected int, got float"),
        ({"steps": "3"}, r"steps='3': expected int, got str"),
        ({"steps": True}, r"steps=True: expected int, got bool"),
        ({"lr": "fast"}, r"lr='fast': expected float, got str"),
        ({"use_feedback": "no"}, r"SDPOConfig\.use_feedback='no': expected bool, got str"),
        ({"progress": 1}, r"progress=1: expected bool, got int"),
        ({"teacher": "bogus"}, r"teacher='bogus': expected one of 'ema', 'trust_region'"),
        ({"adam_betas": [0.9, "x"]}, r"adam_betas=\[0\.9, 'x'\]: expected tuple\[float, float\]"),
        ({"trackers": "wandb"}, r"trackers='wandb': expected list\[str\], got str"),
        ({"env_kwargs": [1]}, r"env_kwargs=\[1\]: expected dict"),
        ({"sdpo": {"top_k": 2.0}}, r"SDPOConfig\.top_k=2\.0: expected int, got float"),
    ],
)
def test_values_are_checked_against_the_field_types(values, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config(None, algorithm="sdpo", overrides=values)


def test_python_constructors_check_types_too():
    from algorithms.grpo.config import GRPOConfig, GRPOTrainConfig
    from algorithms.sdpo.config import SDPOConfig

    with pytest.raises(ConfigError, match=r"GRPOTrainConfig\.max_new_tokens=8\.5"):
        GRPOTrainConfig(max_new_tokens=8.5)
    with pytest.raises(ConfigError, match=r"GRPOConfig\.clip_low='0\.2': expected float"):
        GRPOConfig(clip_low="0.2")
    with pytest.raises(ConfigError, match=r"SDPOConfig\.use_solution=None: expected bool"):
        SDPOConfig(use_solution=None)
    with pytest.raises(ConfigError, match=r"grpo=\{\}: expected a GRPOConfig"):
        GRPOTrainConfig(grpo={})
    # ints are floats' subset: kept as floats; YAML/JSON lists become tuples and back
    cfg = GRPOTrainConfig(lr=1, adam_betas=[0.9, 1], trackers=("tensorboard",))
    assert (cfg.lr, type(cfg.lr), cfg.adam_betas) == (1.0, float, (0.9, 1.0))
    assert cfg.trackers == ["tensorboard"]


def test_yaml_values_are_typed_and_errors_name_the_file(tmp_path):
    path = tmp_path / "run.yaml"
    # PyYAML (YAML 1.1) reads 1e-5 as a string; rlrf's config files read it as a number
    path.write_text("algorithm: grpo\nlr: 1e-5\nsteps: 4\n")
    cfg = resolve_config(str(path))
    assert cfg.lr == 1e-5 and isinstance(cfg.lr, float)
    path.write_text('lr: "1e-5"\n')  # quoted: the user asked for a string
    with pytest.raises(ConfigError, match=rf"{path.name}: .*lr='1e-5': expected float.*unquoted"):
        resolve_config(str(path))
    path.write_text('sdpo:\n  use_feedback: "no"\n')
    with pytest.raises(ConfigError, match=rf"{path.name}: SDPOConfig\.use_feedback='no'"):
        resolve_config(str(path))
    path.write_text("steps: 2.5\n")
    with pytest.raises(ConfigError, match=r"steps=2\.5: expected int"):
        resolve_config(str(path))
    path.write_text("steps: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        resolve_config(str(path))


def test_the_command_line_reports_bad_file_values_without_a_traceback(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text("steps: 2.5\n")
    assert cli.main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "steps=2.5: expected int, got float" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        cli.main(["--steps", "2.5"])
    assert "--steps" in capsys.readouterr().err
