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
only the first turn of an episode, teacher prompts and feedback not capped in length (the
trainer cuts the question from the left at ``teacher_max_prompt_tokens`` and the feedback at
``feedback_max_chars``), the loss in float64 by its textbook formula (the trainer's float32
version guards against cancellation), no evaluation, checkpoints or logging.

Steps 2-5 are written out here, importing nothing from ``algorithms.sdpo`` or
``algorithms.losses`` (sampling and grading come from the library); the first update equals
the trainer's (``tests/algorithms/sdpo/test_sdpo_minimal.py``), and so do the teacher chats.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import re
from dataclasses import dataclass, field
from typing import Any

import torch

import rlrf
from algorithms.sampling.hf import HFPolicy, SamplingParams
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
    success_threshold: float = 1.0
    """A sibling answer with at least this reward is shown to the teacher as a solution."""


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


def teacher_messages(group: Group, args: Args) -> list[list[dict] | None]:
    """Each answer's teacher chat: its question + a solved sibling's answer + its feedback."""
    rewards = group.rewards
    out: list[list[dict] | None] = []
    for i, traj in enumerate(group.trajectories):
        if rewards[i] is None:  # the env could not grade it: nothing to distill
            out.append(None)
            continue
        # the first OTHER answer that succeeded, its <think> blocks removed
        solved = [re.sub(r"<think>.*?</think>", "", t.response, flags=re.S).strip()
                  for j, (t, r) in enumerate(zip(group.trajectories, rewards, strict=True))
                  if j != i and r is not None and r >= args.success_threshold]  # fmt: skip
        solution = next((text for text in solved if text), None)
        feedback = "\n\n".join(f.text for f in traj.turns[0].feedback if f.text)
        sections = []
        if solution:
            sections.append(f"Correct solution:\n\n{solution}")
        if feedback.strip():
            won = traj.success or rewards[i] >= args.success_threshold
            header = "Feedback from your earlier attempt:" if won else (
                "Feedback from your unsuccessful earlier attempt:")  # fmt: skip
            sections.append(f"{header}\n\n{feedback}")
        chat = [dict(m) for m in traj.prompt]
        last_user = max(k for k, m in enumerate(chat) if m["role"] == "user")
        end = "\n\nCorrectly solve the original question."
        chat[last_user]["content"] += "\n\n" + "\n\n".join(sections) + end
        out.append(chat if sections else None)  # None: no solved sibling and no feedback
    return out


@dataclass
class Row:
    """One answer to distill: the student's prompt, the answer, the teacher's prompt."""

    prompt_ids: list[int]
    response_ids: list[int]
    teacher_prompt_ids: list[int]


def make_rows(groups: list[Group], policy: HFPolicy, args: Args) -> list[Row]:
    """One row per graded answer that has a teacher context (a solution and/or feedback)."""
    rows = []
    for group in groups:
        for traj, chat in zip(group.trajectories, teacher_messages(group, args), strict=True):
            if chat is None or not traj.turns[0].response_token_ids:
                continue
            text = policy.tokenizer.apply_chat_template(
                chat, tokenize=False, add_generation_prompt=True, enable_thinking=False
            )
            teacher_ids = policy.tokenizer(text, add_special_tokens=False)["input_ids"]
            rows.append(
                Row(policy.encode(traj.prompt), list(traj.turns[0].response_token_ids), teacher_ids)
            )
    return rows


# --- 3-4. the loss ----------------------------------------------------------------------------


def answer_logits(
    model: Any, prompt: list[int], answer: list[int], args: Args, width: int
) -> torch.Tensor:
    """Logits ``[width, V]`` (float64) predicting each answer token after ``prompt``, 0-padded."""
    logits = model(input_ids=torch.tensor([prompt + answer])).logits[0]
    logits = logits[len(prompt) - 1 : len(prompt) - 1 + len(answer)].double() / args.temperature
    return torch.nn.functional.pad(logits, (0, 0, 0, width - len(answer)))


def top_k_and_tail(logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """log-probs ``[..., K+1]``: at the K indices, then the log of the mass outside them."""
    logp = torch.log_softmax(logits, dim=-1)
    tail = torch.logsumexp(logp.scatter(-1, idx, float("-inf")), dim=-1, keepdim=True)
    return torch.cat([logp.gather(-1, idx), tail], dim=-1)


def kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p‖q) = Σ p (log p − log q) over the last dim; terms with p = 0 count 0."""
    terms = logp.exp() * (logp - logq)
    return torch.where(logp > float("-inf"), terms, torch.zeros_like(terms)).sum(-1)


def sdpo_loss(
    student: Any, teacher: Any, rows: list[Row], args: Args
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SDPO's logit-level loss over a batch of rows: student vs. teacher on the same tokens."""
    width = max(len(r.response_ids) for r in rows)
    student_logits = torch.stack(
        [answer_logits(student, r.prompt_ids, r.response_ids, args, width) for r in rows]
    )
    with torch.no_grad():  # the teacher reads its richer prompt and is never trained
        teacher_logits = torch.stack([answer_logits(
            teacher, r.teacher_prompt_ids, r.response_ids, args, width) for r in rows])  # fmt: skip
        idx = student_logits.topk(min(args.top_k, student_logits.shape[-1]), dim=-1).indices
    p = top_k_and_tail(student_logits, idx)  # student, over its top-K + tail
    q = top_k_and_tail(teacher_logits, idx)  # teacher, over the same K + tail
    a = args.alpha
    if a == 0.0:
        per_token = kl(q, p)  # forward KL
    elif a == 1.0:
        per_token = kl(p, q)  # reverse KL
    else:  # generalized JSD with M = (1 − α) p + α q
        m = torch.logsumexp(torch.stack([p + math.log(1 - a), q + math.log(a)]), dim=0)
        per_token = (1 - a) * kl(p, m) + a * kl(q, m)
    mask = torch.arange(width)[None, :] < torch.tensor([len(r.response_ids) for r in rows])[:, None]
    # token mean over every answer token of the batch (on-policy: importance weight 1)
    loss = torch.where(mask, per_token, 0.0).sum() / mask.sum()
    return loss, {"divergence": loss.detach()}


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
