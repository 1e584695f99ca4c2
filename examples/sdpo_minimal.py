"""SDPO in one file: self-distillation policy optimization, top to bottom, on one CPU process.

    python examples/sdpo_minimal.py                      # the embedded SmolLM2-135M, 1-digit sums
    python examples/sdpo_minimal.py --steps 3 --lr 1e-5  # any field of Args below

One step (Hübotter et al. 2026; the full method in ``algorithms/sdpo/``):

1. Sample G answers to each of a few questions with the current policy; the env grades each
   one and writes feedback ("your answer 14 to 6 + 3 is too high").
2. Teacher context of answer i: the question, a successful sibling's answer and the feedback
   on answer i, then "Correctly solve the original question." Answers with neither get no
   loss.
3. The teacher is the student's own network (an EMA copy of its weights) reading that
   context; it scores the SAME answer tokens y_i, without gradient.
4. Loss: at every answer position, the divergence between the student's and the teacher's
   next-token distributions over the student's top-K tokens plus a tail bucket; token mean.
5. AdamW step, grad-norm clip 1.0, then the teacher's weights move 1% toward the student's.

Where this file departs from the trainer (``rlrf train --algo sdpo``), to stay short: one
process, one optimizer step per batch (so the importance weight is 1), full ``[T, V]`` logits
from a plain forward per answer (the trainer chunks the LM head, shares prompt prefixes and
accumulates micro-batches), pure SDPO (the ``sdpo`` preset mixes GRPO in, ``grpo_mix=0.9``),
only the first turn of an episode, no evaluation, checkpoints or logging. The losses are the
library's own functions, and the first update equals the trainer's
(``tests/algorithms/test_sdpo_minimal.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
from dataclasses import dataclass, field
from typing import Any

import torch

import rlrf
from algorithms.sampling.hf import HFPolicy, SamplingParams
from algorithms.sdpo import (
    SDPOConfig,
    distillation_loss,
    encode_teacher_prompt,
    teacher_contexts_for_group,
)
from rlrf.rollout import collect_groups
from rlrf.trajectory import Group


@dataclass
class Args:
    """Settings (each field is a flag: ``--questions-per-step 2``)."""

    model: str = "smollm2-135m"
    """The embedded model, or a local Hugging Face folder."""
    env: str = "rlrf/Arithmetic-v0"
    """Registered env id."""
    env_kwargs: dict[str, Any] = field(default_factory=lambda: {"digits": 1, "ops": "+"})
    """Keyword arguments of rlrf.make (JSON on the command line)."""
    seed: int = 0
    """Seed of the task order and the sampling."""
    steps: int = 12
    """Optimizer steps (one batch of fresh rollouts each)."""
    questions_per_step: int = 4
    """Questions per batch."""
    rollouts_per_question: int = 8
    """G: answers sampled per question."""
    max_new_tokens: int = 48
    """Cap on an answer's length."""
    temperature: float = 1.0
    """Sampling temperature (the loss divides the logits by it too)."""
    lr: float = 2e-5
    """AdamW learning rate (the demo's; the paper uses 1e-6 on larger models)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient-norm clip."""
    top_k: int = 20
    """K: the student's top-K tokens distilled at each position (plus a tail bucket)."""
    alpha: float = 1.0
    """Divergence: 0 forward KL, 1 reverse KL (the paper's rich-feedback choice), 0.5 JSD."""
    teacher_tau: float = 0.01
    """EMA rate of the teacher's weights per step."""
    teacher_max_prompt_tokens: int = 2048
    """Teacher prompts longer than this lose tokens from the left of the question."""


# --- 1. sample groups ---------------------------------------------------------------------


def sample_groups(env: Any, policy: HFPolicy, args: Args, step: int) -> list[Group]:
    """Sample G graded answers to each of ``questions_per_step`` random train questions."""
    rng = random.Random(args.seed * 1_000_003 + step)
    tasks = rng.sample(list(env.task_ids("train")), args.questions_per_step)
    params = SamplingParams(
        temperature=args.temperature,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed * 1_000_003 + step,
    )
    groups, _ = collect_groups(env, policy, tasks, args.rollouts_per_question, params)
    return groups


# --- 2. teacher contexts --------------------------------------------------------------------


@dataclass
class Row:
    """One answer to distill: the student's prompt, the answer, the teacher's prompt."""

    prompt_ids: list[int]
    response_ids: list[int]
    teacher_prompt_ids: list[int]


def make_rows(groups: list[Group], policy: HFPolicy, args: Args) -> list[Row]:
    """One row per graded answer that has a teacher context (a solution and/or feedback)."""
    config = SDPOConfig(teacher_max_prompt_tokens=args.teacher_max_prompt_tokens)
    rows = []
    for group in groups:
        for traj, context in zip(
            group.trajectories, teacher_contexts_for_group(group, config), strict=True
        ):
            if context is None or not traj.turns[0].response_token_ids:
                continue  # missing reward, or no solution and no feedback: nothing to learn
            teacher_ids = encode_teacher_prompt(
                policy.tokenizer,
                context,
                max_tokens=args.teacher_max_prompt_tokens,
                enable_thinking=False,
            )
            rows.append(
                Row(policy.encode(traj.prompt), list(traj.turns[0].response_token_ids), teacher_ids)
            )
    return rows


# --- 3-4. the loss ----------------------------------------------------------------------------


def answer_logits(
    model: Any, prompt: list[int], answer: list[int], args: Args, width: int
) -> torch.Tensor:
    """Logits ``[width, V]`` predicting each answer token after ``prompt``, zero-padded."""
    logits = model(input_ids=torch.tensor([prompt + answer])).logits[0]
    logits = logits[len(prompt) - 1 : len(prompt) - 1 + len(answer)].float() / args.temperature
    return torch.nn.functional.pad(logits, (0, 0, 0, width - len(answer)))


def sdpo_loss(
    student: Any, teacher: Any, rows: list[Row], args: Args
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SDPO's logit-level loss over a batch of rows: student vs. teacher on the same tokens."""
    width = max(len(r.response_ids) for r in rows)
    student_logits = torch.stack(
        [answer_logits(student, r.prompt_ids, r.response_ids, args, width) for r in rows]
    )
    with torch.no_grad():  # the teacher reads its richer prompt and is never trained
        teacher_logits = torch.stack(
            [
                answer_logits(teacher, r.teacher_prompt_ids, r.response_ids, args, width)
                for r in rows
            ]
        )
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        mask[i, : len(r.response_ids)] = True
        ids[i, : len(r.response_ids)] = torch.tensor(r.response_ids)
    # top-K of the student, tail bucket, divergence, token mean over the answers' tokens
    return distillation_loss(
        student_logits, teacher_logits, mask, None, ids,
        top_k=args.top_k, alpha=args.alpha,
    )  # fmt: skip


# --- 5. the update ----------------------------------------------------------------------------


@torch.no_grad()
def ema_update(teacher: Any, student: Any, tau: float) -> None:
    """θ_teacher ← (1 − τ) θ_teacher + τ θ_student."""
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.lerp_(s.detach().to(t.dtype), tau)


def update(student: Any, teacher: Any, optimizer: Any, rows: list[Row], args: Args) -> dict:
    """One SDPO step on ``rows``: loss, backward, clip, AdamW, EMA. Returns its metrics."""
    loss, stats = sdpo_loss(student, teacher, rows, args)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for p in student.parameters() if p.requires_grad]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
    optimizer.step()
    ema_update(teacher, student, args.teacher_tau)
    return {"loss": float(loss.detach()), "grad_norm": float(grad_norm)} | {
        k: float(v) for k, v in stats.items()
    }


def make_optimizer(student: Any, args: Args) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters (the paper's optimizer)."""
    params = [p for p in student.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)


def make_teacher(student: Any) -> Any:
    """A frozen copy of the student's weights (moved by :func:`ema_update` after each step)."""
    import copy

    return copy.deepcopy(student).eval().requires_grad_(False)


# --- the loop -------------------------------------------------------------------------------


def main(args: Args, model: Any = None, tokenizer: Any = None, env: Any = None) -> list[dict]:
    """Train and return every step's metrics; ``model``, ``tokenizer``, ``env`` replace args'."""
    torch.manual_seed(args.seed)
    if model is None:
        from algorithms.models import load_model

        model, tokenizer = load_model(args.model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    env = env if env is not None else rlrf.make(args.env, **args.env_kwargs)
    model.train()
    policy = HFPolicy(model, tokenizer)
    teacher = make_teacher(model)
    optimizer = make_optimizer(model, args)
    history = []
    for step in range(args.steps):
        groups = sample_groups(env, policy, args, step)
        rewards = [r for g in groups for r in g.rewards if r is not None]
        rows = make_rows(groups, policy, args)
        metrics = {"step": step + 1, "reward_mean": sum(rewards) / max(1, len(rewards))}
        if rows:  # no sibling solved it and the env gave no feedback: nothing to distill
            metrics |= update(model, teacher, optimizer, rows, args)
        history.append(metrics)
        print(
            json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()})
        )
    return history


def parse_args(argv: list[str] | None = None) -> Args:
    """Every field of :class:`Args` as a ``--flag`` (dicts as JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for f in dataclasses.fields(Args):
        kind = json.loads if f.name == "env_kwargs" else type(getattr(Args(), f.name))
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=argparse.SUPPRESS)
    return Args(**vars(parser.parse_args(argv)))


if __name__ == "__main__":
    main(parse_args())
