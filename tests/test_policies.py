"""VLA policies: log-prob recomputation, overfitting, masking, save/load, errors."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from reinforge.config import ConfigError, load_config
from reinforge.envs import TabletopEnv
from reinforge.policies import Normalizer, PolicyConfig, load_pretrained, make_policy
from reinforge.types import OBS_IMAGE, OBS_INSTRUCTION, OBS_STATE

# the OpenVLA-OFT style policy (transformers' Llama + DINOv2 + SigLIP, tiny random towers) passes the same tests
OFT = pytest.param("oft", marks=pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                                                   reason="needs transformers (pip install reinforge[oft])"))

SMALL = dict(image_size=(32, 32), d_model=32, heads=2, fusion_layers=1, channels=(16, 16), horizon=4,
             execute_steps=3, num_steps=4)
# roll/pitch/yaw never vary in the tabletop data: constant dims are masked
NORM = Normalizer([-1, -1, -1, 0, 0, 0, -1], [1, 1, 1, 0, 0, 0, 1], [0.0] * 8, [1.0] * 8)


def _obs(n=6, size=32):
    env = TabletopEnv("spatial", n, image_size=size)
    return env.reset(torch.arange(n) % 10, torch.arange(n))


def _policy(kind, **kw):
    torch.manual_seed(0)
    return make_policy(PolicyConfig(kind=kind, **{**SMALL, **kw}), NORM)


@pytest.mark.parametrize("kind,mode,extra", [
    ("token", "sample", {"temperature": 1.6}), ("token", "sample", {"temperature": 1.0}),
    ("token", "greedy", {}), ("flow", "sample", {"sampler": "sde"}), ("flow", "sample", {"sampler": "noise"}),
    *[pytest.param("oft", mode, extra, marks=OFT.marks) for mode, extra in (
        ("sample", {"temperature": 1.6}), ("sample", {"temperature": 1.0}), ("greedy", {}))],
])
def test_evaluate_recomputes_the_rollout_log_prob(kind, mode, extra):
    policy = _policy(kind).eval()
    obs = _obs()
    out = policy.act(obs, mode=mode, **extra)
    assert out.actions.shape == (6, 3, 7) and out.value.shape == (6,)
    lp, ent, value = policy.evaluate(obs, out.replay)
    assert torch.allclose(lp, out.log_prob, atol=1e-5), (lp - out.log_prob).abs().max()
    assert ent.shape == (6,) and torch.isfinite(ent).all()
    # a sub-batch in another order recomputes the same values: the replay tensors are all it needs
    idx = torch.tensor([4, 1, 3])
    sub = {OBS_IMAGE: obs[OBS_IMAGE][idx], OBS_STATE: obs[OBS_STATE][idx],
           OBS_INSTRUCTION: [obs[OBS_INSTRUCTION][i] for i in idx]}
    lp2, _, _ = policy.evaluate(sub, {k: v[idx] for k, v in out.replay.items()})
    assert torch.allclose(lp2, out.log_prob[idx], atol=1e-5)


@pytest.mark.parametrize("kind", ["token", OFT])
def test_token_level_log_probs_sum_to_chunk_log_prob(kind):
    policy = _policy(kind).eval()
    obs = _obs()
    out = policy.act(obs, mode="sample", temperature=1.6)
    per_token, _, _ = policy.evaluate(obs, out.replay, logprob="token")
    assert per_token.shape == (6, 4, 7)
    assert torch.allclose(per_token.sum((1, 2)), out.log_prob, atol=1e-5)
    assert (per_token[:, 3] == 0).all(), "steps past execute_steps carry no log-prob"
    assert (per_token[:, :, 3:6] == 0).all(), "constant action dims carry no log-prob"


def test_flow_sde_log_prob_depends_on_the_stochastic_step_only():
    policy = _policy("flow").eval()
    obs = _obs()
    out = policy.act(obs, mode="sample", sampler="sde")
    replay = {k: v.clone() for k, v in out.replay.items()}
    k = replay["k_star"]
    # perturbing a chain entry before step k* changes nothing that the log-prob reads except x_{k*}
    ar = torch.arange(6)
    replay["chain"][ar, k + 1] += 0.5
    lp, _, _ = policy.evaluate(obs, replay)
    assert (lp < out.log_prob).all(), "moving x_{k*+1} away from the mean lowers its log-prob"


def test_greedy_is_deterministic_and_in_range():
    policy = _policy("flow").eval()
    obs = _obs()
    a = policy.act(obs, mode="greedy", generator=torch.Generator().manual_seed(1)).actions
    b = policy.act(obs, mode="greedy", generator=torch.Generator().manual_seed(1)).actions
    c = policy.act(obs, mode="greedy", generator=torch.Generator().manual_seed(2)).actions
    # the greedy ODE is a function of its initial noise: the same noise, the same chunk; other noise, another one
    # (why evaluations seed their stream: an unseeded flow evaluation is a different draw every time)
    assert torch.equal(a, b) and not torch.equal(a, c) and a.abs().max() <= 1.0
    assert (a[..., 3:6] == 0).all(), "masked dims decode to their constant value"
    tok = _policy("token").eval()  # greedy tokens draw nothing: equal whatever the global stream does
    first = tok.act(obs).actions
    torch.manual_seed(123)
    assert torch.equal(first, tok.act(obs).actions)


def test_flow_noise_log_prob_is_the_mean_or_the_sum_of_the_chain():
    """Flow-Noise's chain log-likelihood: pi_RL averages its K + 1 terms, VLA-RFT sums them."""
    mean_policy = _policy("flow").eval()
    sum_policy = _policy("flow", logprob_reduction="sum").eval()
    sum_policy.load_state_dict(mean_policy.state_dict())
    obs = _obs()
    g = torch.Generator().manual_seed(3)
    out = mean_policy.act(obs, mode="sample", sampler="noise", generator=g)
    g = torch.Generator().manual_seed(3)
    out_sum = sum_policy.act(obs, mode="sample", sampler="noise", generator=g)
    assert torch.equal(out.actions, out_sum.actions), "the reduction changes the likelihood, not the sampling"
    K1 = SMALL["num_steps"] + 1
    assert torch.allclose(out_sum.log_prob, K1 * out.log_prob, rtol=1e-5)
    lp_mean, _, _ = mean_policy.evaluate(obs, out.replay)
    lp_sum, _, _ = sum_policy.evaluate(obs, out.replay)
    assert torch.allclose(lp_sum, out_sum.log_prob, atol=1e-4) and torch.allclose(lp_sum, K1 * lp_mean, rtol=1e-5)
    # Flow-SDE's single-transition likelihood has nothing to reduce
    g = torch.Generator().manual_seed(3)
    sde = sum_policy.act(obs, mode="sample", sampler="sde", generator=g)
    g = torch.Generator().manual_seed(3)
    assert torch.equal(sde.log_prob, mean_policy.act(obs, mode="sample", sampler="sde", generator=g).log_prob)
    with pytest.raises(ConfigError, match="logprob_reduction"):
        PolicyConfig(kind="flow", logprob_reduction="max")


def _batch(obs, horizon=4):
    actions = torch.rand(obs[OBS_STATE].shape[0], horizon, 7) * 2 - 1
    actions[..., 3:6] = 0
    return {**obs, "actions": actions, "is_pad": torch.zeros(actions.shape[:2], dtype=torch.bool)}


@pytest.mark.parametrize("kind", ["token", "flow", OFT])
def test_overfits_a_tiny_batch(kind):
    policy = _policy(kind)
    batch = _batch(_obs(4))
    opt = torch.optim.AdamW(policy.parameters(), lr=3e-3)
    first = None
    for _ in range(250 if kind == "oft" else 150):  # oft's 255 OpenVLA bins and deeper towers take a few more steps
        torch.manual_seed(0)  # same flow-matching noise each step: a fixed regression target
        loss, metrics = policy.sft_loss(batch)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first, (first, loss.item())
    if kind in ("token", "oft"):
        assert metrics["sft/token_accuracy"] > 0.95
        policy.eval()
        pred = policy.act(batch, mode="greedy").actions
        assert (pred[..., [0, 1, 2, 6]] - batch["actions"][:, :3][..., [0, 1, 2, 6]]).abs().max() < 0.02


@pytest.mark.parametrize("kind", ["token", "flow", OFT])
def test_padding_and_constant_dims_are_ignored_by_the_loss(kind):
    policy = _policy(kind)
    batch = _batch(_obs(4))
    batch["is_pad"][:, 2:] = True
    torch.manual_seed(0)
    base, _ = policy.sft_loss(batch)
    changed = dict(batch)
    changed["actions"] = batch["actions"].clone()
    changed["actions"][:, 2:] = torch.rand(4, 2, 7) * 2 - 1  # padded steps: anything
    changed["actions"][..., 3:6] = 0.7  # constant dims: anything
    torch.manual_seed(0)
    other, _ = policy.sft_loss(changed)
    assert torch.allclose(base, other)
    changed["actions"][:, 0, 0] = -batch["actions"][:, 0, 0]
    torch.manual_seed(0)
    moved, _ = policy.sft_loss(changed)
    assert not torch.allclose(base, moved), "a real entry does change the loss"


@pytest.mark.parametrize("kind", ["token", "flow", OFT])
def test_save_load_round_trip(kind, tmp_path):
    policy = _policy(kind).eval()
    obs = _obs()
    policy.save_pretrained(tmp_path / "p")
    assert {f.name for f in (tmp_path / "p").iterdir()} == {"config.json", "model.safetensors", "normalization.json",
                                                       ".reinforge.json", *(["oft"] if kind == "oft" else [])}
    loaded = load_pretrained(tmp_path / "p").eval()
    out = policy.act(obs, mode="sample", temperature=1.3)
    lp, _, v = loaded.evaluate(obs, out.replay)
    assert torch.allclose(lp, out.log_prob, atol=1e-5) and torch.allclose(v, out.value)
    assert torch.equal(loaded.action_dim_mask, policy.action_dim_mask)
    with pytest.raises(ValueError, match="different policy config.*horizon"):
        load_pretrained(tmp_path / "p", expect=PolicyConfig(kind=kind, **{**SMALL, "horizon": 8}))
    other = _policy(kind, d_model=64)
    other.save_pretrained(tmp_path / "q")
    (tmp_path / "q" / "config.json").write_text((tmp_path / "p" / "config.json").read_text())
    # (an oft policy meets the mismatch earlier: its saved language-model config is 64 wide)
    with pytest.raises(ValueError, match="weights do not match the policy config|d_model=32 must equal the language"):
        load_pretrained(tmp_path / "q")


def test_bad_inputs_and_configs():
    policy = _policy("token")
    obs = _obs(2, size=64)
    with pytest.raises(ValueError, match=r"images of shape \(B, 2, 3, 32, 32\)"):
        policy.act(obs)
    with pytest.raises(ValueError, match="mode must be"):
        policy.act(_obs(2), mode="beam")
    with pytest.raises(ConfigError, match="execute_steps"):
        PolicyConfig(horizon=4, execute_steps=5)
    with pytest.raises(ConfigError, match=r"unknown config key 'policy.horizn' \(did you mean 'horizon'\?\)"):
        from reinforge.train.sft import SFTConfig

        load_config(SFTConfig, None, ["policy.horizn=4"])
    with pytest.raises(ConfigError, match="normalisation stats have action dim 7"):
        make_policy(PolicyConfig(action_dim=6), NORM)


@pytest.mark.parametrize("norm,normalized,back", [
    (Normalizer([-1, 0, 0], [1, 1, 2], [0.0] * 8, [1.0] * 8), [-1, 0, 1], [-1, 0.5, 2]),  # q01/q99 bounds, clamped
    (Normalizer([-1, 0, 0], [1, 1, 2], [0.0] * 8, [1.0] * 8, action_clip=False), [-2, 0, 2], [-2, 0.5, 3]),
    (Normalizer([-1, 0, 3], [1, 1, -1], [0.0] * 8, [1.0] * 8), [-1, 0, -1], [-1, 0.5, 3]),  # low > high: flipped
    (Normalizer([-1, 0, 0], [1, 1, 2], [0.0] * 8, [1.0] * 8, action_mean=[0.5, 0.0, 1.0],  # LeRobot's MEAN_STD
                action_std=[2.0, 0.5, 0.0]), [-1.25, 1, 0], [-2, 0.5, 1]),  # a constant dim decodes to its mean
])
def test_normalisation_modes_round_trip_and_persist(tmp_path, norm, normalized, back):
    policy = make_policy(PolicyConfig(**{**SMALL, "kind": "flow", "action_dim": 3}), norm)
    actions = torch.tensor([[[-2.0, 0.5, 3.0]]])
    x = policy.normalize_actions(actions)
    assert torch.allclose(x, torch.tensor([[normalized]], dtype=torch.float32))
    assert torch.allclose(policy.unnormalize_actions(x), torch.tensor([[back]], dtype=torch.float32))
    policy.save_pretrained(tmp_path / "p")
    again = load_pretrained(tmp_path / "p")
    assert again.normalizer == norm and torch.allclose(again.unnormalize_actions(x), policy.unnormalize_actions(x))


def test_token_policies_refuse_standardised_actions():
    norm = Normalizer([-1.0] * 7, [1.0] * 7, [0.0] * 8, [1.0] * 8, action_mean=[0.0] * 7, action_std=[1.0] * 7)
    with pytest.raises(ConfigError, match="token policy decodes actions in \\[-1, 1\\]"):
        make_policy(PolicyConfig(kind="token", **SMALL), norm)
    assert make_policy(PolicyConfig(kind="flow", **SMALL), norm).normalizer.standardized
