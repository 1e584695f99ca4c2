"""The math that GRPO and SDPO share: advantages, token aggregation, the clipped surrogate.

All functions are pure functions of tensors (see :mod:`algorithms.grpo` for the algorithm
and the departures from the paper). SDPO uses :func:`aggregate` for its distillation loss
and the advantages and :func:`policy_loss` for its token-level variant and the GRPO mix.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from algorithms.config import check_choice
from algorithms.grpo.config import AdvantageScale, Aggregation

if TYPE_CHECKING:
    from algorithms.engine.batching import Row
    from algorithms.grpo.config import GRPOConfig
    from algorithms.objective import RolloutKey
    from rlrf.trajectory import Group

__all__ = [
    "AdvantageScale",
    "Aggregation",
    "aggregate",
    "aggregation_weights",
    "default_normalizer",
    "group_advantages",
    "groups_with_signal",
    "k3_kl",
    "normalizer_of",
    "policy_loss",
    "rollout_advantages",
]

# --- 2. advantages -----------------------------------------------------------------------


def groups_with_signal(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """Return a bool mask [N]: True where the rollout's group has at least two distinct rewards.

    A group whose rewards are all equal has A = 0 for every member and contributes no policy
    gradient; ``filter_zero_advantage_groups`` drops the rollouts where this is False.
    """
    _, inverse = torch.unique(group_ids, return_inverse=True)
    n_groups = int(inverse.max()) + 1 if inverse.numel() else 0
    big = torch.finfo(rewards.dtype).max
    gmax = torch.full((n_groups,), -big, dtype=rewards.dtype, device=rewards.device)
    gmin = torch.full((n_groups,), big, dtype=rewards.dtype, device=rewards.device)
    gmax = gmax.scatter_reduce(0, inverse, rewards, reduce="amax")
    gmin = gmin.scatter_reduce(0, inverse, rewards, reduce="amin")
    return (gmax != gmin)[inverse]


def group_advantages(
    rewards: Tensor,
    group_ids: Tensor,
    scale: AdvantageScale = "none",
    eps: float = 1e-6,
) -> Tensor:
    """Group-relative advantages A_i = (r_i − mean of i's group) [/ (std + eps)].

    Args:
        rewards: [N] float rewards, all finite (missing rewards must be filtered out before).
        group_ids: [N] integer id of each rollout's group (any values; need not be contiguous).
        scale: "none" (default, the paper's baseline), "group" (divide by the group's
            reward std, original GRPO) or "batch" (divide by the std of all N rewards).
        eps: added to the std before dividing.

    Returns:
        [N] advantages in ``rewards``' dtype. Rollouts of a group whose rewards are all equal
        (including a group of one) get exactly 0. Stds are unbiased (Bessel-corrected), like
        ``torch.std``; a group or batch of size one counts as std 0.

    Example:
        >>> group_advantages(torch.tensor([1.0, 0.0, 0.0, 2.0]), torch.tensor([0, 0, 0, 7]))
        tensor([ 0.6667, -0.3333, -0.3333,  0.0000])

    """
    if rewards.ndim != 1 or group_ids.shape != rewards.shape:
        raise ValueError(
            f"rewards and group_ids must both be 1-D of the same length, got "
            f"{tuple(rewards.shape)} and {tuple(group_ids.shape)}"
        )
    if not torch.isfinite(rewards).all():
        raise ValueError(
            "rewards contain NaN or inf; drop rollouts with a missing reward before computing "
            "advantages"
        )
    check_choice("scale", scale, AdvantageScale)
    _, inverse = torch.unique(group_ids, return_inverse=True)
    n_groups = int(inverse.max()) + 1 if inverse.numel() else 0
    zeros = torch.zeros(n_groups, dtype=rewards.dtype, device=rewards.device)
    count = zeros.index_add(0, inverse, torch.ones_like(rewards))
    mean = zeros.index_add(0, inverse, rewards) / count
    adv = rewards - mean[inverse]
    if scale == "group":
        sq = zeros.index_add(0, inverse, adv**2)
        std = torch.sqrt(sq / (count - 1).clamp(min=1))
        adv = adv / (std[inverse] + eps)
    elif scale == "batch":
        std = rewards.std() if rewards.numel() > 1 else rewards.new_zeros(())
        adv = adv / (std + eps)
    # r − mean is not exactly 0 in floating point for some all-equal groups (e.g. 0.1 × 3).
    return torch.where(groups_with_signal(rewards, group_ids), adv, torch.zeros_like(adv))


# --- 3. the clipped surrogate ----------------------------------------------------------


def k3_kl(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Per-token k3 estimate of KL(π_θ ‖ π_ref) from tokens sampled by π_θ (Schulman 2020).

    k3 = exp(log π_ref − log π_θ) − (log π_ref − log π_θ) − 1: unbiased, always >= 0.
    """
    d = ref_logprobs - logprobs
    return torch.exp(d) - d - 1.0


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    ref_logprobs: Tensor | None = None,
    kl_coef: float = 0.0,
    aggregation: Aggregation = "token_mean",
    normalizer: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Compute the clipped GRPO surrogate loss of one (micro-)batch.

    Args:
        logprobs: [B, T] log π_θ(y_t) of the response tokens, with gradient.
        old_logprobs: [B, T] log π_old(y_t) of the policy that sampled (no gradient needed).
        advantages: [B] per-rollout or [B, T] per-token advantages (the latter for SDPO's
            token-level variant, see ``algorithms.sdpo.token_level_advantages``).
        mask: [B, T] 1/True on response tokens that count, 0/False on prompt and padding.
        clip_low: ε_low; the ratio is clipped below at 1 − ε_low.
        clip_high: ε_high; the ratio is clipped above at 1 + ε_high.
        ref_logprobs: [B, T] log-probs of a frozen reference; used only when ``kl_coef > 0``.
        kl_coef: β of the k3 KL penalty.
        aggregation: see :func:`aggregate`.
        normalizer: the WHOLE batch's normalizer (see :func:`default_normalizer`) so that the
            losses of micro-batches sum to the loss of the batch; None uses this batch's own.

    Returns:
        ``(loss, stats)``. ``stats`` holds detached scalars aggregated exactly like the loss
        (so with a global normalizer they too sum over micro-batches): ``policy_objective``
        (the surrogate min(ρA, clip(ρ)A), i.e. the loss without the minus and the KL term),
        ``clip_frac_low`` / ``clip_frac_high`` (share of tokens where the lower / upper clip
        is active and cuts the gradient), ``clip_frac`` (their sum), ``approx_kl_old`` (k3
        estimate of KL(π_old ‖ π_θ)), and ``kl_ref`` when a reference is used.

    """
    if logprobs.ndim != 2 or old_logprobs.shape != logprobs.shape or mask.shape != logprobs.shape:
        raise ValueError(
            f"logprobs, old_logprobs and mask must all be [B, T]; got {tuple(logprobs.shape)}, "
            f"{tuple(old_logprobs.shape)}, {tuple(mask.shape)}"
        )
    if advantages.ndim == 1:
        advantages = advantages[:, None]
    if advantages.shape[0] != logprobs.shape[0]:
        raise ValueError(
            f"advantages must be [B] or [B, T] with B={logprobs.shape[0]}, "
            f"got {tuple(advantages.shape)}"
        )
    m = mask.bool()
    adv = advantages.detach().to(logprobs.dtype).expand_as(logprobs)
    adv = torch.where(m, adv, torch.zeros_like(adv))
    # Zero the log-ratio on masked positions BEFORE exp: garbage there must not overflow.
    log_ratio = torch.where(m, logprobs - old_logprobs.detach(), torch.zeros_like(logprobs))
    ratio = torch.exp(log_ratio)
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    surrogate = torch.minimum(ratio * adv, clipped * adv)
    per_token = -surrogate

    stats: dict[str, Tensor] = {}
    if kl_coef > 0.0:
        if ref_logprobs is None:
            raise ValueError("kl_coef > 0 needs ref_logprobs (log-probs of the reference model)")
        zeros = torch.zeros_like(logprobs)
        kl = k3_kl(torch.where(m, logprobs, zeros), torch.where(m, ref_logprobs.detach(), zeros))
        per_token = per_token + kl_coef * kl
        stats["kl_ref"] = aggregate(kl.detach(), m, aggregation, normalizer)

    loss = aggregate(per_token, m, aggregation, normalizer)

    with torch.no_grad():
        low = ((ratio < 1.0 - clip_low) & (adv < 0)).to(logprobs.dtype)
        high = ((ratio > 1.0 + clip_high) & (adv > 0)).to(logprobs.dtype)
        stats["policy_objective"] = aggregate(surrogate.detach(), m, aggregation, normalizer)
        stats["clip_frac_low"] = aggregate(low, m, aggregation, normalizer)
        stats["clip_frac_high"] = aggregate(high, m, aggregation, normalizer)
        stats["clip_frac"] = stats["clip_frac_low"] + stats["clip_frac_high"]
        # KL(π_old ‖ π_θ) from tokens sampled by π_old: k3 with the roles of the policies swapped.
        stats["approx_kl_old"] = aggregate(ratio - 1.0 - log_ratio, m, aggregation, normalizer)
    return loss, stats


# --- 4. aggregation ----------------------------------------------------------------------


def default_normalizer(mask: Tensor, aggregation: Aggregation) -> float:
    """Return the normalizer :func:`aggregate` uses for this tensor alone when none is given.

    For exact gradient accumulation the trainer computes the same quantity over the WHOLE
    batch (all micro-batches, all processes) and passes it to every micro-batch:

    - ``token_mean``: number of unmasked tokens (Σ m);
    - ``seq_mean_token_mean``: number of sequences (B);
    - ``seq_mean_token_sum_norm``: B · L_max, with L_max = this tensor's width T (the trainer
      should pass B_total · max_new_tokens so the value does not depend on padding).
    """
    check_choice("aggregation", aggregation, Aggregation)
    if aggregation == "token_mean":
        return float(mask.sum())
    if aggregation == "seq_mean_token_mean":
        return float(mask.shape[0])
    return float(mask.shape[0] * mask.shape[1])


def aggregate(
    per_token: Tensor,
    mask: Tensor,
    aggregation: Aggregation = "token_mean",
    normalizer: float | None = None,
) -> Tensor:
    """Reduce a [B, T] per-token quantity over unmasked positions to a scalar.

    - ``token_mean``: Σ_bt ℓ m / normalizer (default normalizer Σ m);
    - ``seq_mean_token_mean``: Σ_b (Σ_t ℓ m / Σ_t m) / normalizer (default B); a row with no
      unmasked token contributes 0 but still counts in the default normalizer;
    - ``seq_mean_token_sum_norm``: Σ_bt ℓ m / normalizer (default B · T).

    Masked positions are replaced by 0 with ``torch.where`` (not multiplied), so NaN or inf
    there changes neither the result nor the gradient. With ``normalizer=None`` the tensor's own
    value is used (see :func:`default_normalizer`); a normalizer of 0 (nothing unmasked) gives 0.
    """
    if per_token.shape != mask.shape or per_token.ndim != 2:
        raise ValueError(
            f"per_token and mask must both be [B, T], got {tuple(per_token.shape)} and "
            f"{tuple(mask.shape)}"
        )
    m = mask.bool()
    if normalizer is None:
        normalizer = default_normalizer(m, aggregation)
    else:
        check_choice("aggregation", aggregation, Aggregation)
    masked = torch.where(m, per_token, torch.zeros_like(per_token))
    if aggregation == "seq_mean_token_mean":
        lengths = m.sum(dim=1).clamp(min=1).to(per_token.dtype)
        total = (masked.sum(dim=1) / lengths).sum()
    else:
        total = masked.sum()
    if normalizer == 0:
        return total * 0.0
    return total / normalizer


def aggregation_weights(
    mask: Tensor,
    aggregation: Aggregation = "token_mean",
    normalizer: float | None = None,
    *,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Per-token weights w [B, T] with Σ_bt w ℓ = :func:`aggregate` (ℓ, mask, ...) for any ℓ.

    ``token_mean`` and ``seq_mean_token_sum_norm``: 1 / normalizer on unmasked tokens;
    ``seq_mean_token_mean``: 1 / (row length · normalizer). 0 on masked tokens (and
    everywhere when the normalizer is 0). A loss that must share GRPO's normalizer token by
    token (SDPO's logit-level term in the paper's Eq. 3 mix, computed chunk by chunk on a
    subset of positions) weights its per-token values with these.
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be [B, T], got {tuple(mask.shape)}")
    m = mask.bool()
    if normalizer is None:
        normalizer = default_normalizer(m, aggregation)
    else:
        check_choice("aggregation", aggregation, Aggregation)
    ones = m.to(dtype)
    if normalizer == 0:
        return ones * 0.0
    if aggregation == "seq_mean_token_mean":
        lengths = m.sum(dim=1, keepdim=True).clamp(min=1).to(dtype)
        return ones / (lengths * normalizer)
    return ones / normalizer


# --- advantages of a step's rollouts ------------------------------------------------------


def rollout_advantages(
    groups: Sequence[Group], keys: Sequence[RolloutKey], config: GRPOConfig
) -> tuple[dict[RolloutKey, float], list[RolloutKey], float]:
    """GRPO advantages of the rollouts ``keys`` (all with a reward), over the whole step.

    Returns the advantage of each rollout, the rollouts to train (all, or only those of
    groups with a reward signal under ``filter_zero_advantage_groups``), and the number of
    groups whose rewards are all equal.
    """
    advantages: dict[RolloutKey, float] = {}
    keep = list(keys)
    zero_groups = 0.0
    if keys:
        rewards = [groups[gi].trajectories[ti].reward for gi, ti in keys]
        group_ids = [gi for gi, _ in keys]
        r = torch.tensor(rewards, dtype=torch.float64)
        gid = torch.tensor(group_ids)
        adv = group_advantages(r, gid, config.advantage_scale)
        signal = groups_with_signal(r, gid).tolist()
        zero_groups = float(len({g for g, s in zip(group_ids, signal, strict=True) if not s}))
        for k, key in enumerate(keys):
            advantages[key] = float(adv[k])
        if config.filter_zero_advantage_groups:
            keep = [key for key, s in zip(keys, signal, strict=True) if s]
    return advantages, keep, zero_groups


def normalizer_of(rows: Sequence[Row], config: GRPOConfig, max_new_tokens: int) -> float:
    """Return this process's share of :func:`aggregate`'s normalizer for a mini-batch."""
    if config.aggregation == "token_mean":
        return float(sum(len(r.response_ids) for r in rows))
    if config.aggregation == "seq_mean_token_mean":
        return float(len(rows))
    return float(len(rows) * max_new_tokens)


