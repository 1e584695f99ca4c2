"""SDPO: self-distillation policy optimization (Hübotter et al. 2026).

The student π_θ is distilled toward itself conditioned on privileged context: a successful
sibling's solution and/or the environment's feedback on the student's own attempt. One step:

1. Teacher context (:func:`teacher_contexts_for_group`). For rollout i of prompt x, the
   solution is the first OTHER rollout j ≠ i of the group with r_j ≥ ``success_threshold``,
   hidden reasoning (``<think>…</think>``) stripped (:func:`select_solution`); the feedback is
   the environment's feedback on y_i, rendered with :func:`rlrf.render_feedback`. The teacher
   prompt (:func:`build_teacher_messages`) is the original prompt with, appended to its last
   user message, a "Correct solution:" section, a "Feedback from your unsuccessful earlier
   attempt:" section and the instruction "Correctly solve the original question.". The
   student's own attempt y_i is NOT in the context. With neither a solution nor feedback,
   rollout i gets no distillation loss (its context is None: mask it out).
2. The teacher prompt goes through the student's chat template (thinking disabled) and is
   capped at ``teacher_max_prompt_tokens`` TOKENS by :func:`encode_teacher_prompt`, which cuts
   from the left of the prompt body and never loses the instruction or the assistant header
   (:func:`truncate_teacher_prompt`).
3. Teacher distribution q_t = π_teacher(· | c_i, y_<t) on the SAME response tokens y_i, without
   gradient; the teacher weights (EMA, trust region, frozen, live) live in
   :mod:`algorithms.sdpo.teacher`.
4. Top-K distillation (:func:`distillation_loss`): at each response position the indices of
   the K largest STUDENT logits; both distributions are log-softmax over the full vocabulary,
   gathered at those K indices and completed by one tail bucket, the mass outside them,
   computed as logsumexp of the logits outside the K minus the full normalizer
   (:func:`topk_with_tail`), then compared by :func:`divergence`: α = 0 forward KL(q‖p),
   α = 1 reverse KL(p‖q), else the generalized JSD with M = (1−α)p + αq,
   D = (1−α) KL(p‖M) + α KL(q‖M). Per token, ℓ_t = D_t · w_t with the detached importance
   weight w_t = min(exp(log π_θ(y_t) − log π_old(y_t)), ``is_clip``); token mean.
5. Token-level variant (``loss_level="token"``): no logits, only the sampled token. The
   advantage A_t = sg(log q(y_t) − log p(y_t)) (:func:`token_level_advantages`) goes into
   :func:`algorithms.losses.policy_loss` in place of the GRPO advantage; :func:`mixed_advantages`
   gives the paper's Eq. 3, λ · A_GRPO + (1 − λ) · A_SDPO.
6. Monitors: every step logs the teacher-student divergence, the student's entropy on the
   distilled tokens, the share of rollouts with a teacher signal (and the trainer its response
   length and gradient norm); :mod:`algorithms.engine.monitors` warns once, naming the step, on an
   entropy collapse, a length blow-up or a divergence spike, and the run report lists them.

Why the logit-level loss is a policy gradient: for reverse KL over a distribution p_θ,
∇ KL(p‖q) = Σ_ŷ p(ŷ) ∇log p(ŷ) · (log p(ŷ) − log q(ŷ)) (the Σ_ŷ ∇p(ŷ) term vanishes), so
minimizing it follows the policy gradient with per-logit advantage A(ŷ) = log q(ŷ) − log p(ŷ),
summed over every candidate token instead of sampled. The tests check this with autograd.

Departures from the paper and its reference code, and why:

- Solution AND feedback by default: the reference code shows environment feedback only when
  no solution exists (``feedback_only_without_solution=True`` restores that), but the paper's
  ablation found solution + feedback best (48.3 vs 42.6 solution-only).
- Truncation of long teacher prompts drops tokens from the LEFT of the prompt body (the last
  user message before the instruction); the reference code truncates the whole prompt from
  the right, which loses the instruction and the assistant header (a known bug). The system
  prompt and the chat-template header are kept too.
- The section headers are "Correct solution:" and "Feedback from your unsuccessful earlier
  attempt:" (the reference code words the second "The following is feedback from ...").
- The default ``success_threshold`` is 1.0 (pass/fail rewards); the reference config uses 0.5.
- Multi-turn episodes (the paper defines single-turn SDPO only): every assistant turn is
  distilled; turn k's teacher context is the chat up to turn k, then the feedback the env
  returned after turn k and/or a successful sibling episode's FINAL answer (the only one its
  return certifies); the env's messages are prompt tokens only, never trained. Defined
  precisely in :mod:`algorithms.sdpo.contexts` (:func:`turn_teacher_contexts`).
- The feedback on an attempt that succeeded (and still got feedback) is headed "Feedback
  from your earlier attempt:", not "... unsuccessful earlier attempt:".
- Which successful sibling is the solution is an option (``demonstration``: "first", the
  reference code's and the default; "random", seeded; "shortest").
- A rollout whose reward is missing (None) gets no teacher context (it is skipped, as every
  trainer in rlrf skips missing rewards), and is never chosen as a solution.
- A solution whose text is empty after stripping reasoning is skipped in favour of the next
  successful sibling. A response that carries only a closing ``</think>`` (templates that open
  the reasoning block in the prompt) loses everything up to it.
- The tail bucket is exact in float32: logsumexp over the logits outside the top K minus
  the full normalizer, for the student (with gradient) and the teacher. The formula
  log(1 − Σ_k p_k) (rlrf's before issue 18) loses a confident student's tail in float32
  (forward KL was off by up to 16%). With K = V the outside logits are the dtype's most
  negative finite value, so the tail has mass 0 and a finite gradient. (When the K hold
  under half the mass, log(1 − Σ_k p_k) is used: there it is the better conditioned.)
- Each KL is summed as Σ p · φ(log q − log p), φ(x) = eˣ − 1 − x, equal to Σ p log(p/q)
  for two distributions (value and gradient) but free of cancellation: a student within
  1e-4 nats of its teacher keeps ~1e-6 relative precision in float32 instead of ~1%.
- The student log-probs of the K indices are computed as logit − logsumexp(logits) rather
  than through a full [B, T, V] log-softmax, to save memory; the math is identical.
- Mixed advantages at the logit level: Eq. 3 mixes advantages; since the logit-level
  gradient IS a policy gradient with per-logit advantages, mixing the losses
  λ · L_GRPO + (1 − λ) · L_SDPO gives the same combination PROVIDED both share one per-token
  normalizer: the distillation term is weighted token by token as GRPO aggregates
  (:func:`algorithms.losses.aggregation_weights`, GRPO's normalizer over every trained token),
  exactly as the token-level path's mixed advantages are. Rollouts without a teacher signal
  add 0 to the SDPO term but count in its normalizer. (Before issue 18 the logit-level SDPO
  term was divided by the teacher rows' tokens only, weighting it up by all/teacher tokens.)
- Token-level SDPO off-policy: the advantage A_t goes through GRPO's clipped surrogate
  −min(ρ_t A_t, clip(ρ_t, 1 − ε_low, 1 + ε_high) A_t) rather than the plain −A_t log p(y_t) of
  the method's statement. Decided (issue 18) to keep it: the token-level variant is the
  paper's "drop-in replacement for GRPO by swapping the advantage", Eq. 3 mixes A_GRPO and
  A_SDPO inside that one surrogate, and later mini-batches (and epochs) need an importance
  correction like the logit level's w_t. On-policy (ρ = 1, the first mini-batch) the two
  coincide; off-policy a token whose ratio left [1 − ε_low, 1 + ε_high] on the side its
  advantage pushes gets no gradient, and every other token −A_t ρ_t ∇log p(y_t).

The files follow the method: :mod:`~algorithms.sdpo.contexts` (steps 1-2),
:mod:`~algorithms.sdpo.teacher` (step 3's weights), :mod:`~algorithms.sdpo.loss` (steps 4-5,
pure functions), :mod:`~algorithms.sdpo.objective` (what the trainer calls: rows with
teacher prompts, chunked teacher scoring, the loss of a micro-batch, the EMA update). The
options are :class:`SDPOConfig` (:mod:`~algorithms.sdpo.config`, with the presets ``sdpo`` and
``sdpo-srf``, registered as any algorithm is). Importing this package does not import torch:
the torch-bearing names load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from algorithms.sdpo.config import LossLevel, SDPOConfig, SDPOTrainConfig, TeacherMode
from algorithms.sdpo.contexts import (
    FEEDBACK_HEADER,
    SOLUTION_HEADER,
    SUCCESS_FEEDBACK_HEADER,
    TEACHER_INSTRUCTION,
    build_teacher_messages,
    encode_teacher_prompt,
    remove_reasoning,
    select_solution,
    teacher_contexts_for_group,
    truncate_teacher_prompt,
    turn_teacher_contexts,
)

# torch-bearing names, imported on first use (PEP 562) so the configs stay torch-free
_LAZY = {
    "distillation_loss": "algorithms.sdpo.loss",
    "divergence": "algorithms.sdpo.loss",
    "mixed_advantages": "algorithms.sdpo.loss",
    "student_topk_indices": "algorithms.sdpo.loss",
    "token_level_advantages": "algorithms.sdpo.loss",
    "topk_with_tail": "algorithms.sdpo.loss",
    "SDPOObjective": "algorithms.sdpo.objective",
    "Teacher": "algorithms.sdpo.teacher",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'algorithms.sdpo' has no attribute {name!r}")


__all__ = [
    "FEEDBACK_HEADER",
    "SOLUTION_HEADER",
    "SRF",
    "SUCCESS_FEEDBACK_HEADER",
    "TEACHER_INSTRUCTION",
    "LossLevel",
    "SDPOConfig",
    "SDPOObjective",
    "SDPOTrainConfig",
    "Teacher",
    "TeacherMode",
    "build_teacher_messages",
    "distillation_loss",
    "divergence",
    "encode_teacher_prompt",
    "mixed_advantages",
    "remove_reasoning",
    "select_solution",
    "student_topk_indices",
    "teacher_contexts_for_group",
    "token_level_advantages",
    "topk_with_tail",
    "train",
    "truncate_teacher_prompt",
    "turn_teacher_contexts",
]

SRF = SDPOConfig.successful_rollout
"""The successful-rollout-as-feedback variant (``rlrf train --algo sdpo-srf``): ``SRF()`` is
``SDPOConfig.successful_rollout()``; keyword arguments override fields."""


def train(env: Any = None, model: Any = None, config: Any = None, **kwargs: Any) -> Any:
    """Train with SDPO; see :func:`algorithms.engine.trainer.train`.

    ``config`` is an SDPOConfig (e.g. ``SDPOConfig.successful_rollout()``, which brings the
    ``sdpo-srf`` preset's learning rate and warm-up), an SDPOTrainConfig, a YAML file, or
    None for the ``sdpo`` preset; ``kwargs`` override any config field by name (``lr=1e-5``).
    From the shell: ``python -m algorithms.sdpo --env rlrf/Code-v0 --model PATH ...``.
    """
    from algorithms.engine.trainer import train as _train

    return _train(env, model, config, algorithm="sdpo", **kwargs)
