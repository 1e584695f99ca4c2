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
from algorithms.sdpo.objective import SDPORow, has_teacher
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
        full = topk_with_tail(student, idx)
        assert full.shape == (B, T, k + 1)
        torch.testing.assert_close(full.exp().sum(-1), torch.ones(B, T), rtol=0, atol=1e-6)
        # the tail is the mass outside the K indices
        outside = 1 - torch.softmax(student, -1).gather(-1, idx).sum(-1)
        torch.testing.assert_close(full[..., -1].exp(), outside, rtol=1e-4, atol=1e-7)
    # K = V: no tail mass (exactly 0), still finite, and a finite gradient
    s = student.clone().requires_grad_(True)
    full = topk_with_tail(s, student_topk_indices(student, V))
    assert torch.isfinite(full).all()
    assert (full[..., -1].exp() == 0).all()
    full[..., :-1].exp().sum().backward()
    assert torch.isfinite(s.grad).all()


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
    t_full = topk_with_tail(teacher, idx)
    pre_loss, pre_stats = distillation_loss(
        student,
        None,
        mask,
        sampled_ids=sampled,
        teacher_topk_logprobs=t_lp.gather(-1, idx),
        teacher_tail_logprobs=t_full[..., -1],
        topk_indices=idx,
        teacher_sampled_logprobs=t_lp.gather(-1, sampled[..., None])[..., 0],
    )
    assert pre_loss.item() == pytest.approx(full_loss.item(), rel=1e-12)
    for key in full_stats:
        assert pre_stats[key].item() == pytest.approx(full_stats[key].item(), rel=1e-12), key
    with pytest.raises(ValueError, match="teacher_logits or teacher_topk_logprobs"):
        distillation_loss(student, None, mask)
    with pytest.raises(ValueError, match="teacher_tail_logprobs"):  # no silent 1 − Σp
        distillation_loss(
            student, None, mask, teacher_topk_logprobs=t_full[..., :-1], topk_indices=idx
        )


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
    logp = topk_with_tail(s2, idx)
    logq = topk_with_tail(teacher, idx)
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
        topk_with_tail(s2, idx),
        topk_with_tail(teacher, idx),
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
    t_full = topk_with_tail(t, idx)
    for kwargs in (
        {"teacher_logits": t},
        {
            "teacher_logits": None,
            "teacher_topk_logprobs": t_full[..., :-1],
            "teacher_tail_logprobs": t_full[..., -1],
        },
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


# --- the tail bucket in float32 (issue 18) -------------------------------------------------


def _f64_reference_loss(student: torch.Tensor, teacher: torch.Tensor, k: int, alpha: float):
    """Float64 top-K + tail divergence, the tail by logsumexp over the logits outside the K."""
    s, t = student.double(), teacher.double()
    idx = torch.topk(s, k, dim=-1).indices
    outside = torch.ones_like(s, dtype=torch.bool).scatter(-1, idx, False)

    def dist(x):
        lse = torch.logsumexp(x, -1, keepdim=True)
        tail = torch.logsumexp(x.masked_fill(~outside, float("-inf")), -1, keepdim=True)
        return torch.cat([x.gather(-1, idx) - lse, tail - lse], -1)

    p, q = dist(s).exp().numpy(), dist(t).exp().numpy()
    return float(np_divergence(p, q, alpha).mean())


def _naive_tail_loss(student: torch.Tensor, teacher: torch.Tensor, k: int, alpha: float):
    """The tail as log(1 − Σ_k p_k) in float32 (floored at the dtype's eps): the old way."""
    idx = torch.topk(student, k, dim=-1).indices

    def dist(x):
        lp = torch.log_softmax(x, -1).gather(-1, idx)
        mass = lp.exp().sum(-1, keepdim=True).clamp(max=1 - torch.finfo(x.dtype).eps)
        return torch.cat([lp, torch.log1p(-mass)], -1)

    return float(sdpo.divergence(dist(student), dist(teacher), alpha).mean())


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_tail_bucket_is_exact_in_float32_for_confident_distributions(alpha):
    """Relative error ≤ 1e-3 against float64 with a logsumexp tail, logit scales 1 to 20.

    Issue 18: the old tail, 1 − Σp in float32, was 16% off for forward KL with a confident
    student; here it misses by > 1% (checked below, so this test can fail). Teachers: a
    flatter copy of the student (the case that broke), a noisy copy, one less sure of its
    top token, and one within ~1e-4 nats of the student (late in training: the divergence
    is summed without cancellation, see ``_kl``).
    """
    g = torch.Generator().manual_seed(13)
    v, k = 100, 20
    worst_naive = 0.0
    for scale in (1.0, 5.0, 10.0, 15.0, 20.0):
        student = torch.randn(4, 8, v, generator=g) * scale
        top = student.argmax(-1, keepdim=True)
        teachers = (
            student * 0.2,
            student + torch.randn(4, 8, v, generator=g) * 0.3 * scale,
            student.scatter_add(-1, top, torch.full(top.shape, -3.0)),
            student + torch.randn(4, 8, v, generator=g) * 0.01,
        )
        for teacher in teachers:
            ref = _f64_reference_loss(student, teacher, k, alpha)
            got, _ = distillation_loss(student, teacher, torch.ones(4, 8), top_k=k, alpha=alpha)
            assert got.dtype == torch.float32
            assert abs(got.item() - ref) <= 1e-3 * abs(ref), (scale, got.item(), ref)
            naive = _naive_tail_loss(student, teacher, k, alpha)
            worst_naive = max(worst_naive, abs(naive - ref) / abs(ref))
    if alpha == 0.0:  # the old tail fails the same check by far
        assert worst_naive > 1e-2


def test_entropy_from_logits_matches_numpy():
    student, _ = logits_pair(seed=14)
    p = np_softmax(student.numpy())
    expected = -(p * np.log(p)).sum(-1)
    np.testing.assert_allclose(sdpo.loss.entropy_from_logits(student).numpy(), expected, 1e-12)


# --- the objective on a tiny model: mixing, off-policy, the sign (issue 18) ----------------

TRAIN = dict(
    steps=1, questions_per_step=2, rollouts_per_question=4, max_new_tokens=10, eval_every=0,
    checkpoint_every=0, progress=False, lr=1e-3, max_grad_norm=0.0, logit_chunk_size=3,
)  # fmt: skip
QUESTION = "Question: which letter comes first in the alphabet? "


def _trainer(tmp_path, **sdpo_options):
    """A trainer on the tiny model whose (EMA) teacher is perturbed away from the student."""
    from algorithms.engine.trainer import Trainer
    from algorithms.sdpo.config import SDPOTrainConfig
    from algorithms.testing import TargetCharEnv, tiny_model, tiny_tokenizer

    config = SDPOTrainConfig(output_dir=str(tmp_path), sdpo=SDPOConfig(**sdpo_options), **TRAIN)
    trainer = Trainer(
        config, env=TargetCharEnv(targets="ab"), model=tiny_model(0), tokenizer=tiny_tokenizer()
    )
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in trainer.objective.teacher.module.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return trainer


def _logits(model, prompts, responses):
    """[B, L, V] logits predicting each response token, from plain forwards (padded)."""
    width = max(len(r) for r in responses)
    out = []
    for p, r in zip(prompts, responses, strict=True):
        logits = model(input_ids=torch.tensor([p + r])).logits[0, len(p) - 1 : len(p) + len(r) - 1]
        out.append(torch.nn.functional.pad(logits, (0, 0, 0, width - len(r))))
    return torch.stack(out).float()


def _rows(trainer, spec, old_offset=None):
    """Rows (prompt, response, advantage, teacher text or None) whose old log-probs are the
    student's current ones (on-policy) plus ``old_offset`` [B, L] when given."""
    from algorithms.engine.batching import Row, collate

    tok = trainer.tokenizer
    prompts = [tok.encode(QUESTION + p) for p, _, _, _ in spec]
    responses = [tok.encode(r) for _, r, _, _ in spec]
    with torch.no_grad():
        lp = _logits(trainer.unwrapped, prompts, responses).log_softmax(-1)
        ids = collate(
            [Row(p, r, [0.0] * len(r)) for p, r in zip(prompts, responses, strict=True)]
        ).response_ids
        old = lp.gather(-1, ids[..., None])[..., 0]
        if old_offset is not None:
            old = old + old_offset
    return [
        SDPORow(
            p, r, old[i, : len(r)].tolist(), adv, group=i, trajectory=0,
            teacher_prompt_ids=None if t is None else tok.encode(QUESTION + t),
        )
        for i, (p, r, (_, _, adv, t)) in enumerate(zip(prompts, responses, spec, strict=True))
    ]  # fmt: skip


def _grads(trainer, rows, *, on_policy=True):
    """The trainer's loss on ``rows`` (whole-batch normalizers) and its flat gradient."""
    from algorithms.engine.batching import collate

    trainer.unwrapped.zero_grad(set_to_none=True)
    loss, _ = trainer._loss(collate(rows), trainer._normalizers(rows), on_policy=on_policy)
    loss.backward()
    params = list(trainer.unwrapped.parameters())
    flat = torch.cat([p.grad.flatten() if p.grad is not None else p.flatten() * 0 for p in params])
    trainer.unwrapped.zero_grad(set_to_none=True)
    return loss.detach(), flat


def _reference_grad(trainer, loss_fn):
    """Flat gradient of ``loss_fn(student_logits)`` through plain forwards."""
    trainer.unwrapped.zero_grad(set_to_none=True)
    loss_fn().backward()
    params = list(trainer.unwrapped.parameters())
    flat = torch.cat([p.grad.flatten() if p.grad is not None else p.flatten() * 0 for p in params])
    trainer.unwrapped.zero_grad(set_to_none=True)
    return flat


def _student_teacher(trainer, rows):
    from algorithms.engine.batching import collate

    batch = collate(rows)
    student = _logits(trainer.unwrapped, [r.prompt_ids for r in rows], batch.responses)
    with torch.no_grad():
        prompts = [r.teacher_prompt_ids or r.prompt_ids for r in rows]
        teacher = _logits(trainer.objective.teacher.module, prompts, batch.responses)
    return batch, student, teacher


@pytest.mark.slow
def test_logit_and_token_level_mixing_share_one_normalizer(tmp_path):
    """Eq. 3 at both levels: λ · GRPO + (1 − λ) · SDPO, both over ALL the batch's tokens.

    Only the first row has a teacher (2 of 9 tokens). The loss is linear in λ, so the SDPO
    term's gradient is 2 G(λ = 0.5) − G(λ = 1). At the logit level it must be ∇ Σ_t D_t / 9
    and at the token level ∇ Σ_t −A_t log p(y_t) / 9 (A_t = sg(log q − log p), whose
    expectation over y_t ~ p IS ∇ D_t for reverse KL with K = V, tested above): the same
    normalizer as the GRPO term. The old logit-level code divided the SDPO term by the
    2 teacher tokens instead (4.5x heavier than at the token level).
    """
    import dataclasses

    trainer = _trainer(tmp_path, grpo_mix=0.5, top_k=100, alpha=1.0)
    spec = [("1", "ab", 0.7, "sol a"), ("2", "abcdefg", -0.4, None)]
    rows = _rows(trainer, spec)
    batch, student, teacher = _student_teacher(trainer, rows)
    n_all = float(batch.mask.sum())
    assert n_all == 9 and float(batch.mask[has_teacher(batch)].sum()) == 2
    tmask = batch.mask & has_teacher(batch)[:, None]

    sdpo_term: dict[str, torch.Tensor] = {}
    grpo_term: dict[str, torch.Tensor] = {}
    for level in ("logit", "token"):
        g = {}
        for lam in (0.5, 1.0):
            trainer.objective.sdpo = dataclasses.replace(
                trainer.objective.sdpo, loss_level=level, grpo_mix=lam
            )
            g[lam] = _grads(trainer, rows)[1]
        grpo_term[level] = g[1.0]
        sdpo_term[level] = 2 * g[0.5] - g[1.0]

    def logit_ref():
        s = _student_teacher(trainer, rows)[1]
        return distillation_loss(s, teacher, tmask, top_k=100, alpha=1.0, normalizer=n_all)[0]

    def token_ref():
        s = _student_teacher(trainer, rows)[1]
        lp = s.log_softmax(-1).gather(-1, batch.response_ids[..., None])[..., 0]
        lq = teacher.log_softmax(-1).gather(-1, batch.response_ids[..., None])[..., 0]
        adv = torch.where(tmask, token_level_advantages(lq, lp), 0.0)
        return policy_loss(lp, lp.detach(), adv, batch.mask, normalizer=n_all)[0]

    scale = float(sdpo_term["logit"].abs().max())
    torch.testing.assert_close(grpo_term["logit"], grpo_term["token"], rtol=1e-4, atol=1e-7)
    for level, ref_fn in (("logit", logit_ref), ("token", token_ref)):
        ref = _reference_grad(trainer, ref_fn)
        assert float(ref.abs().max()) > 0
        torch.testing.assert_close(sdpo_term[level], ref, rtol=1e-3, atol=1e-4 * scale)
    # the old weighting (SDPO term over the teacher's tokens only) is far from it
    old = _reference_grad(trainer, logit_ref) * n_all / 2
    assert not torch.allclose(sdpo_term["logit"], old, rtol=1e-2, atol=1e-4 * scale)


@pytest.mark.slow
def test_token_level_off_policy_uses_grpo_clipped_ratio(tmp_path):
    """The decision (algorithms.sdpo docstring, README): token-level SDPO is a drop-in GRPO
    replacement, so off-policy its advantage goes through GRPO's ε-clipped ratio.

    Per token the gradient of the loss w.r.t. log p(y_t) is −A_t ρ_t / N, and 0 where the
    clip is active (ρ > 1 + ε with A > 0, ρ < 1 − ε with A < 0); the spec's plain
    −A_t log p(y_t) would give −A_t / N everywhere. Old log-probs are set so that every
    token's ratio is outside [0.8, 1.2], some on the clipped side and some not.
    """
    trainer = _trainer(tmp_path, loss_level="token", alpha=1.0)
    spec = [("1", "abcdef", 0.0, "sol a"), ("2", "xyzw", 0.0, "feedbk")]
    rows = _rows(trainer, spec)
    batch, student, teacher = _student_teacher(trainer, rows)
    ids = batch.response_ids[..., None]
    with torch.no_grad():
        adv = (teacher.log_softmax(-1) - student.log_softmax(-1)).gather(-1, ids)[..., 0]
    # ratio e^{±1}: alternate the clipped and the unclipped side token by token
    pos = torch.arange(adv.shape[1])[None].expand_as(adv)
    clipped_side = pos % 2 == 0
    ratio_up = torch.where(clipped_side, adv > 0, adv < 0)  # ρ = e where this holds
    offset = torch.where(ratio_up, -1.0, 1.0)  # old = lp − 1 → ρ = e; old = lp + 1 → ρ = 1/e
    rows = _rows(trainer, spec, old_offset=offset)
    batch, student, teacher = _student_teacher(trainer, rows)
    n = float(batch.mask.sum())
    cut = clipped_side & batch.mask
    assert cut.any() and (~clipped_side & batch.mask).any()

    _, got = _grads(trainer, rows, on_policy=False)

    def decided():
        s = _student_teacher(trainer, rows)[1]
        lp = s.log_softmax(-1).gather(-1, ids)[..., 0]
        rho = torch.exp(lp - batch.old_logprobs)
        per_token = torch.where(batch.mask & ~cut, -adv * rho, 0.0)
        return per_token.sum() / n

    def plain():
        s = _student_teacher(trainer, rows)[1]
        lp = s.log_softmax(-1).gather(-1, ids)[..., 0]
        return torch.where(batch.mask, -adv * lp, 0.0).sum() / n

    want, spec_grad = _reference_grad(trainer, decided), _reference_grad(trainer, plain)
    scale = float(want.abs().max())
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4 * scale)
    assert not torch.allclose(got, spec_grad, rtol=1e-2, atol=1e-3 * scale)


SIGN_ROWS = [("1", "abcdefg", 0.0, "sol a"), ("2", "ab", 0.0, None), ("3", "xyzw", 0.0, "feedbk")]


def _distance_to_teacher(trainer, rows, variant, idx=None):
    """What one SDPO step must lower on the distilled positions: the top-K divergence at
    fixed indices (logit level) or Σ (log q(y_t) − log p(y_t))² (token level: the
    on-policy token-level loss is exactly its gradient)."""
    with torch.no_grad():
        batch, student, teacher = _student_teacher(trainer, rows)
        tmask = batch.mask & has_teacher(batch)[:, None]
        if variant == "token":
            ids = batch.response_ids[..., None]
            gap = (teacher.log_softmax(-1) - student.log_softmax(-1)).gather(-1, ids)[..., 0]
            return float((torch.where(tmask, gap, 0.0) ** 2).sum()), None
        idx = student_topk_indices(student, 20) if idx is None else idx
        loss, _ = distillation_loss(student, teacher, tmask, topk_indices=idx, alpha=variant)
        return float(loss), idx


def _one_step(trainer, rows, lr=0.02):
    """A normalized gradient step on the trainer's SDPO loss (on-policy)."""
    from algorithms.engine.batching import collate

    params = [p for p in trainer.unwrapped.parameters() if p.requires_grad]
    trainer.unwrapped.zero_grad(set_to_none=True)
    loss, _ = trainer._loss(collate(rows), trainer._normalizers(rows), on_policy=True)
    loss.backward()
    norm = torch.sqrt(sum((p.grad**2).sum() for p in params if p.grad is not None))
    with torch.no_grad():
        for p in params:
            if p.grad is not None:
                p.sub_(lr * p.grad / norm)
    trainer.unwrapped.zero_grad(set_to_none=True)


@pytest.mark.slow
@pytest.mark.parametrize("variant", [0.0, 0.5, 1.0, "token"])
def test_one_sdpo_step_moves_the_student_toward_the_teacher(variant, tmp_path, monkeypatch):
    """After one step the student is closer to the teacher on the distilled positions; with
    the loss's sign flipped the same check fails (a flipped sign still gives a plausible
    loss curve, as users of other implementations found)."""
    import copy

    from algorithms.sdpo import objective as sdpo_objective

    options = {"loss_level": "token"} if variant == "token" else {"alpha": variant}
    trainer = _trainer(tmp_path, top_k=20, **options)
    rows = _rows(trainer, SIGN_ROWS)
    start = copy.deepcopy(trainer.unwrapped.state_dict())

    before, idx = _distance_to_teacher(trainer, rows, variant)
    _one_step(trainer, rows)
    after, _ = _distance_to_teacher(trainer, rows, variant, idx)
    assert before > 0 and after < before, (before, after)

    # the same check catches a flipped sign
    trainer.unwrapped.load_state_dict(start)
    if variant == "token":
        real = sdpo_objective.token_level_advantages
        monkeypatch.setattr(sdpo_objective, "token_level_advantages", lambda q, p: -real(q, p))
    else:
        real_loss = sdpo_objective.distillation_loss

        def flipped(*args, **kwargs):
            loss, stats = real_loss(*args, **kwargs)
            return -loss, stats

        monkeypatch.setattr(sdpo_objective, "distillation_loss", flipped)
    assert _distance_to_teacher(trainer, rows, variant, idx)[0] == pytest.approx(before)
    _one_step(trainer, rows)
    flipped_after, _ = _distance_to_teacher(trainer, rows, variant, idx)
    assert not flipped_after < before, (before, flipped_after)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_divergence_of_far_apart_and_nearly_equal_distributions(alpha):
    """The cancellation-free KL sum (p·φ(log q − log p)) on its branches: a token the teacher
    likes e^30 times more than the student, and a teacher ~1e-6 nats away."""
    far_p = torch.tensor([[-1e-9, -25.0, -30.0, -40.0]], dtype=torch.float64)
    far_q = torch.tensor([[-0.8, -0.7, -9.0, -12.0]], dtype=torch.float64)
    near_p = torch.tensor([[-0.5, -1.0, -2.0, -3.0]], dtype=torch.float64)
    near_q = near_p + torch.tensor([1e-3, -2e-3, 0.0, 4e-3], dtype=torch.float64)
    for lp, lq, rtol in ((far_p, far_q, 1e-9), (near_p, near_q, 1e-7)):
        lp, lq = lp.log_softmax(-1), lq.log_softmax(-1)
        want = np_divergence(lp.exp().numpy(), lq.exp().numpy(), alpha)
        got = sdpo.divergence(lp, lq, alpha).numpy()
        np.testing.assert_allclose(got, want, rtol=rtol, atol=0)
    # float32, nearly equal: within 1e-4 of the float64 value (the plain Σ p log(p/q) is 0.8%
    # off here)
    g = torch.Generator().manual_seed(15)
    x = torch.randn(64, 50, generator=g, dtype=torch.float64) * 3
    y = x + torch.randn(64, 50, generator=g, dtype=torch.float64) * 3e-3
    lp, lq = x.log_softmax(-1), y.log_softmax(-1)
    want = sdpo.divergence(lp, lq, alpha).sum()
    got = sdpo.divergence(x.float().log_softmax(-1), y.float().log_softmax(-1), alpha).sum()
    assert float(got) == pytest.approx(float(want), rel=1e-4)
