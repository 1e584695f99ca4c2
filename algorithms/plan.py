"""What a training run will do, before it does it: ``rlrf train --config X.yaml --dry-run``.

:func:`build_plan` loads the config's env and tokenizer (not the weights: the parameter count
comes from the model's ``config.json`` instantiated on the meta device), renders a few
training prompts through the chat template, and works out the run's shape: steps, epochs over
the training split, rollouts and held-out generations, tokens per step, and a rough memory
budget per device. :func:`format_plan` prints it; :func:`dry_run` is the command's hook.

The memory figures are estimates for planning, not measurements: weights, gradients and
AdamW's two moments at the config's dtype (sharded over the processes under FSDP2), the copy
an SDPO teacher (EMA, frozen, trust region) or a KL reference keeps, the LM head's chunked
log-probs, and activations at about 2 (with gradient checkpointing) or 16 values per hidden
unit per token and layer. A vLLM engine takes ``vllm_gpu_memory_utilization`` of the device
on top (its KV cache), which the plan names but cannot size without the device.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from algorithms.config import TrainConfig

__all__ = ["Plan", "build_plan", "dry_run", "format_plan"]

_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
_GIB = 1024**3


@dataclass(frozen=True)
class Plan:
    """The shape of a training run (see the module docstring for how each figure is made)."""

    algorithm: str
    model: str
    env: str
    world_size: int
    train_tasks: int
    test_tasks: int
    steps: int
    questions_per_step: int
    rollouts_per_question: int
    optimizer_steps_per_step: int
    train_generations: int
    evaluations: int
    eval_generations: int
    epochs_over_train: float
    sampled_prompts: int
    prompt_tokens_mean: float
    prompt_tokens_max: int
    max_new_tokens: int
    teacher_prompt_tokens: int | None
    tokens_per_step: int
    tokens_per_step_per_device: int
    parameters: int
    trainable_parameters: int
    memory_gib: Mapping[str, float] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def memory_total_gib(self) -> float:
        """The sum of :attr:`memory_gib`."""
        return sum(self.memory_gib.values())


def _prompts(env: Any, n: int) -> list[Any]:
    from rlrf.env import env_style

    if env_style(env) == "task":
        return [env.prompt(t) for t in list(env.task_ids("train"))[:n]]
    out = []
    for seed in range(n):
        obs, _ = env.reset(seed=seed)
        out.append(obs)
    return out


def _count_tasks(env: Any, split: str) -> int:
    from rlrf.env import env_style

    if env_style(env) != "task" or split not in getattr(env, "splits", ("train", "test")):
        return -1
    try:
        return len(env.task_ids(split))
    except Exception:  # an env whose split is unknown to it
        return 0


def _parameters(model: str) -> tuple[int, Any]:
    """``(parameter count, model config)`` from the model's config, without loading weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from algorithms.models import resolve_model_path

    cfg = AutoConfig.from_pretrained(resolve_model_path(model))
    with torch.device("meta"):
        net = AutoModelForCausalLM.from_config(cfg)
    return sum(p.numel() for p in net.parameters()), cfg


def _lora_parameters(config: TrainConfig, hf_config: Any) -> int:
    hidden = int(getattr(hf_config, "hidden_size", 0))
    layers = int(getattr(hf_config, "num_hidden_layers", 0))
    return 2 * config.lora_r * hidden * len(config.lora_target_modules) * layers


def _teacher_copy(config: TrainConfig) -> str | None:
    sdpo = getattr(config, "sdpo", None)
    if sdpo is not None and getattr(sdpo, "teacher", "live") != "live":
        return f"SDPO teacher ({sdpo.teacher}), a copy of the weights"
    grpo = getattr(config, "grpo", None)
    if sdpo is None and grpo is not None and getattr(grpo, "kl_coef", 0.0) > 0:
        return "KL reference, a frozen copy of the weights"
    return None


def build_plan(
    config: TrainConfig, *, sample_tasks: int = 4, world_size: int | None = None
) -> Plan:
    """Work out what ``config`` will do (loads the env and the tokenizer, not the weights).

    Args:
        config: The resolved training config.
        sample_tasks: Training prompts rendered through the chat template to size prompts.
        world_size: Processes sharing the run (default: ``WORLD_SIZE``, else 1).

    """
    import rlrf
    from algorithms.models import load_tokenizer

    world = world_size or int(os.environ.get("WORLD_SIZE", "1"))
    env = rlrf.make(config.env, **config.env_kwargs)
    n_train, n_test = _count_tasks(env, "train"), _count_tasks(env, "test")
    tokenizer = load_tokenizer(config.model)
    lengths = []
    for chat in _prompts(env, sample_tasks):
        ids = tokenizer.apply_chat_template(list(chat), add_generation_prompt=True, tokenize=True)
        if isinstance(ids, Mapping):  # newer transformers return a BatchEncoding
            ids = ids["input_ids"]
        lengths.append(len(ids))
    env.close()
    n_params, hf_config = _parameters(config.model)
    trainable = _lora_parameters(config, hf_config) if config.lora_r > 0 else n_params

    q, g = config.questions_per_step, config.rollouts_per_question
    evaluations = 0
    if config.eval_every > 0:
        evaluations = 1 + config.steps // config.eval_every
        evaluations += 1 if config.steps % config.eval_every else 0
    held_out = min(config.eval_tasks, n_test) if n_test >= 0 else config.eval_tasks
    prompt_mean = statistics.fmean(lengths) if lengths else 0.0
    prompt_max = max(lengths, default=0)
    sdpo = getattr(config, "sdpo", None)
    teacher_tokens = sdpo.teacher_max_prompt_tokens if sdpo is not None else None
    per_rollout = prompt_mean + config.max_new_tokens  # an upper bound: responses may stop early
    if teacher_tokens is not None:
        per_rollout += min(teacher_tokens, prompt_max * 2 + config.max_new_tokens) + (
            config.max_new_tokens
        )
    tokens_per_step = int(q * g * per_rollout)

    width = _DTYPE_BYTES[config.dtype]
    shard = world if config.parallelism == "fsdp2" else 1
    memory = {
        "weights": n_params * width / shard,
        "gradients": trainable * width / shard,
        "AdamW moments": 2 * trainable * width / shard,
    }
    notes = []
    copy = _teacher_copy(config)
    if copy is not None:
        memory[copy] = n_params * width / shard
    hidden = int(getattr(hf_config, "hidden_size", 0))
    layers = int(getattr(hf_config, "num_hidden_layers", 0))
    vocab = int(getattr(hf_config, "vocab_size", 0))
    seq = prompt_max + config.max_new_tokens
    per_unit = 2 if config.gradient_checkpointing else 16
    act_width = 2 if config.mixed_precision != "no" else width
    memory["activations (one micro-batch)"] = (
        config.micro_batch_size * seq * hidden * layers * per_unit * act_width
    )
    memory["LM-head chunk (log-probs and grad)"] = (
        3 * config.micro_batch_size * config.logit_chunk_size * vocab * 4
    )
    if config.generation_backend == "vllm":
        notes.append(
            f"vLLM engine: {config.vllm_gpu_memory_utilization:.0%} of each device's memory "
            "on top (weights and KV cache)"
        )
    else:
        kv_heads = int(getattr(hf_config, "num_key_value_heads", 0) or 0)
        heads = int(getattr(hf_config, "num_attention_heads", 1) or 1)
        head_dim = int(getattr(hf_config, "head_dim", 0) or hidden // heads)
        rows = min(config.generation_batch_size, q * g)
        memory["KV cache (HF sampling)"] = (
            2 * rows * seq * layers * (kv_heads or heads) * head_dim * width
        )
    if n_train >= 0 and q > n_train:
        notes.append(f"questions_per_step={q} is more than the {n_train} training tasks")
    if n_test == 0 and config.eval_every > 0:
        notes.append("the env has no held-out split: evaluations will have no task")
    context = int(getattr(hf_config, "max_position_embeddings", 1 << 30))
    if prompt_max + config.max_new_tokens > context:
        notes.append(
            f"prompt ({prompt_max}) + max_new_tokens ({config.max_new_tokens}) exceeds the "
            f"model's context ({context})"
        )
    steps_q = config.steps * q
    return Plan(
        algorithm=config.algorithm,
        model=config.model,
        env=config.env,
        world_size=world,
        train_tasks=n_train,
        test_tasks=n_test,
        steps=config.steps,
        questions_per_step=q,
        rollouts_per_question=g,
        optimizer_steps_per_step=config.epochs * config.mini_batches,
        train_generations=steps_q * g,
        evaluations=evaluations,
        eval_generations=evaluations * held_out * config.eval_k,
        epochs_over_train=steps_q / n_train if n_train > 0 else float("nan"),
        sampled_prompts=len(lengths),
        prompt_tokens_mean=prompt_mean,
        prompt_tokens_max=prompt_max,
        max_new_tokens=config.max_new_tokens,
        teacher_prompt_tokens=teacher_tokens,
        tokens_per_step=tokens_per_step,
        tokens_per_step_per_device=-(-tokens_per_step // world),
        parameters=n_params,
        trainable_parameters=trainable,
        memory_gib={k: v / _GIB for k, v in memory.items()},
        notes=tuple(notes),
    )


def format_plan(plan: Plan) -> str:
    """The plan as the text ``rlrf train --dry-run`` prints."""
    tasks = "?" if plan.train_tasks < 0 else f"{plan.train_tasks} train / {plan.test_tasks} test"
    teacher = (
        f", teacher prompts up to {plan.teacher_prompt_tokens} tokens"
        if plan.teacher_prompt_tokens is not None
        else ""
    )
    lines = [
        f"plan: {plan.algorithm} on {plan.env} with {plan.model} "
        f"({plan.parameters / 1e9:.3g}B parameters, {plan.trainable_parameters / 1e9:.3g}B "
        f"trained), {plan.world_size} process(es)",
        f"  tasks:        {tasks}",
        f"  steps:        {plan.steps} x {plan.questions_per_step} questions x "
        f"{plan.rollouts_per_question} rollouts; {plan.optimizer_steps_per_step} optimizer "
        f"step(s) per step; {plan.epochs_over_train:.2f} epochs over the training tasks",
        f"  generations:  {plan.train_generations} for training, {plan.eval_generations} for "
        f"{plan.evaluations} evaluations",
        f"  prompts:      {plan.prompt_tokens_mean:.0f} tokens on average, "
        f"{plan.prompt_tokens_max} at most ({plan.sampled_prompts} sampled); responses up to "
        f"{plan.max_new_tokens}{teacher}",
        f"  tokens/step:  at most {plan.tokens_per_step:,} "
        f"({plan.tokens_per_step_per_device:,} per device), prompts + responses (+ teacher "
        "passes)",
        f"  memory/device (rough estimate): {plan.memory_total_gib:.1f} GiB",
    ]
    lines += [f"    {name:44s} {gib:8.2f} GiB" for name, gib in plan.memory_gib.items()]
    lines += [f"  note: {n}" for n in plan.notes]
    return "\n".join(lines)


def dry_run(config: TrainConfig) -> int:
    """Print the plan of ``config`` and return 0 (``rlrf train --dry-run``)."""
    print(format_plan(build_plan(config)))
    print("dry run: nothing was trained; drop --dry-run to start")
    return 0
