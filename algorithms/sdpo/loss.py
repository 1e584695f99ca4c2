"""SDPO's pure loss functions: top-K logit distillation, token-level and mixed advantages.

Steps 4 and 5 of the method (see :mod:`algorithms.sdpo`); functions of tensors only.
:func:`distillation_loss`: at each response position the indices of the K largest STUDENT
logits; both distributions log-softmax over the full vocabulary, gathered at those K indices
and completed by a tail bucket holding the mass outside them (:func:`topk_with_tail`: the
logsumexp of the logits outside the K indices minus the full normalizer, exact in float32
however confident the distribution), compared by :func:`divergence` (α = 0 forward KL(q‖p),
α = 1 reverse KL(p‖q), else the generalized JSD); per token ℓ_t = D_t · w_t with the detached
importance weight w_t = min(ρ_t, ``is_clip``); token mean. :func:`token_level_advantages` and
:func:`mixed_advantages` give the token-level variant and the paper's Eq. 3 for
:func:`algorithms.losses.policy_loss`; :func:`entropy_from_logits` is the student-entropy
monitor.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from algorithms.grpo import Aggregation, aggregate

__all__ = [
    "distillation_loss",
    "divergence",
    "entropy_from_logits",
    "mixed_advantages",
    "student_topk_indices",
    "token_level_advantages",
    "topk_with_tail",
]


# --- 4. top-K logit distillation -------------------------------------------------------


def student_topk_indices(student_logits: Tensor, k: int) -> Tensor:
    """Return the indices [..., K] of the K largest student logits (no gradient).

    K is capped at the vocabulary size.
    """
    with torch.no_grad():
        return torch.topk(student_logits, min(k, student_logits.shape[-1]), dim=-1).indices


def topk_with_tail(logits: Tensor, indices: Tensor, lse: Tensor | None = None) -> Tensor:
    """Return log-probs at the K ``indices`` plus one tail bucket: [..., K+1], from full logits.

    Entry k is ``logits[indices[k]] − lse``; the last is the log of the mass OUTSIDE the
    indices, ``logsumexp(logits outside the indices) − lse``, so exp of the result sums to
    one. ``lse`` is the full normalizer ``logsumexp(logits)`` ([..., 1], computed when None;
    pass zeros when ``logits`` already are log-softmax values). Gradient flows through the
    gather, the tail and ``lse`` alike.

    Why not log(1 − Σ_k p_k): for a confident distribution Σ_k p_k rounds to 1 in float32
    (tail masses below ~6e-8 vanish), and a forward KL weighs exactly that tail by the
    teacher's mass; the logsumexp over the rest is exact to the dtype's relative precision.
    The K entries are filled with the dtype's most negative finite value before the
    logsumexp (not −inf), so with K = V the tail's log-mass is a huge negative finite number
    (mass 0) and no NaN reaches the gradient. Memory: one extra copy of ``logits`` (the
    caller's chunk), never of a whole batch's.

    Example:
        >>> x = torch.tensor([[30.0, 0.0, -1.0, -2.0]])  # p_0 = 1 − 2e-13 in float32
        >>> full = topk_with_tail(x, torch.tensor([[0]]))
        >>> round(float(full[0, 1]), 3)  # log(e^0 + e^-1 + e^-2) − 30.000...: log-tail
        -29.592

    """
    if lse is None:
        lse = torch.logsumexp(logits, dim=-1, keepdim=True)
    topk = logits.gather(-1, indices) - lse
    outside = logits.scatter(-1, indices, torch.finfo(logits.dtype).min)
    tail = torch.logsumexp(outside, dim=-1, keepdim=True) - lse
    # When the K hold under half the mass, log(1 − Σ_k p_k) is the better conditioned of the
    # two (the subtraction above rounds at the scale of lse); both are the same function
    log_mass = torch.logsumexp(topk, dim=-1, keepdim=True)
    half = -math.log(2.0)
    small = torch.log1p(-torch.exp(log_mass.clamp(max=half)))
    return torch.cat([topk, torch.where(log_mass < half, small, tail)], dim=-1)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy H(p) = logsumexp(x) − Σ_v p_v x_v of softmax(logits) over the last dim: [...].

    Used as the student-entropy monitor on the logits the loss already computes (no
    gradient wanted: call it under ``torch.no_grad``).
    """
    x = logits.to(torch.promote_types(logits.dtype, torch.float32))
    lse = torch.logsumexp(x, dim=-1)
    return lse - (torch.softmax(x, dim=-1) * x).sum(-1)


def _kl(logp: Tensor, logq: Tensor) -> Tensor:
    """KL(p‖q) over the last dim from log-probs; terms with p = 0 are exactly 0.

    Summed as Σ p · φ(log q − log p) with φ(x) = eˣ − 1 − x ≥ 0, which equals Σ p log(p/q)
    for two distributions (Σ p φ = Σ q − Σ p + KL; both sums are one as functions of the
    logits, so the gradient is the same too). Every term is ≥ 0 and second order in the
    log-ratio, so a student close to its teacher is not lost in float32 cancellation: the
    plain sum's error is the log-probs' (~1e-7 nats), a thousandth of a 1e-4 divergence.
    """
    p = logp.exp()
    x = logq - logp
    # φ by its series near 0 (expm1(x) − x cancels there), p·φ = q − p − p·x for large x
    # (eˣ overflows; q = p·eˣ is then the bigger term and computed directly)
    series = x * x * (0.5 + x * (1.0 / 6.0 + x / 24.0))
    xc = x.clamp(max=20.0)
    phi = torch.where(x.abs() < 1e-2, series, torch.expm1(xc) - xc)
    big = logq.exp() - p - p * x
    terms = torch.where(x > 20.0, big, p * phi)
    return torch.where(p > 0, terms, torch.zeros_like(p)).sum(-1)


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
    teacher_tail_logprobs: Tensor | None = None,
    topk_indices: Tensor | None = None,
    teacher_sampled_logprobs: Tensor | None = None,
    top_k: int = 20,
    alpha: float = 1.0,
    is_clip: float = 2.0,
    aggregation: Aggregation = "token_mean",
    normalizer: float | None = None,
    token_weights: Tensor | None = None,
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
        teacher_tail_logprobs: [B, T] the teacher's log-mass outside ``topk_indices`` (the
            last entry of :func:`topk_with_tail`); required with ``teacher_topk_logprobs``.
        topk_indices: [B, T, K] the student's top-K indices (:func:`student_topk_indices`);
            computed here from ``student_logits`` when None.
        teacher_sampled_logprobs: [B, T] log q(y_t), for the log-prob-gap statistic when the
            teacher's full logits are not passed.
        top_k: K, when ``topk_indices`` is None.
        alpha: divergence, see :func:`divergence`.
        is_clip: upper clip of the importance weight.
        aggregation: see :func:`algorithms.losses.aggregate` (SDPO uses ``token_mean``).
        normalizer: the WHOLE batch's normalizer, as in :func:`algorithms.losses.policy_loss`.
        token_weights: [B, T] per-token weights that replace ``aggregation`` and
            ``normalizer`` for the LOSS only: loss = Σ_t m_t · w_t · ℓ_t (the statistics
            stay aggregated by ``aggregation`` / ``normalizer``). The GRPO mix passes GRPO's
            own aggregation weights (:func:`algorithms.losses.aggregation_weights`) so that
            both terms of Eq. 3 share one normalizer.

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
    # bf16/fp16 logits are upcast: the log-softmax and the tail's logsumexp want float32
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    logits = student_logits.to(dtype)
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)
    idx = topk_indices if topk_indices is not None else student_topk_indices(logits, top_k)

    teacher_lp_y: Tensor | None = teacher_sampled_logprobs
    with torch.no_grad():
        if teacher_topk_logprobs is not None:
            if teacher_topk_logprobs.shape != idx.shape:
                raise ValueError(
                    f"teacher_topk_logprobs {tuple(teacher_topk_logprobs.shape)} must match the "
                    f"top-K indices {tuple(idx.shape)}"
                )
            if teacher_tail_logprobs is None or teacher_tail_logprobs.shape != idx.shape[:-1]:
                raise ValueError(
                    "teacher_topk_logprobs needs teacher_tail_logprobs of shape "
                    f"{tuple(idx.shape[:-1])} (the last entry of topk_with_tail on the "
                    "teacher's logits): the tail is not recomputed as 1 − Σ p, which "
                    "loses a confident teacher's tail in float32"
                )
            teacher_full = torch.cat(
                [teacher_topk_logprobs.to(dtype), teacher_tail_logprobs.to(dtype)[..., None]],
                dim=-1,
            )
        elif teacher_logits is not None:
            if teacher_logits.shape != student_logits.shape:
                raise ValueError(
                    f"teacher_logits {tuple(teacher_logits.shape)} must have the student's "
                    f"shape {tuple(student_logits.shape)}"
                )
            t_logits = teacher_logits.detach().to(dtype)
            t_lse = torch.logsumexp(t_logits, dim=-1, keepdim=True)
            teacher_full = topk_with_tail(t_logits, idx, t_lse)
            if sampled_ids is not None and teacher_lp_y is None:
                teacher_lp_y = (t_logits.gather(-1, sampled_ids[..., None]) - t_lse)[..., 0]
        else:
            raise ValueError("pass either teacher_logits or teacher_topk_logprobs")

    student_full = topk_with_tail(logits, idx, lse)
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
    weighted = torch.where(m, per_token, zeros) * torch.where(m, weight, zeros)
    if token_weights is None:
        loss = aggregate(weighted, m, aggregation, normalizer)
    else:
        if token_weights.shape != m.shape:
            raise ValueError(
                f"token_weights {tuple(token_weights.shape)} must be [B, T] like the mask "
                f"{tuple(m.shape)}"
            )
        tw = torch.where(m, token_weights.detach().to(dtype), zeros)
        loss = (weighted * tw).sum()

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

    Feed it to :func:`algorithms.losses.policy_loss` as ``advantages`` (with the rollout's
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
