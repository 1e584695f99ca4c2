"""SDPO distillation math against independent references (numpy, hand-built distributions)."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch

from algorithms import sdpo
from algorithms.grpo import policy_loss
from algorithms.sdpo import (
    SRF,
    SDPOConfig,
    distillation_loss,
    mixed_advantages,
    student_topk_indices,
    token_level_advantages,
    topk_with_tail,
)
from rlrf.errors import ConfigError

B, T, V = 2, 3, 11


def logits_pair(seed: int = 0, dtype=torch.float64, b: int = B, t: int = T, v: int = V):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(b, t, v, generator=g, dtype=dtype) * 2
    teacher = student + torch.randn(b, t, v, generator=g, dtype=dtype) * 1.5
    return student, teacher


def np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_kl(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * (np.log(a) - np.log(b))).sum(-1)


def np_divergence(p: np.ndarray, q: np.ndarray, alpha: float) -> np.ndarray:
    if alpha == 0:
        return np_kl(q, p)
    if alpha == 1:
        return np_kl(p, q)
    m = (1 - alpha) * p + alpha * q
    return (1 - alpha) * np_kl(p, m) + alpha * np_kl(q, m)


def np_topk_dists(student: np.ndarray, teacher: np.ndarray, k: int):
    """(K+1)-outcome distributions built by hand: top-K of the student's probs, plus the rest."""
    p, q = np_softmax(student), np_softmax(teacher)
    idx = np.argsort(-student, axis=-1)[..., :k]
    pk, qk = np.take_along_axis(p, idx, -1), np.take_along_axis(q, idx, -1)
    p_full = np.concatenate([pk, 1 - pk.sum(-1, keepdims=True)], -1)
    q_full = np.concatenate([qk, 1 - qk.sum(-1, keepdims=True)], -1)
    return p_full, q_full


def test_topk_plus_tail_is_a_distribution():
    student, _ = logits_pair(dtype=torch.float32)
    for k in (1, 3, 10):
        idx = student_topk_indices(student, k)
        lp = torch.log_softmax(student, -1).gather(-1, idx)
        full = topk_with_tail(lp)
        assert full.shape == (B, T, k + 1)
        torch.testing.assert_close(full.exp().sum(-1), torch.ones(B, T), rtol=0, atol=1e-6)
        # the tail is the mass outside the K indices
        outside = 1 - torch.softmax(student, -1).gather(-1, idx).sum(-1)
        torch.testing.assert_close(full[..., -1].exp(), outside, rtol=1e-4, atol=1e-7)
    # K = V: no tail mass, still finite
    lp = torch.log_softmax(student, -1)
    full = topk_with_tail(lp)
    assert torch.isfinite(full).all()
    assert (full[..., -1].exp() < 1e-6).all()


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 0.3])
def test_full_vocab_divergence_matches_direct_computation(alpha):
    """With K = V the top-K form equals the plain full-vocabulary divergence."""
    student, teacher = logits_pair()
    mask = torch.ones(B, T)
    loss, stats = distillation_loss(student, teacher, mask, top_k=V, alpha=alpha)
    expected = np_divergence(np_softmax(student.numpy()), np_softmax(teacher.numpy()), alpha)
    assert loss.item() == pytest.approx(expected.mean(), rel=1e-9, abs=1e-12)
    assert stats["divergence"].item() == pytest.approx(expected.mean(), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 0.7])
@pytest.mark.parametrize("k", [1, 4])
def test_topk_divergence_matches_hand_built_distributions(alpha, k):
    student, teacher = logits_pair(seed=1)
    mask = torch.ones(B, T)
    loss, _ = distillation_loss(student, teacher, mask, top_k=k, alpha=alpha)
    p_full, q_full = np_topk_dists(student.numpy(), teacher.numpy(), k)
    expected = np_divergence(p_full, q_full, alpha).mean()
    assert loss.item() == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_precomputed_teacher_topk_equals_full_teacher_logits():
    student, teacher = logits_pair(seed=2)
    sampled = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    full_loss, full_stats = distillation_loss(student, teacher, mask, sampled_ids=sampled, top_k=5)
    idx = student_topk_indices(student, 5)
    t_lp = torch.log_softmax(teacher, -1)
    pre_loss, pre_stats = distillation_loss(
        student,
        None,
        mask,
        sampled_ids=sampled,
        teacher_topk_logprobs=t_lp.gather(-1, idx),
        topk_indices=idx,
        teacher_sampled_logprobs=t_lp.gather(-1, sampled[..., None])[..., 0],
    )
    assert pre_loss.item() == pytest.approx(full_loss.item(), rel=1e-12)
    for key in full_stats:
        assert pre_stats[key].item() == pytest.approx(full_stats[key].item(), rel=1e-12), key
    with pytest.raises(ValueError, match="teacher_logits or teacher_topk_logprobs"):
        distillation_loss(student, None, mask)


def test_reverse_kl_gradient_is_policy_gradient_with_per_logit_advantage():
    """∇ KL(p‖q) = Σ_ŷ p(ŷ) ∇log p(ŷ) (log p(ŷ) − log q(ŷ)): advantage A(ŷ) = log q − log p."""
    student, teacher = logits_pair(seed=3)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    s1 = student.clone().requires_grad_(True)
    loss, _ = distillation_loss(s1, teacher, mask, top_k=V, alpha=1.0)
    loss.backward()

    s2 = student.clone().requires_grad_(True)
    logp = torch.log_softmax(s2, -1)
    logq = torch.log_softmax(teacher, -1)
    advantage = (logq - logp).detach()
    surrogate = -(logp.detach().exp() * advantage * logp).sum(-1)  # −E_{ŷ~p}[A(ŷ) log p(ŷ)]
    ((surrogate * mask).sum() / mask.sum()).backward()
    torch.testing.assert_close(s1.grad, s2.grad, rtol=1e-9, atol=1e-12)
    assert s1.grad.abs().sum() > 0


def test_topk_reverse_kl_gradient_is_policy_gradient_over_k_plus_one_outcomes():
    """The same identity holds on the (K+1)-outcome distribution, through gather and tail."""
    student, teacher = logits_pair(seed=4)
    mask = torch.ones(B, T)
    idx = student_topk_indices(student, 3)
    s1 = student.clone().requires_grad_(True)
    distillation_loss(s1, teacher, mask, topk_indices=idx, alpha=1.0)[0].backward()

    s2 = student.clone().requires_grad_(True)
    logp = topk_with_tail(torch.log_softmax(s2, -1).gather(-1, idx))
    logq = topk_with_tail(torch.log_softmax(teacher, -1).gather(-1, idx))
    surrogate = -(logp.detach().exp() * (logq - logp).detach() * logp).sum(-1)
    surrogate.mean().backward()
    torch.testing.assert_close(s1.grad, s2.grad, rtol=1e-9, atol=1e-12)


def test_token_level_variant_in_expectation_equals_logit_level_gradient():
    """E_{ŷ~p}[∇ token-level loss(ŷ)] = ∇ KL(p‖q): sampling one token per position is unbiased."""
    student, teacher = logits_pair(seed=5, b=1, t=1)
    s_ref = student.clone().requires_grad_(True)
    distillation_loss(s_ref, teacher, torch.ones(1, 1), top_k=V, alpha=1.0)[0].backward()

    p = torch.softmax(student, -1)[0, 0]
    expected_grad = torch.zeros_like(student)
    for y in range(V):
        s = student.clone().requires_grad_(True)
        ids = torch.tensor([[y]])
        logp_y = torch.log_softmax(s, -1).gather(-1, ids[..., None])[..., 0]
        logq_y = torch.log_softmax(teacher, -1).gather(-1, ids[..., None])[..., 0]
        adv = token_level_advantages(logq_y, logp_y)
        loss, _ = policy_loss(logp_y, logp_y.detach(), adv, torch.ones(1, 1))
        loss.backward()
        expected_grad += p[y] * s.grad
    torch.testing.assert_close(s_ref.grad, expected_grad, rtol=1e-9, atol=1e-12)


def test_token_level_loss_gradient_is_minus_advantage_times_score():
    g = torch.Generator().manual_seed(6)
    logp = -torch.rand(B, T, generator=g, dtype=torch.float64) * 2
    logq = -torch.rand(B, T, generator=g, dtype=torch.float64) * 2
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    lp = logp.clone().requires_grad_(True)
    adv = token_level_advantages(logq, lp)
    assert not adv.requires_grad
    loss, _ = policy_loss(lp, logp, adv, mask)
    loss.backward()
    torch.testing.assert_close(lp.grad, -(logq - logp) * mask / mask.sum())


def test_importance_weight_is_clipped_and_detached():
    student, teacher = logits_pair(seed=7)
    sampled = torch.zeros(B, T, dtype=torch.long)
    logp_y = torch.log_softmax(student, -1)[..., 0]
    # w = exp(logp − old): 1 at t=0, e^{0.5} at t=1, clipped to 2 at t=2 (e^{3} > 2)
    old = logp_y - torch.tensor([0.0, 0.5, 3.0], dtype=torch.float64)
    mask = torch.ones(B, T)
    s1 = student.clone().requires_grad_(True)
    loss, stats = distillation_loss(s1, teacher, mask, old, sampled, top_k=4, alpha=0.5)
    loss.backward()
    w = torch.tensor([1.0, np.exp(0.5), 2.0], dtype=torch.float64).expand(B, T)
    s2 = student.clone().requires_grad_(True)
    idx = student_topk_indices(student, 4)
    per_tok = sdpo.divergence(
        topk_with_tail(torch.log_softmax(s2, -1).gather(-1, idx)),
        topk_with_tail(torch.log_softmax(teacher, -1).gather(-1, idx)),
        0.5,
    )
    ref = (per_tok * w).mean()
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-12)
    torch.testing.assert_close(s1.grad, s2.grad)
    assert stats["is_weight"].item() == pytest.approx(w.mean().item())
    assert stats["divergence"].item() == pytest.approx(per_tok.mean().item())
    with pytest.raises(ValueError, match="sampled_ids"):
        distillation_loss(student, teacher, mask, old)


def test_logprob_gap_statistic():
    student, teacher = logits_pair(seed=8)
    sampled = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(1))
    _, stats = distillation_loss(student, teacher, torch.ones(B, T), sampled_ids=sampled)
    gap = (torch.log_softmax(teacher, -1) - torch.log_softmax(student, -1)).gather(
        -1, sampled[..., None]
    )
    assert stats["logprob_gap"].item() == pytest.approx(gap.mean().item(), rel=1e-12)


def test_no_gradient_reaches_the_teacher_logits():
    student, teacher = logits_pair(seed=9)
    s = student.clone().requires_grad_(True)
    t = teacher.clone().requires_grad_(True)
    idx = student_topk_indices(s, 3)
    t_topk = torch.log_softmax(t, -1).gather(-1, idx)
    for kwargs in (
        {"teacher_logits": t},
        {"teacher_logits": None, "teacher_topk_logprobs": t_topk},
    ):
        loss, _ = distillation_loss(s, response_mask=torch.ones(B, T), topk_indices=idx, **kwargs)
        assert loss.grad_fn is not None
        loss.backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_masked_positions_contribute_exactly_nothing(alpha):
    student, teacher = logits_pair(seed=10)
    sampled = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(2))
    old = torch.log_softmax(student, -1).gather(-1, sampled[..., None])[..., 0] - 0.3
    mask = torch.tensor([[1, 0, 1], [0, 0, 0]], dtype=torch.bool)  # second rollout: no teacher
    s1 = student.clone().requires_grad_(True)
    clean, clean_stats = distillation_loss(s1, teacher, mask, old, sampled, top_k=4, alpha=alpha)
    clean.backward()

    garbage = ~mask
    s2 = student.masked_fill(garbage[..., None], 0.0)
    s2 = (
        s2 + garbage[..., None] * torch.linspace(-50, 50, V, dtype=torch.float64)
    ).requires_grad_()
    dirty_teacher = teacher.masked_fill(garbage[..., None], 1e4)
    dirty_old = old.masked_fill(garbage, float("nan"))
    dirty_ids = sampled.masked_fill(garbage, V - 1)
    dirty, dirty_stats = distillation_loss(
        s2, dirty_teacher, mask, dirty_old, dirty_ids, top_k=4, alpha=alpha
    )
    dirty.backward()
    assert dirty.item() == clean.item()
    assert torch.equal(s2.grad, s1.grad)
    assert (s2.grad[garbage] == 0).all()
    for k in clean_stats:
        assert dirty_stats[k].item() == clean_stats[k].item(), k


def test_micro_batches_sum_to_the_whole_batch():
    student, teacher = logits_pair(seed=11, b=5)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0], [1, 1, 0], [1, 0, 1]])
    s_whole = student.clone().requires_grad_(True)
    whole, _ = distillation_loss(s_whole, teacher, mask, top_k=3, alpha=0.5)
    whole.backward()
    s_split = student.clone().requires_grad_(True)
    n = float(mask.sum())
    total = 0.0
    for sl in (slice(0, 2), slice(2, 3), slice(3, 5)):
        loss, _ = distillation_loss(
            s_split[sl], teacher[sl], mask[sl], top_k=3, alpha=0.5, normalizer=n
        )
        loss.backward()
        total += loss.item()
    assert total == pytest.approx(whole.item(), rel=1e-12)
    torch.testing.assert_close(s_split.grad, s_whole.grad, rtol=1e-12, atol=1e-15)


def test_bf16_student_logits_are_handled_in_float32():
    student, teacher = logits_pair(seed=12, dtype=torch.float32)
    s = student.to(torch.bfloat16).requires_grad_(True)
    loss, _ = distillation_loss(s, teacher.to(torch.bfloat16), torch.ones(B, T), top_k=4)
    loss.backward()
    assert loss.dtype == torch.float32 and s.grad.dtype == torch.bfloat16
    assert torch.isfinite(loss)


# --- mixing and config --------------------------------------------------------------------


def test_mixed_advantages():
    grpo_adv = torch.tensor([1.0, -1.0])
    sdpo_adv = torch.tensor([[0.5, -0.5, 0.0], [2.0, 2.0, 2.0]])
    torch.testing.assert_close(mixed_advantages(grpo_adv, sdpo_adv, 0.0), sdpo_adv)
    torch.testing.assert_close(
        mixed_advantages(grpo_adv, sdpo_adv, 1.0), grpo_adv[:, None].expand(2, 3)
    )
    mixed = mixed_advantages(grpo_adv, sdpo_adv, 0.9, teacher_mask=torch.tensor([True, False]))
    torch.testing.assert_close(
        mixed, torch.tensor([[0.95, 0.85, 0.9], [-0.9, -0.9, -0.9]]), rtol=1e-6, atol=1e-6
    )
    with pytest.raises(ValueError, match="lam"):
        mixed_advantages(grpo_adv, sdpo_adv, 1.5)


def test_config_defaults_presets_and_validation():
    c = SDPOConfig()
    assert (c.teacher, c.alpha, c.top_k, c.teacher_tau, c.loss_level, c.grpo_mix) == (
        "ema",
        1.0,
        20,
        0.01,
        "logit",
        0.0,
    )
    assert c.use_solution and c.use_feedback and not c.feedback_only_without_solution
    rich = SDPOConfig.rich_feedback()
    assert (rich.alpha, rich.top_k, rich.teacher_tau, rich.use_feedback) == (1.0, 20, 0.01, True)
    srf = SRF()
    assert srf == SDPOConfig.successful_rollout()
    assert (srf.use_feedback, srf.alpha, srf.top_k, srf.teacher_tau) == (False, 0.5, 100, 0.05)
    assert SRF(top_k=50).top_k == 50
    for bad, match in [
        ({"alpha": 1.5}, "alpha"),
        ({"teacher": "student"}, "teacher"),
        ({"loss_level": "sequence"}, "loss_level"),
        ({"teacher_tau": 0.0}, "teacher_tau"),
        ({"use_solution": False, "use_feedback": False}, "use_feedback"),
        ({"grpo_mix": -0.1}, "grpo_mix"),
    ]:
        with pytest.raises(ConfigError, match=match):
            SDPOConfig(**bad)


def test_doctests():
    # the package's functions live in its modules (doctest skips re-exported names)
    for module in (sdpo, sdpo.contexts, sdpo.loss):
        assert doctest.testmod(module).failed == 0
