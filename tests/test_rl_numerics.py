"""Advantage estimators and RL losses (the numerical core of GRPO and PPO) on hand-built cases."""

from __future__ import annotations

import pytest
import torch

from reinforge.algos.grpo import dynamic_sampling_keep, group_advantages
from reinforge.algos.losses import clipped_policy_loss
from reinforge.algos.ppo import gae, normalize_advantages, value_loss


def _gae_loop(r, v, nv, term, end, gamma, lam):
    B, T = r.shape
    adv = torch.zeros(B, T)
    for b in range(B):
        nxt = 0.0
        for t in reversed(range(T)):
            boot = 0.0 if term[b, t] else gamma * nv[b, t]
            delta = r[b, t] + boot - v[b, t]
            nxt = delta + (0.0 if end[b, t] else gamma * lam * nxt)
            adv[b, t] = nxt
    return adv


def test_gae_hand_computed():
    r = torch.tensor([[0.0, 0.0, 1.0]])
    v = torch.tensor([[0.5, 0.6, 0.7]])
    nv = torch.tensor([[0.6, 0.7, 0.0]])
    term = torch.tensor([[False, False, True]])
    adv, ret = gae(r, v, nv, term, term, gamma=0.9, lam=0.5)
    d2 = 1.0 - 0.7
    d1 = 0.9 * 0.7 - 0.6
    d0 = 0.9 * 0.6 - 0.5
    a2, a1 = d2, d1 + 0.45 * d2
    a0 = d0 + 0.45 * a1
    assert torch.allclose(adv, torch.tensor([[a0, a1, a2]]), atol=1e-6)
    assert torch.allclose(ret, adv + v)


def test_gae_matches_loop_with_truncation_bootstrap_and_resets():
    g = torch.Generator().manual_seed(0)
    r = torch.rand(5, 12, generator=g)
    v = torch.rand(5, 12, generator=g)
    nv = torch.rand(5, 12, generator=g)
    term = torch.rand(5, 12, generator=g) < 0.15
    trunc = (torch.rand(5, 12, generator=g) < 0.15) & ~term
    end = term | trunc
    adv, _ = gae(r, v, nv, term, end, gamma=0.99, lam=0.95)
    assert torch.allclose(adv, _gae_loop(r, v, nv, term, end, 0.99, 0.95), atol=1e-5)
    # truncation bootstraps from the last state's value; termination does not
    one_r, one_v, one_nv = torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1, 1)
    yes = torch.ones(1, 1, dtype=torch.bool)
    assert gae(one_r, one_v, one_nv, ~yes, yes, gamma=0.9)[0].item() == pytest.approx(0.9)
    assert gae(one_r, one_v, one_nv, yes, yes, gamma=0.9)[0].item() == pytest.approx(0.0)


def test_gae_masks_steps_after_the_episode():
    r = torch.tensor([[0.0, 1.0, 5.0, 5.0]])
    v = torch.zeros(1, 4)
    end = torch.tensor([[False, True, False, False]])
    valid = torch.tensor([[True, True, False, False]])
    adv, _ = gae(r, v, torch.zeros(1, 4), end, end, gamma=1.0, lam=1.0, valid=valid)
    assert adv.tolist() == [[1.0, 1.0, 0.0, 0.0]], "rewards after the end neither leak back nor count"


def test_gae_a_chunk_lost_to_a_fault_passes_nothing_back():
    """A worker died under step 2: it is invalid and truncated with no bootstrap value; step 1 bootstraps from
    V(s_2) (the observation step 2 acted on) and nothing of step 2's -V(s_2) leaks into steps 0-1."""
    r = torch.tensor([[0.0, 1.0, 0.0]])
    v = torch.tensor([[0.5, 0.5, 2.0]])
    nv = torch.tensor([[0.5, 2.0, 0.0]])  # the collector's next values: V(s_1), V(s_2), none for the lost chunk
    end = torch.tensor([[False, False, True]])
    valid = torch.tensor([[True, True, False]])
    adv, _ = gae(r, v, nv, torch.zeros_like(end), end, gamma=1.0, lam=1.0, valid=valid)
    assert adv.tolist() == [[2.5, 2.5, 0.0]]


def test_group_advantages_and_dynamic_sampling():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0]])
    adv = group_advantages(rewards)
    std0 = torch.tensor([1.0, 0.0, 0.0, 1.0]).std(unbiased=True)
    assert torch.allclose(adv[0], (rewards[0] - 0.5) / (std0 + 1e-6))
    assert torch.allclose(adv[1], torch.zeros(4)), "an all-success group has no signal"
    assert adv[2, 3] > 0 > adv[2, 0]
    assert dynamic_sampling_keep(rewards).tolist() == [True, False, True]
    eight = torch.tensor([[0.0] * 8, [1.0] * 8, [1.0] + [0.0] * 7, [1.0] * 7 + [0.0]])
    assert dynamic_sampling_keep(eight).tolist() == [False, False, True, True]
    with pytest.raises(ValueError, match="G >= 2"):
        group_advantages(torch.ones(3, 1))


def test_group_advantages_of_continuous_rewards():
    """Equal continuous rewards that float32 rounding made unequal carry no signal; real spreads keep theirs."""
    x = torch.full((8,), -0.3)
    rounded = torch.where(torch.arange(8) % 2 == 0, x, torch.nextafter(x, torch.zeros(8)))
    assert rounded.std() > 0  # the rounding is there ...
    big = torch.full((8,), 1234.5) + torch.where(torch.arange(8) % 3 == 0, 1.2e-4, 0.0)  # 1 ulp at that scale
    adv = group_advantages(torch.stack([rounded, big]))
    assert adv.dtype == torch.float32 and torch.equal(adv, torch.zeros(2, 8))  # ... and gives no advantage
    spread = torch.tensor([[-0.31, -0.30, -0.29, -0.30], [0.5, 0.25, 0.75, 0.5]])
    adv = group_advantages(spread)
    ref = (spread.double() - spread.double().mean(1, keepdim=True)) / (spread.double().std(1, keepdim=True) + 1e-6)
    assert torch.allclose(adv.double(), ref, atol=1e-6)
    assert torch.allclose(adv.sum(1), torch.zeros(2), atol=1e-5) and (adv.std(1) - 1).abs().max() < 1e-3


def test_clipped_loss_on_hand_built_ratios():
    def loss_of(ratio, adv, **kw):
        lp_old = torch.zeros(1, 1)
        lp_new = torch.log(torch.tensor([[ratio]]))
        return clipped_policy_loss(lp_new, lp_old, torch.tensor([[adv]]), torch.ones(1, 1, dtype=torch.bool),
                                   **kw)[0].item()

    assert loss_of(1.5, 1.0) == pytest.approx(-1.28)  # clip-higher: positive advantage capped at 1 + 0.28
    assert loss_of(1.1, 1.0) == pytest.approx(-1.1)  # inside the clip range
    assert loss_of(0.5, 1.0) == pytest.approx(-0.5)  # pessimistic: the unclipped term is larger
    assert loss_of(0.5, -1.0) == pytest.approx(0.8)  # negative advantage: clipped at 1 - 0.2
    assert loss_of(1.5, -1.0, clip_high=0.2) == pytest.approx(1.5)
    assert loss_of(5.0, -1.0, clip_high=0.2) == pytest.approx(5.0)
    assert loss_of(5.0, -1.0, clip_high=0.2, dual_clip=3.0) == pytest.approx(3.0)  # dual clip caps it
    assert loss_of(5.0, 1.0, dual_clip=3.0) == pytest.approx(-1.28)  # dual clip leaves A > 0 alone


def test_clipped_loss_masks_and_averages_per_trajectory():
    lp_old = torch.zeros(2, 4)
    lp_new = torch.zeros(2, 4)
    adv = torch.tensor([[1.0], [2.0]])
    mask = torch.tensor([[True, True, True, True], [True, False, False, False]])
    loss, m = clipped_policy_loss(lp_new, lp_old, adv, mask)
    assert loss.item() == pytest.approx(-(1.0 + 2.0) / 2), "each trajectory weighs the same"
    loss_all, _ = clipped_policy_loss(lp_new, lp_old, adv, mask, per_trajectory=False)
    assert loss_all.item() == pytest.approx(-(4 * 1.0 + 2.0) / 5)
    garbage = lp_new.clone()
    garbage[1, 1:] = 50.0  # masked entries may hold anything
    assert clipped_policy_loss(garbage, lp_old, adv, mask)[0].item() == pytest.approx(loss.item())
    assert m["train/clip_frac"] == 0.0 and m["train/approx_kl"] == pytest.approx(0.0)
    # token-level log-probs (B, T, H, D) with (B, T, 1, 1) advantages and a (B, T, 1, 1) step mask
    tok_new = torch.zeros(2, 4, 3, 2, requires_grad=True)
    l_tok, _ = clipped_policy_loss(tok_new, torch.zeros(2, 4, 3, 2), adv[..., None, None].expand(2, 4, 1, 1),
                                   mask[..., None, None])
    l_tok.backward()
    assert (tok_new.grad[1, 1:] == 0).all() and (tok_new.grad[0] != 0).all()


def test_value_loss_and_advantage_normalisation():
    v, old, ret = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]), torch.tensor([0.0, 0.5])
    mask = torch.tensor([True, True])
    # entry 0: unclipped huber(1) = 0.5, clipped V = 0.2 -> huber 0.02; max = 0.5. entry 1: 0.125 both.
    assert value_loss(v, old, ret, mask).item() == pytest.approx((0.5 + 0.125) / 2)
    # entry 0 alone, clipping makes it worse: V = 0.5 -> clipped 0.2, return 1.0 -> max(0.125, 0.32)
    assert value_loss(torch.tensor([0.5]), torch.tensor([0.0]), torch.tensor([1.0]),
                      torch.tensor([True])).item() == pytest.approx(0.32)
    big = value_loss(torch.tensor([30.0]), torch.tensor([30.0]), torch.tensor([0.0]), torch.tensor([True]))
    assert big.item() == pytest.approx(10 * (30 - 5)), "Huber is linear beyond delta"
    adv = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    valid = torch.tensor([[True, True, True, False]])
    n = normalize_advantages(adv, valid)
    assert n[0, 3] == 0 and n[0, :3].mean().abs() < 1e-6 and (n[0, :3].std(unbiased=False) - 1).abs() < 1e-4


def test_lr_schedules_decay_from_lr_to_the_final_ratio():
    from reinforge.algos.base import RLOptimConfig, lr_factor
    from reinforge.config import ConfigError

    const, lin, cos = (RLOptimConfig(schedule=s, final_lr_ratio=0.1) for s in ("constant", "linear", "cosine"))
    assert [lr_factor(const, i, 5) for i in range(5)] == [1.0] * 5
    assert [round(lr_factor(lin, i, 5), 6) for i in range(5)] == [1.0, 0.775, 0.55, 0.325, 0.1]
    assert lr_factor(cos, 0, 5) == pytest.approx(1.0) and lr_factor(cos, 4, 5) == pytest.approx(0.1)
    assert lr_factor(cos, 2, 5) == pytest.approx(0.55) and lr_factor(cos, 1, 5) > lr_factor(lin, 1, 5)
    with pytest.raises(ConfigError, match="optim.schedule"):
        RLOptimConfig(schedule="step")
