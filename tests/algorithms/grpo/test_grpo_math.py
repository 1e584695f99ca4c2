"""GRPO math against hand-written loop references on fixed tensors."""

from __future__ import annotations

import doctest
import math

import pytest
import torch

from algorithms import grpo
from algorithms.grpo import GRPOConfig, aggregate, group_advantages, groups_with_signal, policy_loss
from rlrf.errors import ConfigError

MODES = ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"]


def fixed_batch(seed: int = 0, B: int = 4, T: int = 6):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    # Ratios spread over [0.5, 1.6] so that both clip sides are hit, none exactly at a boundary.
    logp = old + (torch.rand(B, T, generator=g, dtype=torch.float64) - 0.45) * 1.0
    adv = torch.tensor([1.5, -0.7, 0.3, -2.0], dtype=torch.float64)[:B]
    lengths = torch.tensor([6, 3, 1, 4])[:B]
    mask = torch.arange(T)[None, :] < lengths[:, None]
    ref = old + (torch.rand(B, T, generator=g, dtype=torch.float64) - 0.5) * 0.4
    return logp, old, adv, mask, ref


def loop_reference(logp, old, adv, mask, mode, eps_low, eps_high, ref=None, beta=0.0):
    """Loss and analytic d loss / d logp, with plain Python loops over the tokens."""
    B, T = logp.shape
    per_tok = [[0.0] * T for _ in range(B)]
    dper = [[0.0] * T for _ in range(B)]
    for b in range(B):
        a = float(adv[b])
        for t in range(T):
            if not mask[b, t]:
                continue
            rho = math.exp(float(logp[b, t]) - float(old[b, t]))
            clipped = min(max(rho, 1 - eps_low), 1 + eps_high)
            per_tok[b][t] = -min(rho * a, clipped * a)
            active = (a > 0 and rho > 1 + eps_high) or (a < 0 and rho < 1 - eps_low)
            dper[b][t] = 0.0 if active else -a * rho
            if beta:
                d = float(ref[b, t]) - float(logp[b, t])
                per_tok[b][t] += beta * (math.exp(d) - d - 1)
                dper[b][t] += beta * (1 - math.exp(d))
    lengths = [int(mask[b].sum()) for b in range(B)]
    if mode == "token_mean":
        scale = [[1 / sum(lengths)] * T for _ in range(B)]
    elif mode == "seq_mean_token_mean":
        scale = [[1 / (B * max(lengths[b], 1))] * T for b in range(B)]
    else:
        scale = [[1 / (B * T)] * T for _ in range(B)]
    loss = sum(per_tok[b][t] * scale[b][t] for b in range(B) for t in range(T))
    grad = torch.tensor(
        [[dper[b][t] * scale[b][t] for t in range(T)] for b in range(B)], dtype=torch.float64
    )
    return loss, grad


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("eps_low", "eps_high"), [(0.2, 0.2), (0.2, 0.28)])
def test_loss_and_gradient_match_loop_reference(mode, eps_low, eps_high):
    logp, old, adv, mask, _ = fixed_batch()
    logp = logp.clone().requires_grad_(True)
    loss, stats = policy_loss(
        logp, old, adv, mask, clip_low=eps_low, clip_high=eps_high, aggregation=mode
    )
    loss.backward()
    ref_loss, ref_grad = loop_reference(logp.detach(), old, adv, mask, mode, eps_low, eps_high)
    assert loss.item() == pytest.approx(ref_loss, rel=1e-12, abs=1e-12)
    torch.testing.assert_close(logp.grad, ref_grad, rtol=1e-10, atol=1e-12)
    # Without the KL term the objective is exactly the negated loss.
    assert stats["policy_objective"].item() == pytest.approx(-ref_loss, rel=1e-12, abs=1e-12)
    assert 0 < stats["clip_frac"].item() < 1  # the fixture hits the clip on both sides


@pytest.mark.parametrize("mode", MODES)
def test_k3_kl_term_matches_loop_reference(mode):
    logp, old, adv, mask, ref = fixed_batch(seed=1)
    logp = logp.clone().requires_grad_(True)
    loss, stats = policy_loss(logp, old, adv, mask, ref_logprobs=ref, kl_coef=0.1, aggregation=mode)
    loss.backward()
    ref_loss, ref_grad = loop_reference(
        logp.detach(), old, adv, mask, mode, 0.2, 0.2, ref=ref, beta=0.1
    )
    assert loss.item() == pytest.approx(ref_loss, rel=1e-12, abs=1e-12)
    torch.testing.assert_close(logp.grad, ref_grad, rtol=1e-10, atol=1e-12)
    assert stats["kl_ref"].item() > 0
    with pytest.raises(ValueError, match="ref_logprobs"):
        policy_loss(logp, old, adv, mask, kl_coef=0.1)


def test_clip_fractions_on_hand_made_ratios():
    # ratios e^{±0.5}: 1.65 (above 1.2) and 0.61 (below 0.8); the clip is active only where the
    # advantage's sign makes it cut the gradient.
    old = torch.zeros(2, 2, dtype=torch.float64)
    logp = torch.tensor([[0.5, -0.5], [0.5, -0.5]], dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    mask = torch.ones(2, 2, dtype=torch.bool)
    _, stats = policy_loss(logp, old, adv, mask)
    assert stats["clip_frac_high"].item() == pytest.approx(0.25)  # (0,0): ρ>1.2, A>0
    assert stats["clip_frac_low"].item() == pytest.approx(0.25)  # (1,1): ρ<0.8, A<0
    assert stats["clip_frac"].item() == pytest.approx(0.5)
    r = math.exp(0.5)
    expected_kl = ((r - 1 - 0.5) + (1 / r - 1 + 0.5)) / 2
    assert stats["approx_kl_old"].item() == pytest.approx(expected_kl)


def test_first_inner_step_loss_is_minus_mean_advantage_and_gradient_is_policy_gradient():
    logp, _, adv, mask, _ = fixed_batch()
    lp = logp.clone().requires_grad_(True)
    loss, stats = policy_loss(lp, logp, adv, mask)
    loss.backward()
    n = mask.sum()
    assert loss.item() == pytest.approx(-(adv[:, None] * mask).sum().item() / n.item())
    torch.testing.assert_close(lp.grad, -(adv[:, None] * mask) / n)
    assert stats["clip_frac"].item() == 0 and stats["approx_kl_old"].item() == 0


def split_and_accumulate(logp, old, adv, mask, ref, mode, sizes):
    lp = logp.clone().requires_grad_(True)
    normalizer = grpo.default_normalizer(mask, mode)
    total, stats_sum, start = 0.0, {}, 0
    for size in sizes:
        sl = slice(start, start + size)
        loss, stats = policy_loss(
            lp[sl],
            old[sl],
            adv[sl],
            mask[sl],
            ref_logprobs=ref[sl],
            kl_coef=0.05,
            aggregation=mode,
            normalizer=normalizer,
        )
        loss.backward()
        total += loss.item()
        for k, v in stats.items():
            stats_sum[k] = stats_sum.get(k, 0.0) + v.item()
        start += size
    return total, lp.grad, stats_sum


@pytest.mark.parametrize("mode", MODES)
def test_micro_batches_sum_to_the_whole_batch(mode):
    logp, old, _, mask, ref = fixed_batch(seed=3, B=4)
    logp = torch.cat([logp, logp.flip(1)])
    old, ref, mask = torch.cat([old, old]), torch.cat([ref, ref]), torch.cat([mask, mask.flip(0)])
    adv = torch.tensor([1.5, -0.7, 0.3, -2.0, 0.9, 0.0, -0.4, 1.1], dtype=torch.float64)
    whole, whole_grad, whole_stats = split_and_accumulate(logp, old, adv, mask, ref, mode, [8])
    for sizes in ([1] * 8, [3, 2, 3], [5, 3]):
        loss, grad, stats = split_and_accumulate(logp, old, adv, mask, ref, mode, sizes)
        assert loss == pytest.approx(whole, rel=1e-12, abs=1e-14)
        torch.testing.assert_close(grad, whole_grad, rtol=1e-12, atol=1e-15)
        for k in whole_stats:
            assert stats[k] == pytest.approx(whole_stats[k], rel=1e-12, abs=1e-14), k


def test_normalizer_none_is_the_micro_batch_own_value():
    logp, old, adv, mask, _ = fixed_batch()
    # fixed_batch: B = 4 rows of width T = 6 with 6 + 3 + 1 + 4 = 14 unmasked tokens; the
    # normalizers written out by hand, not taken from the code under test.
    by_hand = {"token_mean": 14.0, "seq_mean_token_mean": 4.0, "seq_mean_token_sum_norm": 24.0}
    for mode in MODES:
        assert grpo.default_normalizer(mask, mode) == by_hand[mode]
        a, _ = policy_loss(logp, old, adv, mask, aggregation=mode)
        b, _ = policy_loss(logp, old, adv, mask, aggregation=mode, normalizer=by_hand[mode])
        assert a.item() == b.item()
        # and the normalizer matters: twice as large halves the loss
        c, _ = policy_loss(logp, old, adv, mask, aggregation=mode, normalizer=2 * by_hand[mode])
        assert c.item() == pytest.approx(a.item() / 2, rel=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_masked_positions_contribute_exactly_nothing(mode):
    logp, old, _, mask, ref = fixed_batch(seed=4)
    adv = torch.tensor([1.5, -0.7, 0.3, -2.0], dtype=torch.float64)[:, None].expand(4, 6).clone()
    lp = logp.clone().requires_grad_(True)
    clean, clean_stats = policy_loss(
        lp, old, adv, mask, ref_logprobs=ref, kl_coef=0.1, aggregation=mode
    )
    clean.backward()
    clean_grad = lp.grad.clone()

    garbage = ~mask
    lp2 = logp.masked_fill(garbage, 80.0).requires_grad_(True)
    old2 = old.masked_fill(garbage, float("nan"))
    adv2 = adv.masked_fill(garbage, 1e6)
    ref2 = ref.masked_fill(garbage, -1e4)
    dirty, dirty_stats = policy_loss(
        lp2, old2, adv2, mask, ref_logprobs=ref2, kl_coef=0.1, aggregation=mode
    )
    dirty.backward()
    assert dirty.item() == clean.item()
    assert torch.equal(lp2.grad, clean_grad)
    assert (lp2.grad[garbage] == 0).all()
    for k, v in clean_stats.items():
        assert dirty_stats[k].item() == v.item(), k


def test_fully_masked_batch_gives_zero_loss_and_gradient():
    logp, old, adv, _, _ = fixed_batch()
    lp = logp.clone().requires_grad_(True)
    mask = torch.zeros_like(lp, dtype=torch.bool)
    loss, _ = policy_loss(lp, old, adv, mask)
    loss.backward()
    assert loss.item() == 0.0 and (lp.grad == 0).all()


def test_aggregate_modes_by_hand():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    m = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert aggregate(x, m, "token_mean").item() == pytest.approx(10 / 4)
    assert aggregate(x, m, "seq_mean_token_mean").item() == pytest.approx((2 + 4) / 2)
    assert aggregate(x, m, "seq_mean_token_sum_norm").item() == pytest.approx(10 / 6)
    assert aggregate(x, m, "token_mean", normalizer=20.0).item() == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="aggregation"):
        aggregate(x, m, "sum")  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_aggregation_weights_reproduce_aggregate(mode):
    """Σ w ℓ equals aggregate(ℓ) for any ℓ: the weights SDPO's mixed logit-level term uses."""
    g = torch.Generator().manual_seed(3)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    for normalizer in (None, 17.0, 0.0):
        w = grpo.aggregation_weights(mask, mode, normalizer, dtype=torch.float64)
        assert (w[~mask] == 0).all()
        for _ in range(3):
            x = torch.randn(4, 4, generator=g, dtype=torch.float64)
            want = aggregate(x, mask, mode, normalizer)
            assert float((w * x).sum()) == pytest.approx(float(want), rel=1e-12, abs=1e-15)
    with pytest.raises(ConfigError, match="aggregation"):
        grpo.aggregation_weights(mask, "mean", 1.0)


# --- advantages ---------------------------------------------------------------------------


def test_group_advantages_by_hand_with_non_contiguous_ids():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.5], dtype=torch.float64)
    ids = torch.tensor([7, 7, 7, 3, 3, 42])
    a = group_advantages(r, ids)
    torch.testing.assert_close(
        a, torch.tensor([2 / 3, -1 / 3, -1 / 3, -0.5, 0.5, 0.0], dtype=torch.float64)
    )
    g = group_advantages(r, ids, scale="group", eps=0.0)
    std7 = torch.tensor([1.0, 0.0, 0.0]).std().item()
    std3 = torch.tensor([0.0, 1.0]).std().item()
    expected = [2 / 3 / std7, -1 / 3 / std7, -1 / 3 / std7, -0.5 / std3, 0.5 / std3, 0.0]
    torch.testing.assert_close(g, torch.tensor(expected, dtype=torch.float64))
    b = group_advantages(r, ids, scale="batch", eps=0.0)
    torch.testing.assert_close(b, a / r.std())


@pytest.mark.parametrize("scale", ["none", "group", "batch"])
def test_all_equal_groups_get_exactly_zero(scale):
    r = torch.tensor([0.1, 0.1, 0.1, 0.7, 0.7, 0.3, 1.0, 0.0])
    ids = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3])
    a = group_advantages(r, ids, scale=scale)
    assert (a[:6] == 0).all()  # two all-equal groups and a group of one
    assert (a[6:] != 0).all()
    assert groups_with_signal(r, ids).tolist() == [False] * 6 + [True, True]


def test_group_advantages_rejects_bad_input():
    with pytest.raises(ValueError, match="missing reward"):
        group_advantages(torch.tensor([1.0, float("nan")]), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="1-D"):
        group_advantages(torch.ones(2, 2), torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ConfigError, match="scale"):
        group_advantages(torch.ones(2), torch.zeros(2, dtype=torch.long), scale="std")  # type: ignore[arg-type]


def test_config_defaults_and_validation():
    c = GRPOConfig()
    assert (c.advantage_scale, c.clip_low, c.clip_high, c.kl_coef, c.aggregation) == (
        "none",
        0.2,
        0.2,
        0.0,
        "token_mean",
    )
    assert c.filter_zero_advantage_groups is False
    with pytest.raises(ConfigError, match="aggregation"):
        GRPOConfig(aggregation="mean")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="clip_low"):
        GRPOConfig(clip_low=1.5)


def test_doctests():
    assert doctest.testmod(grpo).failed == 0
