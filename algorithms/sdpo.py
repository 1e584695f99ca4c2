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
   :mod:`algorithms.teacher`.
4. Top-K distillation (:func:`distillation_loss`): at each response position the indices of
   the K largest STUDENT logits; both distributions are log-softmax over the full vocabulary,
   gathered at those K indices and completed by one tail bucket log(1 − Σ_k p_k)
   (:func:`topk_with_tail`), then compared by :func:`divergence`: α = 0 forward KL(q‖p),
   α = 1 reverse KL(p‖q), else the generalized JSD with M = (1−α)p + αq,
   D = (1−α) KL(p‖M) + α KL(q‖M). Per token, ℓ_t = D_t · w_t with the detached importance
   weight w_t = min(exp(log π_θ(y_t) − log π_old(y_t)), ``is_clip``); token mean.
5. Token-level variant (``loss_level="token"``): no logits, only the sampled token. The
   advantage A_t = sg(log q(y_t) − log p(y_t)) (:func:`token_level_advantages`) goes into
   :func:`algorithms.grpo.policy_loss` in place of the GRPO advantage; :func:`mixed_advantages`
   gives the paper's Eq. 3, λ · A_GRPO + (1 − λ) · A_SDPO.

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
- A rollout whose reward is missing (None) gets no teacher context (it is skipped, as every
  trainer in rlrf skips missing rewards), and is never chosen as a solution.
- A solution whose text is empty after stripping reasoning is skipped in favour of the next
  successful sibling. A response that carries only a closing ``</think>`` (templates that open
  the reasoning block in the prompt) loses everything up to it.
- The tail bucket's log-mass is clamped to at least log(machine-eps) of the dtype, so that
  K = V (no tail) stays finite; the error is below the dtype's resolution.
- The student log-probs of the K indices are computed as logit − logsumexp(logits) rather
  than through a full [B, T, V] log-softmax, to save memory; the math is identical.
- Mixed advantages at the logit level: Eq. 3 mixes advantages; since the logit-level
  gradient IS a policy gradient with per-logit advantages, mixing the losses
  λ · L_GRPO + (1 − λ) · L_SDPO gives the same combination. Rollouts without a teacher
  signal get only the GRPO part there.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from algorithms.grpo import Aggregation, _check_choice, aggregate
from algorithms.teacher import TeacherMode
from rlrf.errors import ConfigError
from rlrf.feedback import render_feedback

if TYPE_CHECKING:
    from rlrf.env import Message
    from rlrf.trajectory import Group

__all__ = [
    "FEEDBACK_HEADER",
    "SOLUTION_HEADER",
    "SRF",
    "TEACHER_INSTRUCTION",
    "SDPOConfig",
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
    "truncate_teacher_prompt",
]

LossLevel = Literal["logit", "token"]


# --- configuration ----------------------------------------------------------------------


@dataclass
class SDPOConfig:
    """The options of SDPO (teacher context, teacher weights, distillation loss).

    Presets: :meth:`rich_feedback` (the paper's code/tool-use setting) and
    :meth:`successful_rollout` (no environment feedback: a successful sibling's solution is
    the only teacher context; also exported as :data:`SRF`).
    """

    success_threshold: float = 1.0
    """A sibling rollout with reward >= this is a correct solution (reference config: 0.5)."""

    use_solution: bool = True
    """Put the first other successful rollout of the group into the teacher context."""

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
    0.6B)."""

    feedback_max_chars: int = 2000
    """Cap on the rendered feedback text in characters (a visible truncation marker is added)."""

    def __post_init__(self) -> None:
        _check_choice("teacher", self.teacher, TeacherMode)
        _check_choice("loss_level", self.loss_level, LossLevel)
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
        """Return the successful-rollout variant: no env feedback, JSD, K = 100, τ = 0.05.

        It needs nothing but a scalar reward, so it runs on any RLVR environment.
        """
        return cls(
            **{
                "use_feedback": False,
                "use_solution": True,
                "alpha": 0.5,
                "top_k": 100,
                "teacher_tau": 0.05,
                **overrides,
            }
        )


SRF = SDPOConfig.successful_rollout
"""The successful-rollout-as-feedback variant (``rlrf train --algo sdpo-srf``): ``SRF()`` is
``SDPOConfig.successful_rollout()``; keyword arguments override fields."""


# --- 1. teacher context -----------------------------------------------------------------

SOLUTION_HEADER = "Correct solution:"
FEEDBACK_HEADER = "Feedback from your unsuccessful earlier attempt:"
TEACHER_INSTRUCTION = "Correctly solve the original question."
_INSTRUCTION_SUFFIX = "\n\n" + TEACHER_INSTRUCTION

_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL)


def remove_reasoning(text: str) -> str:
    r"""Strip hidden-reasoning blocks (``<think>…</think>``) and surrounding whitespace.

    A response holding only a closing ``</think>`` (chat templates that open the block in the
    prompt) loses everything up to and including it.

    Example:
        >>> remove_reasoning("<think>hmm</think>\nprint(1)")
        'print(1)'

    """
    text = _THINK_BLOCK.sub("", text)
    if "</think>" in text and "<think>" not in text:
        text = text.rpartition("</think>")[2]
    return text.strip()


def select_solution(
    responses: Sequence[str],
    rewards: Sequence[float | None],
    i: int,
    threshold: float = 1.0,
    *,
    strip: bool = True,
) -> str | None:
    """Return the first OTHER successful response of the group as rollout ``i``'s solution.

    A response j ≠ i counts when ``rewards[j] >= threshold`` (None never counts). With
    ``strip``, reasoning blocks are removed (:func:`remove_reasoning`) and a response that is
    then empty is skipped. Returns None when no sibling qualifies.

    Example:
        >>> select_solution(["a", "b", "c"], [1.0, 0.0, 1.0], 0)
        'c'

    """
    if len(responses) != len(rewards):
        raise ValueError(f"{len(responses)} responses but {len(rewards)} rewards")
    for j, (response, reward) in enumerate(zip(responses, rewards, strict=True)):
        if j == i or reward is None or reward < threshold:
            continue
        text = remove_reasoning(response) if strip else response
        if text.strip():
            return text
    return None


def build_teacher_messages(
    prompt: Sequence[Message],
    *,
    solution: str | None,
    feedback: str | None,
    config: SDPOConfig | None = None,
) -> list[Message] | None:
    """Build the teacher's chat: the prompt with solution/feedback sections and the instruction.

    The config's switches are applied here: ``use_solution``, ``use_feedback`` and
    ``feedback_only_without_solution`` decide which of the given texts are shown; empty texts
    count as absent. The sections and the instruction are appended to the LAST user message::

        {original content}

        Correct solution:

        {solution}

        Feedback from your unsuccessful earlier attempt:

        {feedback}

        Correctly solve the original question.

    Returns new dicts (the prompt is not modified), or None when neither a solution nor
    feedback is shown: that rollout gets no distillation loss.
    """
    cfg = config or SDPOConfig()
    sol = solution if cfg.use_solution and solution and solution.strip() else None
    fb = feedback if cfg.use_feedback and feedback and feedback.strip() else None
    if sol is not None and cfg.feedback_only_without_solution:
        fb = None
    if sol is None and fb is None:
        return None
    messages = [dict(m) for m in prompt]
    users = [k for k, m in enumerate(messages) if m["role"] == "user"]
    if not users:
        raise ValueError(
            f"the prompt has no user message (roles: {[m['role'] for m in messages]}); the "
            "teacher sections are appended to the last user message"
        )
    content = messages[users[-1]]["content"]
    if sol is not None:
        content += f"\n\n{SOLUTION_HEADER}\n\n{sol}"
    if fb is not None:
        content += f"\n\n{FEEDBACK_HEADER}\n\n{fb}"
    messages[users[-1]]["content"] = content + _INSTRUCTION_SUFFIX
    return messages  # type: ignore[return-value]


def teacher_contexts_for_group(
    group: Group, config: SDPOConfig | None = None
) -> list[list[Message] | None]:
    """Build the teacher chat of every rollout of one group (None: no teacher signal).

    Uses each trajectory's prompt, its final response as a candidate solution for its
    siblings, and the feedback on its FIRST response rendered by :func:`rlrf.render_feedback`
    (capped at ``feedback_max_chars``): the trainer distills the first turn, and f_i must be
    the feedback on the response y_i being distilled. Multi-turn trajectories get the context
    of their first prompt.
    """
    cfg = config or SDPOConfig()
    responses = [t.response for t in group.trajectories]
    rewards = group.rewards
    contexts: list[list[Message] | None] = []
    for i, traj in enumerate(group.trajectories):
        if rewards[i] is None:
            contexts.append(None)
            continue
        solution = None
        if cfg.use_solution:
            solution = select_solution(
                responses, rewards, i, cfg.success_threshold, strip=cfg.strip_reasoning
            )
        feedback = None
        if cfg.use_feedback:
            first = traj.turns[0].feedback if traj.turns else ()
            feedback = render_feedback(first, max_chars=cfg.feedback_max_chars)
        contexts.append(
            build_teacher_messages(traj.prompt, solution=solution, feedback=feedback, config=cfg)
        )
    return contexts


# --- 2. teacher prompt tokens -----------------------------------------------------------


def truncate_teacher_prompt(
    token_ids: Sequence[int], body_span: tuple[int, int], max_tokens: int
) -> list[int]:
    """Cap a teacher prompt at ``max_tokens`` by dropping tokens from the LEFT of its body.

    Args:
        token_ids: the whole templated teacher prompt, ending with the assistant header.
        body_span: ``(start, end)`` token indices of the truncatable body: the last user
            message's text before the instruction (:func:`encode_teacher_prompt` finds it).
            Tokens before ``start`` (BOS, system prompt, template header) and from ``end`` on
            (instruction, end of turn, assistant header) are always kept.
        max_tokens: the cap (``SDPOConfig.teacher_max_prompt_tokens``).

    Raises:
        ConfigError: when even an empty body would not fit.

    Example:
        >>> truncate_teacher_prompt([0, 1, 2, 3, 4, 5, 9], (1, 6), 4)
        [0, 4, 5, 9]

    """
    ids = list(token_ids)
    start, end = body_span
    if not 0 <= start <= end <= len(ids):
        raise ValueError(f"body_span {body_span} is not within the {len(ids)} prompt tokens")
    excess = len(ids) - max_tokens
    if excess <= 0:
        return ids
    if excess > end - start:
        raise ConfigError(
            f"the teacher prompt has {len(ids) - (end - start)} tokens outside its truncatable "
            f"body (template, system prompt, instruction), more than teacher_max_prompt_tokens="
            f"{max_tokens}; raise teacher_max_prompt_tokens"
        )
    return ids[:start] + ids[start + excess :]


def _body_char_span(text: str, messages: Sequence[Message]) -> tuple[int, int]:
    user = [m for m in messages if m["role"] == "user"][-1]["content"]
    if not user.endswith(_INSTRUCTION_SUFFIX):
        raise ValueError(
            "the last user message does not end with the teacher instruction; build the "
            "messages with build_teacher_messages()"
        )
    body = user[: -len(_INSTRUCTION_SUFFIX)]
    for candidate in (body, body.strip()):
        start = text.rfind(candidate + _INSTRUCTION_SUFFIX)
        if start >= 0:
            return start, start + len(candidate)
    raise ValueError(
        "could not find the teacher prompt's last user message in the chat template's output; "
        "the template rewrites message content, so the body to truncate cannot be located"
    )


def encode_teacher_prompt(
    tokenizer: Any,
    messages: Sequence[Message],
    *,
    max_tokens: int,
    **chat_template_kwargs: Any,
) -> list[int]:
    """Apply the chat template to a teacher chat, tokenize it, and cap it at ``max_tokens``.

    The text is rendered with ``add_generation_prompt=True`` (pass ``enable_thinking=False``
    and friends through ``chat_template_kwargs``) and tokenized without adding special tokens,
    as ``apply_chat_template(tokenize=True)`` does. The body (the last user message up to the
    instruction) is located in the rendered text and mapped to tokens through the fast
    tokenizer's offsets; tokens straddling its edges are kept. A slow tokenizer is encoded in
    three pieces (head, body, tail) instead. Then :func:`truncate_teacher_prompt` applies.
    """
    text = tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=True, **chat_template_kwargs
    )
    c0, c1 = _body_char_span(text, messages)
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
        start = sum(1 for s, _ in offsets if s < c0)
        end = start
        while end < len(offsets) and offsets[end][1] <= c1:
            end += 1
    else:
        pieces = [text[:c0], text[c0:c1], text[c1:]]
        head, body, tail = (tokenizer.encode(p, add_special_tokens=False) for p in pieces)
        ids, start, end = head + body + tail, len(head), len(head) + len(body)
    return truncate_teacher_prompt(ids, (start, end), max_tokens)


# --- 4. top-K logit distillation -------------------------------------------------------


def student_topk_indices(student_logits: Tensor, k: int) -> Tensor:
    """Return the indices [..., K] of the K largest student logits (no gradient).

    K is capped at the vocabulary size.
    """
    with torch.no_grad():
        return torch.topk(student_logits, min(k, student_logits.shape[-1]), dim=-1).indices


def _log1mexp(x: Tensor) -> Tensor:
    """Compute log(1 − exp(x)) for x < 0, accurately on both sides of −log 2 (Mächler 2012)."""
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def topk_with_tail(topk_logprobs: Tensor) -> Tensor:
    """Append the tail bucket log(1 − Σ_k p_k) to log-probs gathered at K indices: [..., K+1].

    ``topk_logprobs`` must be normalized over the full vocabulary (log-softmax, then gather),
    so exp of the result sums to one. The tail's log-mass is clamped to at least
    log(eps of the dtype): with K = V (no tail) it stays finite, and gradient flows through
    the K entries and the tail alike.
    """
    eps = torch.finfo(topk_logprobs.dtype).eps
    log_mass = torch.logsumexp(topk_logprobs, dim=-1, keepdim=True)
    tail = _log1mexp(log_mass.clamp(max=math.log1p(-eps)))
    return torch.cat([topk_logprobs, tail], dim=-1)


def _kl(logp: Tensor, logq: Tensor) -> Tensor:
    """KL(p‖q) over the last dim from log-probs; terms with p = 0 are exactly 0."""
    p = logp.exp()
    return torch.where(p > 0, p * (logp - logq), torch.zeros_like(p)).sum(-1)


def divergence(student_logprobs: Tensor, teacher_logprobs: Tensor, alpha: float) -> Tensor:
    """Divergence between student p and teacher q over the last dim, given log-probs.

    α = 0: forward KL(q‖p); α = 1: reverse KL(p‖q); otherwise the generalized Jensen–Shannon
    divergence with M = (1−α) p + α q, D = (1−α) KL(p‖M) + α KL(q‖M) (α = 0.5: JSD).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if alpha == 0.0:
        return _kl(teacher_logprobs, student_logprobs)
    if alpha == 1.0:
        return _kl(student_logprobs, teacher_logprobs)
    log_m = torch.logsumexp(
        torch.stack([student_logprobs + math.log(1.0 - alpha), teacher_logprobs + math.log(alpha)]),
        dim=0,
    )
    return (1.0 - alpha) * _kl(student_logprobs, log_m) + alpha * _kl(teacher_logprobs, log_m)


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    response_mask: Tensor,
    old_logprobs: Tensor | None = None,
    sampled_ids: Tensor | None = None,
    *,
    teacher_topk_logprobs: Tensor | None = None,
    topk_indices: Tensor | None = None,
    teacher_sampled_logprobs: Tensor | None = None,
    top_k: int = 20,
    alpha: float = 1.0,
    is_clip: float = 2.0,
    aggregation: Aggregation = "token_mean",
    normalizer: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Compute SDPO's top-K logit distillation loss of one (micro-)batch.

    Args:
        student_logits: [B, T, V] student logits at the response positions, with gradient
            (position t predicts response token t).
        teacher_logits: [B, T, V] teacher logits at the same response tokens (detached here),
            or None when ``teacher_topk_logprobs`` is given.
        response_mask: [B, T] 1/True on response tokens of rollouts with a teacher context.
        old_logprobs: [B, T] log π_old(y_t) of the sampler, for the importance weight; None
            means on-policy (w = 1).
        sampled_ids: [B, T] the response tokens y_t; needed with ``old_logprobs`` and for the
            log-prob-gap statistic.
        teacher_topk_logprobs: [B, T, K] teacher log-softmax over the FULL vocabulary
            gathered at ``topk_indices`` (the chunked path: full teacher logits never kept).
        topk_indices: [B, T, K] the student's top-K indices (:func:`student_topk_indices`);
            computed here from ``student_logits`` when None.
        teacher_sampled_logprobs: [B, T] log q(y_t), for the log-prob-gap statistic when the
            teacher's full logits are not passed.
        top_k: K, when ``topk_indices`` is None.
        alpha: divergence, see :func:`divergence`.
        is_clip: upper clip of the importance weight.
        aggregation: see :func:`algorithms.grpo.aggregate` (SDPO uses ``token_mean``).
        normalizer: the WHOLE batch's normalizer, as in :func:`algorithms.grpo.policy_loss`.

    Returns:
        ``(loss, stats)`` with detached scalars aggregated like the loss: ``divergence`` (mean
        D_t, unweighted), ``is_weight`` (mean w_t), ``teacher_tail_mass`` (mean teacher mass
        outside the K indices), and ``logprob_gap`` (mean log q(y_t) − log p(y_t)) when the
        sampled ids and the teacher's log-prob of them are available.

    """
    if student_logits.ndim != 3 or response_mask.shape != student_logits.shape[:2]:
        raise ValueError(
            f"student_logits must be [B, T, V] and response_mask [B, T]; got "
            f"{tuple(student_logits.shape)} and {tuple(response_mask.shape)}"
        )
    m = response_mask.bool()
    # bf16/fp16 logits are upcast: log-softmax and the tail's 1 − Σp need float32 at least.
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    logits = student_logits.to(dtype)
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)
    idx = topk_indices if topk_indices is not None else student_topk_indices(logits, top_k)
    student_topk = logits.gather(-1, idx) - lse

    teacher_lp_y: Tensor | None = teacher_sampled_logprobs
    with torch.no_grad():
        if teacher_topk_logprobs is not None:
            if teacher_topk_logprobs.shape != idx.shape:
                raise ValueError(
                    f"teacher_topk_logprobs {tuple(teacher_topk_logprobs.shape)} must match the "
                    f"top-K indices {tuple(idx.shape)}"
                )
            teacher_topk = teacher_topk_logprobs.to(dtype)
        elif teacher_logits is not None:
            if teacher_logits.shape != student_logits.shape:
                raise ValueError(
                    f"teacher_logits {tuple(teacher_logits.shape)} must have the student's "
                    f"shape {tuple(student_logits.shape)}"
                )
            t_logits = teacher_logits.detach().to(dtype)
            t_lse = torch.logsumexp(t_logits, dim=-1, keepdim=True)
            teacher_topk = t_logits.gather(-1, idx) - t_lse
            if sampled_ids is not None and teacher_lp_y is None:
                teacher_lp_y = (t_logits.gather(-1, sampled_ids[..., None]) - t_lse)[..., 0]
        else:
            raise ValueError("pass either teacher_logits or teacher_topk_logprobs")
        teacher_full = topk_with_tail(teacher_topk)

    student_full = topk_with_tail(student_topk)
    per_token = divergence(student_full, teacher_full, alpha)

    student_lp_y = None
    if sampled_ids is not None:
        student_lp_y = (logits.gather(-1, sampled_ids[..., None]) - lse)[..., 0].detach()
    if old_logprobs is None:
        weight = torch.ones_like(per_token)
    else:
        if student_lp_y is None:
            raise ValueError("old_logprobs needs sampled_ids to compute the importance weight")
        log_w = torch.where(m, student_lp_y - old_logprobs.to(dtype), torch.zeros_like(per_token))
        weight = torch.exp(log_w).clamp(max=is_clip)
    zeros = torch.zeros_like(per_token)
    loss = aggregate(
        torch.where(m, per_token, zeros) * torch.where(m, weight, zeros),
        m,
        aggregation,
        normalizer,
    )

    with torch.no_grad():
        stats = {
            "divergence": aggregate(per_token.detach(), m, aggregation, normalizer),
            "is_weight": aggregate(weight, m, aggregation, normalizer),
            "teacher_tail_mass": aggregate(teacher_full[..., -1].exp(), m, aggregation, normalizer),
        }
        if student_lp_y is not None and teacher_lp_y is not None:
            gap = teacher_lp_y.to(dtype) - student_lp_y
            stats["logprob_gap"] = aggregate(gap, m, aggregation, normalizer)
    return loss, stats


# --- 5. token-level variant and mixed advantages ----------------------------------------


def token_level_advantages(teacher_logprobs: Tensor, student_logprobs: Tensor) -> Tensor:
    """Per-token SDPO advantage A_t = sg(log q(y_t) − log p(y_t)) on the sampled tokens: [B, T].

    Feed it to :func:`algorithms.grpo.policy_loss` as ``advantages`` (with the rollout's
    mask): that is the token-level SDPO loss −A_t · log p(y_t) (with PPO's ratio and clip
    when the mini-batch is off-policy), a drop-in replacement for GRPO's advantage.
    """
    adv = teacher_logprobs.detach() - student_logprobs.detach()
    return adv.to(torch.promote_types(adv.dtype, torch.float32))


def mixed_advantages(
    grpo_adv: Tensor,
    sdpo_adv: Tensor,
    lam: float,
    *,
    teacher_mask: Tensor | None = None,
) -> Tensor:
    """Return the paper's Eq. 3: λ · A_GRPO + (1 − λ) · A_SDPO, per token: [B, T].

    Args:
        grpo_adv: [B] per-rollout or [B, T] GRPO advantages.
        sdpo_adv: [B, T] from :func:`token_level_advantages`.
        lam: λ in [0, 1]; 0 is pure SDPO, 1 pure GRPO.
        teacher_mask: [B] or [B, T], False where a rollout has no teacher context: the SDPO
            term is 0 there (rather than whatever the scoring produced), leaving λ · A_GRPO.

    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    g = grpo_adv[:, None] if grpo_adv.ndim == 1 else grpo_adv
    s = sdpo_adv
    if teacher_mask is not None:
        tm = teacher_mask[:, None] if teacher_mask.ndim == 1 else teacher_mask
        s = torch.where(tm.bool(), s, torch.zeros_like(s))
    return lam * g.to(s.dtype) + (1.0 - lam) * s


# --- entry points ------------------------------------------------------------------------


def train(env: Any = None, model: Any = None, config: Any = None, **kwargs: Any) -> Any:
    """Train with SDPO; see :func:`algorithms.trainer.train`.

    ``config`` is an SDPOConfig (e.g. ``SDPOConfig.successful_rollout()``) or an
    SDPOTrainConfig; ``kwargs`` override any config field by name (``lr=1e-5``).
    From the shell: ``python -m algorithms.sdpo --env rlrf/Code-v0 --model PATH ...``.
    """
    from algorithms.trainer import train as _train

    return _train(env, model, config, algorithm="sdpo", **kwargs)


if __name__ == "__main__":
    import sys

    from algorithms.cli import main

    sys.exit(main(algo="sdpo"))
