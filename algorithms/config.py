"""Training configuration: one shared dataclass, composed with each algorithm's loss config.

:class:`TrainConfig` holds everything the training loop needs (model, env, optimizer,
batch shapes, sampling, evaluation, checkpointing). :class:`GRPOTrainConfig` adds a
:class:`algorithms.grpo.GRPOConfig`; :class:`SDPOTrainConfig` adds an
:class:`algorithms.sdpo.SDPOConfig` (and a GRPOConfig for the token-level variant and the
GRPO mix). Every field has a docstring (the string literal below it), which becomes
``--help`` in :mod:`algorithms.cli`.

Field names are flat across the composed configs (no two share a name), so a YAML file or a
command line can set any of them by name; a nested ``grpo:`` / ``sdpo:`` section in YAML
works too. An unknown name raises :class:`rlrf.ConfigError` naming the closest valid one.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import textwrap
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from algorithms.grpo import GRPOConfig
from algorithms.sdpo import SDPOConfig
from rlrf.errors import ConfigError

__all__ = [
    "GRPOTrainConfig",
    "SDPOTrainConfig",
    "TrainConfig",
    "config_from_dict",
    "config_to_dict",
    "field_docs",
    "flat_fields",
    "load_yaml_config",
]

MixedPrecision = Literal["no", "bf16", "fp16"]


@dataclass
class TrainConfig:
    """Options of the training loop shared by every algorithm."""

    model: str = "smollm2-135m"
    """Model to train: "smollm2-135m" (the embedded default), a local HF folder, or a hub id."""

    env: str = "rlrf/Arithmetic-v0"
    """Registered environment id (see `rlrf envs`)."""

    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for rlrf.make(env, **env_kwargs)."""

    steps: int = 20
    """Number of training steps (one rollout batch each)."""

    questions_per_step: int = 8
    """Tasks sampled per step (each gets rollouts_per_question rollouts)."""

    rollouts_per_question: int = 8
    """G: rollouts per task (the group size)."""

    lr: float = 1e-6
    """AdamW learning rate (constant after warmup)."""

    warmup_steps: int = 0
    """Optimizer steps of linear learning-rate warmup from 0."""

    weight_decay: float = 0.01
    """AdamW weight decay."""

    adam_betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""

    max_grad_norm: float = 1.0
    """Gradient-norm clipping threshold (0 disables clipping)."""

    micro_batch_size: int = 8
    """Rollouts per forward/backward pass; the loss is identical for any value (exact
    gradient accumulation)."""

    mini_batches: int = 1
    """Optimizer steps per pass over a rollout batch (the batch is split into this many)."""

    epochs: int = 1
    """Passes over each rollout batch (>1 makes later mini-batches off-policy)."""

    max_new_tokens: int = 256
    """Cap on tokens generated per response."""

    temperature: float = 1.0
    """Sampling temperature (also divides the logits in the loss)."""

    top_p: float = 1.0
    """Nucleus sampling mass (1.0 = off)."""

    eval_every: int = 10
    """Evaluate on held-out tasks every this many steps, and at the start and the end
    (0 disables)."""

    eval_tasks: int = 32
    """Held-out (split "test") tasks per evaluation; the first ones in the split's order."""

    eval_k: int = 4
    """Samples per held-out task; accuracy is avg@k."""

    eval_temperature: float = 1.0
    """Sampling temperature during evaluation (0 = greedy)."""

    checkpoint_every: int = 10
    """Save a resumable checkpoint every this many steps (0: only at the end)."""

    keep_checkpoints: int = 2
    """Resumable checkpoints kept on disk (oldest deleted first)."""

    output_dir: str = "runs/latest"
    """Run folder: metrics.jsonl, trajectories.jsonl, config.yaml, checkpoints/."""

    resume: bool = False
    """Continue from the latest checkpoint in output_dir."""

    seed: int = 0
    """Seed of everything random (task order, sampling, initialization of LoRA)."""

    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Dtype of the model's parameters (keep float32 for AdamW on CPU)."""

    mixed_precision: MixedPrecision = "no"
    """Autocast mode of accelerate: "no", "bf16" or "fp16" (GPU)."""

    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""

    lora_r: int = 0
    """LoRA rank; 0 trains all weights (LoRA needs peft)."""

    lora_alpha: float = 16.0
    """LoRA scaling alpha."""

    lora_dropout: float = 0.0
    """LoRA dropout."""

    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )
    """Module names LoRA adapts."""

    logit_chunk_size: int = 128
    """Response positions per LM-head chunk: peak memory ~ micro_batch x chunk x vocab."""

    generation_batch_size: int = 64
    """Rows (task x rollout) sampled at once."""

    env_workers: int = 1
    """Groups graded concurrently (keep 1 for envs that are not thread-safe)."""

    trackers: list[str] = field(default_factory=list)
    """Extra loggers through accelerate ("tensorboard", "wandb"); metrics.jsonl is always
    written."""

    progress: bool = True
    """Show a progress bar with ETA."""

    def __post_init__(self) -> None:
        positive = (
            "steps",
            "questions_per_step",
            "rollouts_per_question",
            "micro_batch_size",
            "mini_batches",
            "epochs",
            "max_new_tokens",
            "eval_k",
            "logit_chunk_size",
            "generation_batch_size",
            "env_workers",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("eval_every", "checkpoint_every", "warmup_steps", "lora_r", "eval_tasks"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.mixed_precision not in typing.get_args(MixedPrecision):
            raise ConfigError(
                f"mixed_precision={self.mixed_precision!r} is not one of "
                f"{typing.get_args(MixedPrecision)}"
            )
        self.adam_betas = tuple(self.adam_betas)  # type: ignore[assignment]

    @property
    def algorithm(self) -> str:
        """Name of the algorithm this config trains."""
        return "base"


@dataclass
class GRPOTrainConfig(TrainConfig):
    """GRPO: the shared training options plus GRPO's loss options (``grpo``)."""

    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    """GRPO's loss options."""

    @property
    def algorithm(self) -> str:
        """Name of the algorithm this config trains."""
        return "grpo"


@dataclass
class SDPOTrainConfig(TrainConfig):
    """SDPO: the shared training options plus SDPO's options (``sdpo``).

    ``grpo`` holds the clipping and advantage options used by the token-level variant
    (``loss_level="token"``) and by the GRPO mix (``grpo_mix > 0``).
    """

    sdpo: SDPOConfig = field(default_factory=SDPOConfig)
    """SDPO's options (teacher context, teacher weights, distillation loss)."""

    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    """GRPO options for the token-level variant and the GRPO mix."""

    def __post_init__(self) -> None:
        super().__post_init__()
        # SDPO trains every rollout with a teacher signal and has no reference-model term
        if self.grpo.kl_coef > 0 or self.grpo.filter_zero_advantage_groups:
            raise ConfigError(
                "grpo.kl_coef and grpo.filter_zero_advantage_groups are GRPO-only options; "
                "SDPO ignores them: leave them at 0 / false or use --algo grpo"
            )

    @property
    def algorithm(self) -> str:
        """Name of the algorithm this config trains."""
        return "sdpo"


# --- field introspection ------------------------------------------------------------------


def field_docs(cls: type) -> dict[str, str]:
    """Return the attribute docstrings (string literal after each field) of a dataclass.

    Base classes are included; a subclass's docstring wins.
    """
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
        for node, after in zip(body, [*body[1:], None], strict=True):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


@dataclass(frozen=True)
class FlatField:
    """One settable option: where it lives, its type, default and help."""

    name: str
    section: str | None
    type: Any
    default: Any
    doc: str


_SECTIONS = ("grpo", "sdpo")


def flat_fields(cls: type[TrainConfig]) -> dict[str, FlatField]:
    """All settable options of a train config, flattened across its sections."""
    out: dict[str, FlatField] = {}
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        if f.name in _SECTIONS:
            sub = hints[f.name]
            sub_hints = typing.get_type_hints(sub)
            sub_docs = field_docs(sub)
            instance = sub()
            for sf in dataclasses.fields(sub):
                if sf.name in out:
                    raise ConfigError(f"field {sf.name!r} appears in two config sections")
                out[sf.name] = FlatField(
                    sf.name,
                    f.name,
                    sub_hints[sf.name],
                    getattr(instance, sf.name),
                    sub_docs.get(sf.name, ""),
                )
            continue
        default = (
            f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        )
        out[f.name] = FlatField(f.name, None, hints[f.name], default, docs.get(f.name, ""))
    return out


def _unknown(name: str, valid: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else f"; valid fields: {', '.join(valid)}"
    return ConfigError(f"unknown config field {name!r} in {where}{hint}")


def config_from_dict(
    cls: type[TrainConfig], values: dict[str, Any], *, where: str = "the config"
) -> TrainConfig:
    """Build a train config from flat and/or sectioned values.

    ``{"lr": 1e-5, "top_k": 100}`` and ``{"lr": 1e-5, "sdpo": {"top_k": 100}}`` are equal.

    Raises:
        ConfigError: an unknown field (with the closest valid name) or an invalid value.

    """
    fields = flat_fields(cls)
    top: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        key = key.replace("-", "_")
        if key in _SECTIONS and key in {f.name for f in dataclasses.fields(cls)}:
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: section {key!r} must be a mapping")
            for sub_key, sub_value in value.items():
                sub_key = sub_key.replace("-", "_")
                spec = fields.get(sub_key)
                if spec is None or spec.section != key:
                    valid = [n for n, s in fields.items() if s.section == key]
                    raise _unknown(sub_key, valid, f"{where} (section {key!r})")
                sections.setdefault(key, {})[sub_key] = sub_value
            continue
        spec = fields.get(key)
        if spec is None:
            raise _unknown(key, sorted(fields), where)
        if spec.section is None:
            top[key] = value
        else:
            sections.setdefault(spec.section, {})[key] = value
    hints = typing.get_type_hints(cls)
    try:
        for section, sub_values in sections.items():
            top[section] = hints[section](**sub_values)
        return cls(**top)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from e


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """Return a YAML-friendly dict (sections nested, tuples as lists) with the algorithm."""
    data = dataclasses.asdict(config)
    data["adam_betas"] = list(config.adam_betas)
    return {"algorithm": config.algorithm, **data}


def load_yaml_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dict (an ``algorithm`` key is dropped)."""
    import yaml

    text = Path(path).read_text(encoding="utf-8")
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of field names to values")
    data.pop("algorithm", None)
    return data
