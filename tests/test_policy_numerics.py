"""Pure-function numerics of the action heads against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from reinforge.policies.flow import (
    bounded_sigma,
    flow_sde_step,
    gaussian_entropy,
    gaussian_log_prob,
    ode_step,
    sde_sigma,
    time_grid,
)
from reinforge.policies.token import bin_centers, bin_tokens, token_log_probs


def test_time_grid_and_sde_sigma():
    g = time_grid(4)
    assert torch.allclose(g, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    s = sde_sigma(g, 0.5)
    # t = 1 uses t_1 = 0.75 in the denominator: 0.5 * sqrt(1 / 0.25) = 1.0
    assert s[0].item() == pytest.approx(1.0)
    assert s[1].item() == pytest.approx(0.5 * math.sqrt(0.75 / 0.25))
    assert s[3].item() == pytest.approx(0.5 * math.sqrt(0.25 / 0.75))


def test_flow_sde_step_matches_hand_computation():
    x, v, t, delta, sigma = (torch.tensor(0.5), torch.tensor(0.2), torch.tensor(0.6), torch.tensor(0.2),
                             torch.tensor(0.3))
    mean, std = flow_sde_step(x, v, t, delta, sigma)
    # mean = x - delta v - (sigma^2 delta / 2t)(x + (1 - t) v) = 0.46 - 0.015 * 0.58
    assert mean.item() == pytest.approx(0.46 - 0.015 * 0.58, abs=1e-7)
    assert std.item() == pytest.approx(math.sqrt(0.2) * 0.3, abs=1e-7)
    # the x0/x1-prediction form of METHODS.md gives the same mean
    x0, x1 = x - t * v, x + (1 - t) * v
    alt = x0 * (1 - t + delta) + x1 * (t - delta - sigma**2 * delta / (2 * t))
    assert mean.item() == pytest.approx(alt.item(), abs=1e-7)
    # with sigma = 0 the SDE step is the ODE step
    m0, s0 = flow_sde_step(x, v, t, delta, torch.tensor(0.0))
    assert m0.item() == pytest.approx(ode_step(x, v, delta).item()) and s0.item() == 0.0


def test_ode_integrates_a_straight_flow_exactly():
    a, eps = torch.randn(3, 4, 2), torch.randn(3, 4, 2)
    g = time_grid(5)
    x = eps.clone()
    for k in range(5):
        x = ode_step(x, eps - a, g[k] - g[k + 1])  # the true velocity of the straight path
    assert torch.allclose(x, a, atol=1e-6)


def test_gaussian_log_prob_and_entropy():
    x, mean, std = torch.randn(20), torch.randn(20), torch.rand(20) + 0.1
    ref = torch.distributions.Normal(mean, std)
    assert torch.allclose(gaussian_log_prob(x, mean, std), ref.log_prob(x), atol=1e-6)
    assert torch.allclose(gaussian_entropy(std), ref.entropy(), atol=1e-6)


def test_flow_noise_sigma_is_bounded():
    raw = torch.tensor([-1e4, -3.0, 0.0, 3.0, 1e4])
    s = bounded_sigma(raw, 0.08, 0.16)
    assert s[0].item() == pytest.approx(0.08) and s[-1].item() == pytest.approx(0.16)
    assert (s >= 0.08 - 1e-7).all() and (s <= 0.16 + 1e-7).all() and (s.diff() >= 0).all()
    # midpoint: logvar halfway between log(0.08^2) and log(0.16^2)
    assert s[2].item() == pytest.approx(math.sqrt(0.08 * 0.16), rel=1e-5)


def test_token_bins_and_log_probs():
    x = torch.tensor([-1.0, -0.999, 0.0, 0.5, 1.0])
    t = bin_tokens(x, 256)
    assert t.tolist() == [0, 0, 128, 192, 255]
    assert (bin_centers(t, 256) - x).abs().max() <= 1 / 256 + 1e-6
    logits = torch.randn(2, 3, 4, 256)
    tokens = torch.randint(0, 256, (2, 3, 4))
    lp, ent = token_log_probs(logits, tokens, 1.6)
    ref = torch.distributions.Categorical(logits=logits / 1.6)
    assert torch.allclose(lp, ref.log_prob(tokens), atol=1e-5)
    assert torch.allclose(ent, ref.entropy(), atol=1e-5)
    # chunk log-prob is the sum of the token log-probs
    assert torch.allclose(lp.sum((1, 2)), ref.log_prob(tokens).sum((1, 2)), atol=1e-4)
