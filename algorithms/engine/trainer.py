"""The training loop on accelerate; the algorithm is an :class:`~algorithms.objective.Objective`.

The trainer names no algorithm: the config builds its objective
(:meth:`algorithms.config.TrainConfig.build_objective`), and the objective decides which
rollouts train, their loss and what happens after an optimizer step (see
:mod:`algorithms.objective`). One step:

1. Draw ``questions_per_step`` train tasks (:func:`rlrf.rollout.task_sampler`: task
   ids of a task-style env, reset seeds of a Gymnasium-style one; seeded and resumable),
   play G episodes each with the current policy (:func:`rlrf.rollout.collect_groups`,
   every turn of multi-turn envs); rollouts with a missing reward (an env error included)
   are skipped and counted.
2. The objective turns the groups into training rows (:mod:`algorithms.engine.batching`) with
   their per-row extras (advantages, teacher prompts), recording what it used in
   ``Trajectory.info``.
3. ``epochs`` passes over the rows, each split into ``mini_batches`` optimizer steps, each
   split into micro-batches of ``micro_batch_size`` rows. Every loss is normalized by the
   WHOLE mini-batch's normalizers (the objective's named sums, summed here over every
   process), so gradient accumulation is exact: the parameters after a step do not depend
   on ``micro_batch_size`` (tested). AdamW, grad-norm clipping, then the objective's
   after-step hook after EVERY optimizer step.
4. Log ``train/``, ``rollout/``, ``timing/`` metrics; evaluate on held-out tasks (split
   ``"test"``) every ``eval_every`` steps (``eval/avg@k``, mean response length); checkpoint
   every ``checkpoint_every`` steps.

Speed: the rows of a mini-batch are ordered by group, so a micro-batch mostly holds whole
groups, whose prompts are identical: the student's forward (:class:`Scorer
<algorithms.objective.Scorer>`) runs such a common prefix once and reuses its keys/values
for every row (:func:`algorithms.scoring.shared_prefix_hidden_states`, with gradient), in
sub-batches cut by length to waste little padding; log-probs go through the LM head chunk by
chunk (``logit_chunk_size``). Objectives that score other prompts (a teacher's) do the same.

Resuming (``resume=True``) restores model, optimizer, scheduler, the objective's state, RNG
states and the task sampler's position from the newest checkpoint that loads (an unreadable
newer one is named in a warning and skipped), says from which step it continues, and cuts
``metrics.jsonl`` and ``trajectories.jsonl`` back to the lines they had when that
checkpoint was written (so a line torn by a crash at any byte goes, nothing is logged twice,
and a line edited since is kept and named in a warning), so a run killed with SIGKILL and
resumed ends bit-identical on CPU to an uninterrupted one (tested). ``resume=True`` without
a checkpoint is an error, never a silent restart. Ctrl-C lets a checkpoint being written
finish, then stops with :class:`~algorithms.engine.checkpoint.RunInterrupted`, whose message
says how to resume.
Checkpoints are written every ``checkpoint_every`` steps and at the last step;
``checkpoint_every: 0`` writes none, only ``final/`` (the trained model and tokenizer).

Multi-GPU / multi-node: launch the same command with ``accelerate launch`` (for example
``accelerate launch --multi_gpu --num_processes 4 -m algorithms.sdpo --env ... --model ...``;
on CPU ``torchrun --nproc_per_node 2 -m algorithms.sdpo ...`` uses gloo). Each process rolls
out its share of the step's tasks. The training forward goes through the accelerate/DDP
wrapper of :class:`algorithms.scoring.HiddenStates` (the LM's body), so DDP averages the gradients;
the loss is scaled by the number of processes to make that a sum, and the normalizers are
summed over processes. Every process makes the same collective calls whatever its share: the
mini-batch count is fixed, a process with no rows in a mini-batch joins the gradient
all-reduce with a zero loss, and a non-finite loss still goes through backward before every
process refuses the step together. Every process evaluates its share of the held-out
tasks; the main process checkpoints and logs the metrics and trajectories of every
process. Tested with two CPU processes (``tests/algorithms/engine/test_multiprocess.py``).
For models whose training state does not fit one device, ``parallelism: fsdp2`` shards it
with torch's FSDP2 instead (:mod:`algorithms.engine.parallel`;
``tests/algorithms/engine/test_parallel.py``); accelerate's own FSDP / DeepSpeed plugins are
refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import shutil
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import rlrf
from algorithms.config import TrainConfig, config_to_dict, config_to_yaml
from algorithms.engine import allocator
from algorithms.engine.batching import Batch, Row, collate, split_rows
from algorithms.engine.checkpoint import (
    RunInterrupted,
    capture_rng,
    deferred_sigint,
    load_checkpoint,
    load_latest,
    log_position,
    prune_checkpoints,
    restore_log,
    restore_rng,
    restoring,
    resume_hint,
    save_checkpoint,
)
from algorithms.engine.guard import AlarmGuard
from algorithms.engine.metrics import MetricsLogger, Timer
from algorithms.engine.monitors import LearningSignalMonitor
from algorithms.engine.parallel import check_launch, full_value, gathered, make_parallel
from algorithms.objective import Objective, TrainingError
from algorithms.registry import resolve_config, resume_config, segment_changes
from algorithms.sampling.hf import HFPolicy, SamplingBackend, SamplingParams
from rlrf.errors import ConfigError
from rlrf.rollout import RolloutStats, collect_groups, eval_tasks, task_sampler
from rlrf.trajectory import Group, TrajectoryWriter

__all__ = ["RunResult", "Trainer", "TrainingError", "mix_seed", "rollout_sampling", "train"]


@dataclass
class RunResult:
    """What a finished run leaves behind.

    Attributes:
        output_dir: The run folder.
        final_model_dir: ``save_pretrained`` folder of the final model (and tokenizer);
            None on the other processes of a multi-process run.
        steps: Training steps completed.
        generations: Responses sampled for training, every turn of every episode (the
            learning-efficiency x-axis; for single-turn envs, the rollouts).
        metrics: The last step's metrics.
        evals: Every evaluation's metrics, with its ``step``.

    """

    output_dir: Path
    final_model_dir: Path | None
    steps: int
    generations: int
    metrics: dict[str, Any] = field(default_factory=dict)
    evals: list[dict[str, Any]] = field(default_factory=list)


def rollout_sampling(cfg: Any, seed: int, step: int, process_index: int = 0) -> SamplingParams:
    """Sampling parameters of a step's rollouts (``cfg``: temperature, top_p, max_new_tokens).

    The one place that fixes the rollout seed, so that other methods (test-time
    self-distillation's baselines) draw the same random numbers as training does.
    """
    return SamplingParams(
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        max_new_tokens=cfg.max_new_tokens,
        seed=mix_seed(seed, step, process_index),
    )


def mix_seed(*parts: int) -> int:
    """Combine integers into a 63-bit seed (stable across runs and platforms)."""
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (p & 0xFFFFFFFFFFFFFFFF)) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h & 0x7FFFFFFFFFFFFFFF


class Trainer:
    """Trains a policy on an env with the objective its config builds.

    Args:
        config: A train config (:class:`algorithms.config.GRPOTrainConfig`,
            :class:`algorithms.config.SDPOTrainConfig`, or any
            :class:`~algorithms.config.TrainConfig` whose ``build_objective`` returns an
            :class:`~algorithms.objective.Objective`).
        env: An env instance; default ``rlrf.make(config.env, **config.env_kwargs)``.
        model: A model object, a model name/path, or None for ``config.model``.
        tokenizer: The tokenizer when ``model`` is an object.

    """

    def __init__(
        self,
        config: TrainConfig,
        env: rlrf.RLRFEnv | None = None,
        model: Any = None,
        tokenizer: Any = None,
    ) -> None:
        from accelerate import Accelerator

        if not isinstance(config, TrainConfig):
            raise ConfigError(
                f"config must be a TrainConfig (e.g. GRPOTrainConfig or SDPOTrainConfig), got "
                f"{type(config).__name__}"
            )
        self.config = cfg = config
        self.output_dir = Path(cfg.output_dir)
        trackers = [t for t in cfg.trackers if t]
        self.accelerator = Accelerator(
            # without cuda (or another accelerator) several processes train on CPU over gloo
            cpu=not _has_accelerator(),
            mixed_precision=cfg.mixed_precision,
            log_with=trackers or None,
            project_dir=str(self.output_dir),
        )
        check_launch(
            self.accelerator.distributed_type.name,
            self.accelerator.num_processes,
            cfg.parallelism == "fsdp2",
        )
        if cfg.reuse_freed_memory and self.accelerator.device.type == "cpu":
            allocator.reuse_freed_memory()
        _seed_everything(cfg.seed)
        self.env = env if env is not None else rlrf.make(cfg.env, **cfg.env_kwargs)
        self.env_id = getattr(self.env, "env_id", None) or cfg.env
        model, tokenizer = self._load_model(model, tokenizer)
        self.tokenizer = tokenizer
        # how processes share the model (DDP or FSDP2): every difference is behind this seam;
        # FSDP2 shards the LM's parameters here, before the optimizer takes them
        self.parallel = make_parallel(
            cfg.parallelism, self.accelerator, model, int(tokenizer.pad_token_id)
        )
        params = [p for p in model.parameters() if p.requires_grad]
        # torch's default AdamW, not fused=True: the fused kernel's step took 0.15 CPU-s
        # instead of 0.76 on SmolLM2-135M, but rounds in another order (weights a few ulps
        # apart), which moves the pinned gradients of tests/algorithms/
        # test_objective_equivalence.py past their tolerance after one step
        self.optimizer = torch.optim.AdamW(
            params, lr=cfg.lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay
        )
        warmup = cfg.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0
        )
        # The training forward goes through ``self.model``: the LM's body wrapped by
        # accelerate (DDP when launched on several processes), so gradients are synchronized.
        # Generation, the objective's frozen copies and checkpoints use the plain LM,
        # ``self.unwrapped``.
        self.model, self.optimizer = self.parallel.prepare(self.optimizer)
        self.unwrapped = model
        self.policy = HFPolicy(self.unwrapped, tokenizer, max_batch_size=cfg.generation_batch_size)
        # Rollouts and evaluation sample through ``self.sampling``: the HF policy, or a vLLM
        # engine in this process whose weights follow the trainer's (synced after updates).
        self.vllm: Any = None
        if cfg.generation_backend == "vllm":
            from algorithms.sampling.vllm import make_vllm_backend

            self.vllm = make_vllm_backend(cfg, self.unwrapped, tokenizer)
        self.objective: Objective = cfg.build_objective(self.unwrapped, tokenizer)
        missing = [
            name
            for name in ("metric_names", *_OBJECTIVE_METHODS)
            if not hasattr(self.objective, name)
        ]
        if missing:
            raise ConfigError(
                f"{type(cfg).__name__}.build_objective() returned a "
                f"{type(self.objective).__name__}, which lacks {missing} of the Objective "
                "protocol (algorithms.objective)"
            )
        self.scorer = self.parallel.scorer_class(
            model=self.model,
            lm=self.unwrapped,
            pad=int(tokenizer.pad_token_id),
            temperature=cfg.temperature if cfg.temperature > 0 else 1.0,
            chunk_size=cfg.logit_chunk_size,
        )
        self.sampler = task_sampler(self.env, seed=cfg.seed)
        self.step = 0
        self.generations = 0
        self.last_groups: list[Group] = []
        self.optimizer_steps = 0
        self.evals: list[dict[str, Any]] = []
        self.last_checkpoint: Path | None = None
        self._changes: dict[str, dict[str, Any]] = {}  # config changes of a resumed segment
        self.signal_monitor = LearningSignalMonitor()
        # issue 28: the stability monitor and what an alarm does (on_alarm)
        self.guard = AlarmGuard(
            cfg, self.objective, self.accelerator.is_main_process, self.signal_monitor
        )
        self._rewarded = 0  # rollouts with a reward in this segment (all processes)
        self._first_failure: str | None = None

    # --- setup ------------------------------------------------------------------------

    def _load_model(self, model: Any, tokenizer: Any) -> tuple[Any, Any]:
        from algorithms.models import load_model

        cfg = self.config
        dtype = getattr(torch, cfg.dtype)
        if isinstance(model, HFPolicy):
            model, tokenizer = model.model, model.tokenizer
        if model is None or isinstance(model, (str, Path)):
            model, tokenizer = load_model(str(model or cfg.model), dtype=dtype)
        elif tokenizer is None:
            raise ConfigError("pass tokenizer= together with a model object")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        if cfg.gradient_checkpointing:
            # transformers >= 5.x names it activation checkpointing; older releases do not
            enable = getattr(model, "activation_checkpointing_enable", None)
            if enable is not None:
                enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(
                    gradient_checkpointing_kwargs={"use_reentrant": False}
                )
        if cfg.lora_r > 0:
            try:
                import peft
            except ImportError as e:
                raise ConfigError("lora_r > 0 needs peft: pip install peft") from e
            lora = peft.LoraConfig(
                r=cfg.lora_r,
                lora_alpha=cfg.lora_alpha,
                lora_dropout=cfg.lora_dropout,
                target_modules=list(cfg.lora_target_modules),
                task_type="CAUSAL_LM",
            )
            model = peft.get_peft_model(model, lora)
        model.train()
        return model, tokenizer

    # --- normalizers -----------------------------------------------------------------

    def _normalizers(self, rows: list[Row]) -> dict[str, float]:
        """The objective's normalizers of the mini-batch, summed over every process.

        Also returns ``rows``, the mini-batch's row count over all processes, so that every
        process takes the same decisions (skip, or join the gradient all-reduce).
        """
        local = self.objective.normalizers(rows)
        keys = sorted(local)  # the same on every process: one all-reduce of one list
        summed = self._sum_over_processes([local[k] for k in keys] + [float(len(rows))])
        return {**dict(zip(keys, summed, strict=False)), "rows": summed[-1]}

    def _sum_over_processes(self, values: list[float]) -> list[float]:
        """Sum a few numbers over all processes (one all-reduce; a no-op on one process)."""
        acc = self.accelerator
        if acc.num_processes == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=acc.device)
        return acc.reduce(t, "sum").cpu().tolist()

    # --- the loss ---------------------------------------------------------------------

    def _loss(
        self, batch: Batch, norm: dict[str, float], on_policy: bool
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The objective's loss of one micro-batch (the trainer's only call into it)."""
        return self.objective.loss(batch, norm, self.scorer, on_policy=on_policy)

    @property
    def _pad(self) -> int:
        return self.scorer.pad

    # --- one step --------------------------------------------------------------------

    def _update(self, rows: list[Row]) -> dict[str, float]:
        """``epochs`` passes of ``mini_batches`` optimizer steps over this process's rows.

        Returns the ``train/`` metrics, and the seconds the objective reported under its
        ``timing/<phase>`` keys.

        On several processes every process makes the same sequence of collective calls
        whatever its own row count: the mini-batch count is fixed, the normalizers are summed
        in one all-reduce per mini-batch, and a process with no rows in a mini-batch still
        joins the gradient all-reduce with a zero loss.
        """
        cfg = self.config
        acc = self.accelerator
        totals: dict[str, float] = defaultdict(float)
        n_updates = 0
        timing: dict[str, float] = defaultdict(float)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        # FSDP2: the objective's sharded frozen copies, gathered for every micro-batch
        frozen = self.parallel.frozen_modules(self.objective)
        for epoch in range(cfg.epochs):
            order = list(range(len(rows)))
            if cfg.epochs > 1 or cfg.mini_batches > 1:
                random.Random(mix_seed(cfg.seed, self.step, epoch)).shuffle(order)
            shuffled = [rows[i] for i in order]
            for mb_index, mini in enumerate(_even_parts(shuffled, cfg.mini_batches)):
                norm = self._normalizers(mini)
                if norm["rows"] == 0:
                    continue  # the same on every process
                on_policy = epoch == 0 and mb_index == 0
                # a micro-batch of one group's rows shares its prompts' prefixes; the
                # order inside a mini-batch does not change its gradient (a sum)
                mini = sorted(mini, key=lambda r: (r.group, r.trajectory, r.turn))
                micro = self.parallel.even_micro_batches(
                    split_rows(mini, cfg.micro_batch_size) or [[]]
                )
                step_stats: dict[str, float] = defaultdict(float)
                failure = ""
                for k, micro_rows in enumerate(micro):
                    sync = (
                        contextlib.nullcontext() if k == len(micro) - 1 else acc.no_sync(self.model)
                    )
                    with sync, acc.autocast(), gathered(frozen):
                        stats: dict[str, torch.Tensor] = {}
                        if micro_rows:
                            batch = collate(micro_rows, acc.device)
                            loss, stats = self._loss(batch, norm, on_policy)
                        else:  # nothing here, but the DDP forward must still run
                            self.parallel.empty_forward(self.model)
                            loss = torch.zeros(())
                        # every parameter gets a gradient whatever this micro-batch's loss
                        # used (DDP), every layer's backward runs on every process (FSDP2)
                        loss = self.parallel.touch_every_parameter(loss, self.scorer, trainable)
                        if not failure and not torch.isfinite(loss.detach()).all():
                            failure = (
                                f"non-finite loss ({float(loss.detach())}) at step "
                                f"{self.step + 1}, epoch {epoch}, mini-batch {mb_index}, "
                                f"micro-batch {k} (groups "
                                f"{sorted({r.group for r in micro_rows})})"
                            )
                        # even a non-finite loss goes through backward, so that every process
                        # makes the same gradient all-reduces; the step is refused below
                        if loss.requires_grad:  # always, except a constant on one process
                            acc.backward(loss * acc.num_processes)
                    step_stats["loss"] += float(loss.detach())
                    for key, value in stats.items():
                        if key.startswith("timing/"):  # seconds, not a loss statistic
                            timing[key] += float(value)
                        else:
                            step_stats[key] += float(value)
                (failed,) = self._sum_over_processes([float(bool(failure))])
                if failed:
                    kept = self.last_checkpoint or "none saved yet"
                    where = failure or (
                        f"a non-finite loss on another process at step {self.step + 1}, "
                        f"epoch {epoch}, mini-batch {mb_index}"
                    )
                    self.optimizer.zero_grad(set_to_none=True)
                    raise TrainingError(
                        f"{where}; the update was not applied and the last checkpoint "
                        f"({kept}) is kept. Lower lr or check the rewards and the model's dtype"
                    )
                if acc.num_processes > 1:
                    step_stats = _sum_dicts(acc, step_stats)
                self.parallel.fill_missing_grads(trainable)
                if cfg.max_grad_norm > 0:
                    grad_norm = acc.clip_grad_norm_(trainable, cfg.max_grad_norm)
                else:
                    grad_norm = self.parallel.grad_norm(trainable)
                step_stats["grad_norm"] = float(full_value(grad_norm))
                step_stats["lr"] = float(self.scheduler.get_last_lr()[0])
                self.optimizer.step()
                step_stats["update_ratio"] = self._update_ratio()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.objective.after_optimizer_step(self.unwrapped)
                self.optimizer_steps += 1
                n_updates += 1
                for key, value in step_stats.items():
                    totals[key] += value
        out = {f"train/{k}": v / max(1, n_updates) for k, v in totals.items()}
        out["train/optimizer_steps"] = float(n_updates)
        if n_updates == 0:
            out["train/skipped"] = 1.0
        out.update(timing)
        return out

    def _update_ratio(self) -> float:
        """``||Δθ|| / ||θ||`` of the AdamW step just taken, from its state (no weight copy).

        torch's AdamW sets ``θ' = θ(1 - lr·wd) - lr·u`` with ``u = m̂ / (√v̂ + eps)``, so
        ``Δθ = -lr(wd·θ' + u) / (1 - lr·wd)`` and ``θ = θ' - Δθ``, one tensor at a time.
        """
        opt = getattr(self.optimizer, "optimizer", self.optimizer)
        # summed on the device and read once: a host sync per tensor would stall a GPU step
        totals: list[torch.Tensor] = []
        with torch.no_grad():
            for group in opt.param_groups:
                lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
                beta1, beta2 = group["betas"]
                for p in group["params"]:
                    state = opt.state.get(p) or {}
                    if "exp_avg" not in state:
                        continue
                    t = float(state["step"])  # a CPU tensor (not capturable): no device sync
                    m, v = _local(state["exp_avg"]).float(), _local(state["exp_avg_sq"]).float()
                    new = _local(p.detach()).float()
                    u = (m / (1 - beta1**t)) / (v.sqrt() / math.sqrt(1 - beta2**t) + eps)
                    delta = (new * wd + u) * (-lr / (1 - lr * wd))
                    totals.append(
                        torch.stack([delta.square().sum(), (new - delta).square().sum()]).double()
                    )
        if not totals:
            return 0.0
        sums = [float(x) for x in torch.stack(totals).sum(0).cpu()]
        if self.parallel.holds_shards():
            sums = self._sum_over_processes(sums)
        return math.sqrt(sums[0]) / math.sqrt(sums[1]) if sums[1] > 0 else 0.0

    def train_step(self) -> dict[str, Any]:
        """Run one step (roll out, then update); return its metrics."""
        started = time.perf_counter()
        groups, rstats = self.collect()
        return self.learn(groups, rstats, started=started)

    @property
    def sampling(self) -> SamplingBackend:
        """What rollouts and evaluations sample through: the vLLM engine, else the policy."""
        return self.vllm if self.vllm is not None else self.policy

    def collect(self) -> tuple[list[Group], RolloutStats]:
        """Roll out this step's tasks with the current policy, without updating it.

        Callers that need to look at the groups before learning (test-time
        self-distillation stops at the first success) call this, then :meth:`learn`.
        """
        cfg = self.config
        acc = self.accelerator
        tasks = self.sampler.next(cfg.questions_per_step)
        local = tasks[acc.process_index :: acc.num_processes]
        # the policy version: the step, plus the steps rollbacks threw away (guard.py)
        version = self.guard.version(self.step)
        params = rollout_sampling(cfg, cfg.seed, version, acc.process_index)
        with acc.autocast(), self.parallel.generation_weights():
            groups, rstats = collect_groups(
                self.env,
                self.sampling,
                local,
                cfg.rollouts_per_question,
                params,
                env_id=self.env_id,
                # with vLLM, the step whose weights the engine holds (its staleness)
                policy_version=version if self.vllm is None else self.vllm.policy_version,
                env_workers=cfg.env_workers,
            )
        return groups, rstats

    def learn(
        self, groups: list[Group], rstats: RolloutStats, *, started: float | None = None
    ) -> dict[str, Any]:
        """Update on ``groups`` (from :meth:`collect`), advance the step, return its metrics.

        The groups are also kept as :attr:`last_groups` and written to trajectories.jsonl.
        """
        acc = self.accelerator
        timer = Timer()
        t_step = time.perf_counter() if started is None else started
        timer.add("generation", rstats.generation_s)
        timer.add("env", rstats.env_s)

        with timer("build"):
            rows, row_stats = self.objective.rows(groups, self.policy.encode)
            row_stats = {**row_stats, "trained_rows": float(len(rows))}
        metrics: dict[str, Any] = {}
        t_update = time.perf_counter()
        objective_s = 0.0
        if self.vllm is not None and self.config.vllm_sleep:
            self.vllm.sleep()  # frees the engine's GPU memory for the update; sampling wakes it
        for key, value in self._update(rows).items():
            if key.startswith("timing/"):  # the objective's own phases (teacher scoring)
                timer.add(key.removeprefix("timing/"), value)
                objective_s += value
            else:
                metrics[key] = value
        timer.add("update", time.perf_counter() - t_update - objective_s)

        if acc.num_processes > 1:
            # every process's rollouts count in the metrics and reach trajectories.jsonl
            rstats, row_stats, all_groups = self._gather_step(rstats, row_stats, groups)
        else:
            all_groups = groups
        self.generations += rstats.generations  # every sampled turn
        rewards = [r for g in all_groups for r in g.rewards if r is not None]
        successes = [t.success for g in all_groups for t in g.trajectories if t.reward is not None]
        metrics.update(
            {
                "rollout/reward_mean": float(np.mean(rewards)) if rewards else float("nan"),
                "rollout/reward_std": float(np.std(rewards)) if rewards else float("nan"),
                "rollout/success_rate": float(np.mean(successes)) if successes else float("nan"),
                "rollout/missing_rewards": float(rstats.missing_rewards),
                "rollout/response_tokens_mean": rstats.response_tokens / max(1, rstats.turns),
                "rollout/truncated_frac": rstats.truncated / max(1, rstats.turns),
                "rollout/generations": float(self.generations),
                "rollout/turns": float(rstats.turns),
                "rollout/env_errors": float(rstats.env_errors),
                # the grader's sandbox failed (reward missing), apart from the policy's 0s
                "rollout/sandbox_errors": float(rstats.sandbox_errors),
                "rollout/episodes_truncated": float(rstats.episodes_truncated),
                "rollout/trained_rows": row_stats.get("trained_rows", 0.0),
                # groups whose rewards differ: the only ones with a group-relative signal
                "rollout/signal_groups_frac": _signal_frac(all_groups),
            }
        )
        self._rewarded += rstats.rollouts - rstats.missing_rewards
        if self._first_failure is None:
            self._first_failure = next(
                (str(t.error) for g in all_groups for t in g.trajectories if t.error), None
            )
        metrics.update(self.objective.rollout_metrics(row_stats))
        self.step += 1
        if self.vllm is not None:
            if self.step % self.config.vllm_sync_every == 0:
                version = self.guard.version(self.step)
                timer.add("weight_sync", self.vllm.sync(self.unwrapped, version))
            metrics.update(self.vllm.stats())
        self.last_groups = groups
        if acc.is_main_process and self._trajectory_writer is not None:
            for g in all_groups:
                self._trajectory_writer.write(g)
        metrics.update(timer.as_metrics())
        metrics["timing/step"] = time.perf_counter() - t_step
        self.guard.observe(self.step, metrics)  # its alarms are acted on by train()
        return metrics

    def _gather_step(
        self, rstats: RolloutStats, row_stats: dict[str, float], groups: list[Group]
    ) -> tuple[RolloutStats, dict[str, float], list[Group]]:
        """Sum the counts over processes; collect every process's groups on the main one.

        The other processes get an empty list: only the main process logs and writes them.
        """
        import torch.distributed as dist

        counts = (
            "rollouts",
            "missing_rewards",
            "response_tokens",
            "truncated",
            "turns",
            "generations",
            "env_errors",
            "episodes_truncated",
            "sandbox_errors",
        )
        keys = sorted(row_stats)
        summed = self._sum_over_processes(
            [float(getattr(rstats, c)) for c in counts] + [row_stats[k] for k in keys]
        )
        total = dataclasses.replace(
            rstats, **{c: int(v) for c, v in zip(counts, summed, strict=False)}
        )
        all_stats = dict(zip(keys, summed[len(counts) :], strict=True))
        main = self.accelerator.is_main_process
        parts: list[Any] | None = [None] * self.accelerator.num_processes if main else None
        dist.gather_object(groups, parts, dst=0)
        return total, all_stats, [g for part in parts or () for g in part]

    # --- evaluation ------------------------------------------------------------------

    def evaluate(self) -> dict[str, float]:
        """Sample ``eval_k`` responses per held-out task; return ``eval/`` metrics."""
        cfg = self.config
        # held-out task ids, or fixed reset seeds played with split="test" (Gymnasium style)
        task_ids = eval_tasks(self.env, cfg.eval_tasks)
        if not task_ids:
            return {}
        params = SamplingParams(
            temperature=cfg.eval_temperature,
            top_p=cfg.top_p,
            max_new_tokens=cfg.max_new_tokens,
            seed=mix_seed(cfg.seed, 10**9 + self.step),
        )
        t0 = time.perf_counter()
        accel = self.accelerator
        # every process evaluates its share of the tasks (no process idles at a collective)
        local = task_ids[accel.process_index :: accel.num_processes]
        succ: list[bool] = []
        rewards: list[float] = []
        tokens = turns = missing = errors = sandbox = 0
        # FSDP2: every process gathers the weights, with tasks or without
        gathered = self.parallel.generation_weights()
        if local or self.parallel.evaluates_without_tasks():
            with accel.autocast(), gathered:
                groups, st = collect_groups(
                    self.env,
                    self.sampling,
                    local,
                    cfg.eval_k,
                    params,
                    env_id=self.env_id,
                    env_workers=cfg.env_workers,
                    split="test",
                )
            succ = [t.success for g in groups for t in g.trajectories if t.reward is not None]
            rewards = [r for g in groups for r in g.rewards if r is not None]
            tokens, turns, missing = st.response_tokens, st.turns, st.missing_rewards
            errors, sandbox = st.env_errors, st.sandbox_errors
        if accel.num_processes > 1:
            from accelerate.utils import gather_object

            parts = gather_object([(succ, rewards, tokens, turns, missing, errors, sandbox)])
            succ = [x for p in parts for x in p[0]]
            rewards = [x for p in parts for x in p[1]]
            tokens, turns, missing, errors, sandbox = (
                sum(p[i] for p in parts) for i in (2, 3, 4, 5, 6)
            )
        acc = float(np.mean(succ)) if succ else float("nan")
        return {
            f"eval/avg@{cfg.eval_k}": acc,
            "eval/accuracy": acc,
            "eval/reward_mean": float(np.mean(rewards)) if rewards else float("nan"),
            "eval/response_tokens_mean": tokens / max(1, turns),
            "eval/missing_rewards": float(missing),
            "eval/env_errors": float(errors),
            # the grader's own sandbox failed (part of missing_rewards): a rising share is
            # infrastructure, not the policy
            "eval/sandbox_errors": float(sandbox),
            "eval/tasks": float(len(task_ids)),
            "timing/eval": time.perf_counter() - t0,
        }

    # --- checkpoints -----------------------------------------------------------------

    @property
    def checkpoint_dir(self) -> Path:
        """Where resumable checkpoints go."""
        return self.output_dir / "checkpoints"

    def save(self) -> Path | None:
        """Write a resumable checkpoint of the current state (main process).

        Raises:
            CheckpointError: the write failed (a full disk); the previous checkpoint is kept.

        """
        acc = self.accelerator
        acc.wait_for_everyone()
        # FSDP2 gathers on every process (a collective); DDP's main process reads its own
        gathered = self.parallel.gathered_states(self.optimizer, self.objective)
        if not acc.is_main_process:
            return None
        model_state, optimizer_state, objective_state = gathered or self.parallel.local_states(
            self.optimizer, self.objective
        )
        state = {
            "step": self.step,
            "generations": self.generations,
            "optimizer_steps": self.optimizer_steps,
            "model": model_state,
            "optimizer": optimizer_state,
            "scheduler": self.scheduler.state_dict(),
            "objective": objective_state,
            "sampler": self.sampler.state_dict(),
            "rng": capture_rng(),
            "evals": self.evals,
            "config": config_to_dict(self.config),
            # where the logs end at this step: a resume cuts them back to exactly this
            "logs": {name: log_position(self.output_dir / name) for name in _LOGS},
            "guard": self.guard.state_dict(),
        }
        path = save_checkpoint(self.checkpoint_dir, self.step, state)
        prune_checkpoints(self.checkpoint_dir, self.guard.keep_checkpoints)
        self.last_checkpoint = path
        return path

    def load(self, path: Path) -> None:
        """Restore everything from a checkpoint folder."""
        state = load_checkpoint(path)
        with restoring(path):
            self._restore(path, state)

    def _restore(self, path: Path, state: dict[str, Any]) -> None:
        self.parallel.load_states(self.optimizer, state["model"], state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        # checkpoints written before the "objective" key kept its entries at the top level
        try:
            self.objective.load_state_dict(state.get("objective", state))
        except ConfigError as e:
            raise ConfigError(f"checkpoint {path}: {e}") from e
        self.sampler.load_state_dict(state["sampler"])
        self.step = int(state["step"])
        self.generations = int(state["generations"])
        self.optimizer_steps = int(state["optimizer_steps"])
        self.evals = list(state.get("evals", []))
        restore_rng(state["rng"])
        self.guard.load_state_dict(state.get("guard"), self)
        self.last_checkpoint = path
        if self.vllm is not None:  # the engine started from the initial weights
            self.vllm.sync(self.unwrapped, self.guard.version(self.step))

    # --- the loop --------------------------------------------------------------------

    _trajectory_writer: TrajectoryWriter | None = None

    def train(self) -> RunResult:
        """Run the configured number of steps; return a :class:`RunResult`."""
        from tqdm.auto import tqdm

        cfg = self.config
        acc = self.accelerator
        main = acc.is_main_process
        resumed = False
        logs: dict[str, Any] = {}
        if cfg.resume:
            logs = self._resume()
            resumed = True
        if main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "config.yaml").write_text(
                config_to_yaml(self.config), encoding="utf-8"
            )
            if resumed:
                self._record_changes()
            metrics_path = self.output_dir / "metrics.jsonl"
            traj_path = self.output_dir / "trajectories.jsonl"
            if resumed:
                # checkpoints from before the "logs" key: keep records by their step
                restore_log(metrics_path, logs.get(_LOGS[0]), lambda r: r["step"] <= self.step)
                restore_log(traj_path, logs.get(_LOGS[1]), lambda r: _version(r) < self.step)
            self._logger = MetricsLogger(metrics_path, acc, append=resumed)
            self._trajectory_writer = TrajectoryWriter(traj_path, append=resumed)
            if cfg.trackers:
                acc.init_trackers("rlrf", config=_flat_for_trackers(config_to_dict(cfg)))
        last: dict[str, Any] = {}
        bar = tqdm(
            total=cfg.steps,
            initial=self.step,
            disable=not (cfg.progress and main),
            desc=f"{cfg.algorithm} {self.env_id}",
            unit="step",
        )
        start_step = self.step
        try:
            if self.step == 0 and cfg.eval_every:
                first_eval = self.evaluate()
                if first_eval:
                    self._record_eval(0, first_eval)
                    if main:
                        self._logger.log(0, first_eval)
            while self.step < cfg.steps:
                metrics = self.train_step()
                due_eval = cfg.eval_every and (
                    self.step % cfg.eval_every == 0 or self.step == cfg.steps
                )
                if due_eval:
                    ev = self.evaluate()
                    if ev:
                        self._record_eval(self.step, ev)
                        metrics.update(ev)
                if main:
                    self._logger.log(self.step, metrics)
                    # warns: not learning; on_alarm applies to its alarms too (guard.py)
                    self.guard.pending += self.signal_monitor.update(self.step, metrics)
                self._stop_if_nothing_rewarded(start_step)
                last = metrics
                # checkpoint_every: 0 writes no resumable state at all, only final/
                # on_alarm (guard.py): warn, stop (raises), or roll back (no checkpoint now)
                if self.guard.act(self, self._logger.log if main else None):
                    bar.n = self.step
                    continue
                every = self.guard.checkpoint_every  # rollback: at least every window
                if every and (self.step % every == 0 or self.step == cfg.steps):
                    self.save()
                bar.update(1)
                bar.set_postfix(_postfix(metrics, self.objective.metric_names[:1]))
        except KeyboardInterrupt:
            raise RunInterrupted(self._interrupted_message()) from None
        finally:
            bar.close()
            if main:
                self._logger.close()
                if self._trajectory_writer is not None:
                    self._trajectory_writer.close()
            if cfg.trackers:
                acc.end_training()
        final_dir = None
        # FSDP2: the full weights, gathered on every process
        full = self.parallel.final_weights()
        if main:
            final_dir = self.output_dir / "final"
            try:
                self._save_final(final_dir, full)
            except KeyboardInterrupt:
                done = "was written completely" if final_dir.is_dir() else "was not written"
                raise RunInterrupted(
                    f"interrupted after the last step while writing {final_dir}, which {done}"
                ) from None
        return RunResult(
            output_dir=self.output_dir,
            final_model_dir=final_dir,
            steps=self.step,
            generations=self.generations,
            metrics=last,
            evals=list(self.evals),
        )

    def _resume(self) -> dict[str, Any]:
        """Restore the newest readable checkpoint; return the log positions it recorded."""
        found = load_latest(self.checkpoint_dir)
        if found is None:
            raise ConfigError(
                f"resume=True but {self.checkpoint_dir} holds no complete checkpoint (was "
                f"output_dir={str(self.output_dir)!r} the folder of the run to continue? Was "
                "it run with checkpoint_every: 0?). Point output_dir at the run's folder, or "
                "set resume: false to start a new run there (its metrics.jsonl and "
                "trajectories.jsonl are then overwritten)"
            )
        path, state = found
        with restoring(path):  # plain data, but maybe not what rlrf wrote: named, no traceback
            self._check_same_run(path, state)
            self._restore(path, state)
        if self.accelerator.is_main_process:
            print(
                f"rlrf: resuming from step {self.step} of {self.config.steps} ({path})",
                file=sys.stderr,
                flush=True,
            )
        return dict(state.get("logs") or {})

    def _check_same_run(self, path: Path, state: dict[str, Any]) -> None:
        """Refuse a config that would change the checkpointed run; note what it may change.

        The allowed changes (:func:`algorithms.registry.segment_changes`) are kept for
        :meth:`_record_changes`, which appends them to ``config_changes.jsonl``.
        """
        saved_dict = dict(state.get("config") or {})
        if not saved_dict:  # checkpoints from before the config was saved in them
            return
        name = saved_dict.pop("algorithm", None) or self.config.algorithm
        try:
            saved = resolve_config(None, algorithm=name, overrides=saved_dict)
        except ConfigError as e:
            raise ConfigError(f"checkpoint {path}: its saved config does not load: {e}") from e
        self._changes = segment_changes(
            saved, self.config, source=f"checkpoint {path}", where="resume"
        )

    def _record_changes(self) -> None:
        """Append this segment's config changes (if any) to ``config_changes.jsonl``."""
        changes = {k: v for k, v in self._changes.items() if k != "output_dir"}
        if not changes:
            return
        line = {"step": self.step, "changes": changes}
        with open(self.output_dir / "config_changes.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(line, default=str) + "\n")
        listed = ", ".join(f"{k} {v['saved']!r} -> {v['given']!r}" for k, v in changes.items())
        print(f"rlrf: resumed with {listed} (recorded in config_changes.jsonl)", file=sys.stderr)

    def _stop_if_nothing_rewarded(self, start_step: int) -> None:
        """Stop a run none of whose rollouts got a reward (every one failed) so far.

        Checked once ``SignalThresholds.steps`` steps (or the whole run, if shorter) have
        been played: such a run trains nothing, and must not exit 0 with a ``final/``.
        """
        done = self.step - start_step
        enough = min(self.signal_monitor.thresholds.steps, self.config.steps - start_step)
        if self._rewarded or done < enough:
            return
        first = f" (first: {self._first_failure})" if self._first_failure else ""
        raise TrainingError(
            f"no rollout of steps {start_step + 1}-{self.step} got a reward: every one ended "
            f"in an env error or with a missing reward{first}, so nothing was trained and no "
            f"final/ was written. Run `rlrf check {self.env_id}` and look at the errors in "
            f"{self.output_dir / 'trajectories.jsonl'}"
        )

    def _interrupted_message(self) -> str:
        # from the disk: a save that Ctrl-C let finish never returned its folder
        hint = resume_hint(self.output_dir, self.config.checkpoint_every)
        return f"interrupted at step {self.step}; {hint}"

    def _save_final(self, final_dir: Path, state_dict: dict[str, Any] | None = None) -> None:
        """``save_pretrained`` the model and tokenizer into ``final_dir``, atomically.

        ``state_dict``: the full weights of a sharded (FSDP2) model.
        """
        tmp = final_dir.with_name(f".{final_dir.name}.tmp")
        old = final_dir.with_name(f".{final_dir.name}.old")
        for stale in (tmp, old):
            shutil.rmtree(stale, ignore_errors=True)
        with deferred_sigint("writing the final model"):
            self.unwrapped.save_pretrained(tmp, state_dict=state_dict)
            self.tokenizer.save_pretrained(tmp)
            if final_dir.exists():
                final_dir.rename(old)
            tmp.rename(final_dir)
            shutil.rmtree(old, ignore_errors=True)

    def _record_eval(self, step: int, metrics: dict[str, float]) -> None:
        self.evals.append({"step": step, "generations": self.generations, **metrics})


_OBJECTIVE_METHODS = (
    "rows",
    "normalizers",
    "loss",
    "after_optimizer_step",
    "rollout_metrics",
    "state_dict",
    "load_state_dict",
)


_LOGS = ("metrics.jsonl", "trajectories.jsonl")


def _version(record: dict[str, Any]) -> int:
    """The policy version of a trajectories.jsonl record (a group's is its rollouts')."""
    trajectories = record.get("trajectories") or [record]
    return int(trajectories[0].get("policy_version", 0))


def _signal_frac(groups: Sequence[Group]) -> float:
    """The share of groups whose rewards differ (0.0 when there are none)."""
    varied = [len({r for r in g.rewards if r is not None}) > 1 for g in groups]
    return float(np.mean(varied)) if varied else 0.0


def _local(t: torch.Tensor) -> torch.Tensor:
    """The shard this process holds of a DTensor (FSDP2), or the tensor itself."""
    to_local = getattr(t, "to_local", None)
    return to_local() if to_local is not None else t


def _sum_dicts(acc: Any, values: dict[str, float]) -> dict[str, float]:
    """Sum every process's loss statistics (each is its share of a globally normalized sum)."""
    from accelerate.utils import gather_object

    total: dict[str, float] = defaultdict(float)
    for part in gather_object([dict(values)]):
        for key, value in part.items():
            total[key] += value
    return total


def _has_accelerator() -> bool:
    """Whether torch sees a GPU-like device (``torch.accelerator`` exists from torch 2.6)."""
    api = getattr(torch, "accelerator", None)
    if api is not None:
        return bool(api.is_available())
    mps = getattr(torch.backends, "mps", None)
    return torch.cuda.is_available() or bool(mps is not None and mps.is_available())


def _even_parts(rows: list[Row], n: int) -> list[list[Row]]:
    """Split into exactly ``n`` consecutive parts whose sizes differ by at most one."""
    q, r = divmod(len(rows), n)
    bounds = [i * q + min(i, r) for i in range(n + 1)]
    return [rows[bounds[i] : bounds[i + 1]] for i in range(n)]


def _postfix(metrics: dict[str, Any], extra: Sequence[str] = ()) -> dict[str, str]:
    out = {}
    named = [(k, k.rpartition("/")[2]) for k in extra]
    for key, short in [("rollout/reward_mean", "reward"), ("eval/accuracy", "eval"), *named]:
        if key in metrics and isinstance(metrics[key], float) and math.isfinite(metrics[key]):
            out[short] = f"{metrics[key]:.3f}"
    return out


def _flat_for_trackers(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, dict):
            out.update(_flat_for_trackers(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float, str, bool)):
            out[f"{prefix}{k}"] = v
        else:
            out[f"{prefix}{k}"] = str(v)
    return out


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train(
    env: rlrf.RLRFEnv | str | None = None,
    model: Any = None,
    config: Any = None,
    *,
    tokenizer: Any = None,
    algorithm: str | None = None,
    **overrides: Any,
) -> RunResult:
    """Train ``model`` on ``env`` and return the :class:`RunResult`.

    Args:
        env: An env instance or a registered id (default: ``config.env``).
        model: A model name/path (``"smollm2-135m"``), a model object (with ``tokenizer=``),
            an :class:`algorithms.sampling.hf.HFPolicy`, or None for ``config.model``.
        config: A train config, a loss config (``GRPOConfig`` / ``SDPOConfig``: the
            preset supplies the training options), a YAML file, or None for the preset of
            ``algorithm`` (see :func:`algorithms.config.resolve_config`).
        tokenizer: The tokenizer when ``model`` is an object.
        algorithm: A preset name, ``"grpo"``, ``"sdpo"`` (default) or ``"sdpo-srf"``,
            used when ``config`` does not say.
        **overrides: Any config field by its flat name (``lr=1e-5``, ``top_k=100``).

    """
    env_obj = None
    if overrides.get("resume") is True and (config is None or isinstance(config, (str, Path))):
        # continue the run in output_dir: its config.yaml is the base (as on the command line)
        given = dict(overrides)
        if isinstance(env, str):
            given["env"] = env
        if isinstance(model, (str, Path)):
            given["model"], model = str(model), None
        output_dir = given.get("output_dir") or TrainConfig.output_dir
        if config is not None and "output_dir" not in given:
            output_dir = resolve_config(config, algorithm=algorithm).output_dir
        cfg = resume_config(output_dir, algorithm=algorithm, config=config, overrides=given)
        if env is not None and not isinstance(env, str):
            env_obj = env
        return Trainer(cfg, env=env_obj, model=model, tokenizer=tokenizer).train()
    cfg = resolve_config(config, algorithm=algorithm, overrides=overrides)
    if isinstance(env, str):
        cfg = dataclasses.replace(cfg, env=env)
    elif env is not None:
        env_obj = env
    return Trainer(cfg, env=env_obj, model=model, tokenizer=tokenizer).train()
