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


@pytest.mark.parametrize("kind", ["token", "flow"])
def test_state_dims_that_never_varied_are_ignored(kind):
    """A state dimension constant in the data (std 0) is standardised to 0 whatever it reads later, so an unseen
    value (a turned gripper) is not amplified by the 1e-3 std floor; the varying dims still count."""
    from reinforge.policies import Normalizer, PolicyConfig, make_policy

    torch.manual_seed(0)
    cfg = PolicyConfig(kind=kind, image_size=(32, 32), d_model=32, heads=2, fusion_layers=1, channels=(16, 16),
                       horizon=4, execute_steps=2, expert_layers=1, num_steps=3)
    norm = Normalizer([-1.0] * 7, [1.0] * 7, [0.0, 0.0, 0.1, 3.14159, 0.0, 0.0, 0.02, -0.02],
                      [0.1, 0.1, 0.05, 0.0, 0.0, 0.0, 0.02, 0.02])
    policy = make_policy(cfg, norm).eval()
    obs = {"image": torch.randint(0, 255, (2, 2, 3, 32, 32), dtype=torch.uint8), "instruction": ["a", "b"],
           "task_id": torch.zeros(2, dtype=torch.int64), "state": torch.tensor(norm.state_mean).repeat(2, 1)}
    turned = dict(obs, state=obs["state"].clone())
    turned["state"][:, 4] = 0.39  # axis-angle y of a gripper turned 0.25 rad: 390 std away under the floor
    _, _, s = policy.prepare(turned)
    assert torch.equal(s[:, 3:6], torch.zeros(2, 3))

    def act(o):  # the flow policy's greedy chain starts from noise: the same noise for every call
        torch.manual_seed(1)
        with torch.no_grad():
            return policy.act(o).actions

    assert torch.equal(act(obs), act(turned))
    moved = dict(obs, state=obs["state"].clone())
    moved["state"][:, 0] += 0.2  # a dim that varied in the data still changes the action
    assert not torch.equal(act(obs), act(moved))


def test_expert_cached_cross_attention_matches_the_decoder():
    """The denoising loop projects the memory's keys / values once (``project_memory``); the cached path must
    give what ``nn.TransformerDecoder`` gives, padding included, and refuse training mode (no dropout)."""
    from reinforge.policies.flow import ActionExpert

    torch.manual_seed(0)
    e = ActionExpert(d_model=32, heads=4, layers=2, horizon=6, action_dim=7, dropout=0.1).eval()
    mem = torch.randn(5, 11, 32)
    pad = torch.zeros(5, 11, dtype=torch.bool)
    pad[:, 8:] = True
    pad[2, 3:] = True
    x, t = torch.randn(5, 6, 7), torch.rand(5)
    with torch.no_grad():
        v0, h0 = e(x, t, mem, pad)
        v1, h1 = e(x, t, mem, pad, e.project_memory(mem))
        # padded memory tokens are ignored: changing them changes nothing
        mem2 = torch.where(pad[..., None], torch.randn_like(mem), mem)
        v2, _ = e(x, t, mem2, pad, e.project_memory(mem2))
    assert torch.allclose(v0, v1, atol=1e-6) and torch.allclose(h0, h1, atol=1e-6)
    assert torch.allclose(v1, v2, atol=1e-6)
    with pytest.raises(RuntimeError, match="inference"):
        e.train()(x, t, mem, pad, e.project_memory(mem))
