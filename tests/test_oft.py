"""The OpenVLA-OFT style policy (``kind: oft``, policies/oft.py): transformers' Llama + DINOv2 + SigLIP with
bidirectional action decoding; tiny random towers, real local folders, and GRPO / PPO through the trainer."""

from __future__ import annotations

import shutil
import sys

import pytest
import torch

pytest.importorskip("transformers")

from helpers import two_rl_iterations  # noqa: E402
from reinforge.config import load_config  # noqa: E402
from reinforge.envs import TabletopEnv  # noqa: E402
from reinforge.policies import PolicyConfig, load_pretrained, make_policy  # noqa: E402
from reinforge.train.rl import RLConfig, RLTrainer  # noqa: E402
from reinforge.types import OBS_IMAGE, OBS_IMAGE_FEATURES, OBS_INSTRUCTION  # noqa: E402

TINY = dict(kind="oft", image_size=(32, 32), d_model=32, heads=2, horizon=4, execute_steps=2)


def _obs(n=4):
    env = TabletopEnv("spatial", n, image_size=32)
    return env.reset(torch.arange(n) % 10, torch.arange(n))


def _policy(**kw):
    torch.manual_seed(0)
    return make_policy(PolicyConfig(**{**TINY, **kw})).eval()


def test_the_towers_are_transformers_classes_and_attention_is_bidirectional():
    import transformers as tf

    policy = _policy()
    assert isinstance(policy.llm, tf.LlamaForCausalLM)
    assert isinstance(policy.dino, tf.Dinov2WithRegistersModel) and isinstance(policy.siglip, tf.SiglipVisionModel)
    obs = _obs(2)
    logits, _ = policy.features(obs)
    assert logits.shape == (2, 4, 7, 256)
    # the image tokens come first: with causal attention nothing after them could change their hidden states;
    # here the action logits move when the (later) prompt changes AND when only the (earlier) image changes
    other = dict(obs)
    other[OBS_INSTRUCTION] = ["pick up the black bowl next to the plate and place it on the cookie box"] * 2
    assert not torch.allclose(policy.features(other)[0], logits)
    seen = []
    hook = policy.llm.model.layers[0].register_forward_hook(lambda m, i, o: seen.append(o[0] if isinstance(o, tuple)
                                                                                        else o))
    policy.features(obs)
    policy.features(other)
    hook.remove()
    assert not torch.allclose(seen[0][:, 0], seen[1][:, 0]), "the first token sees the later prompt tokens"


def test_prompt_padding_changes_nothing():
    """A row's logits are the same alone and next to a longer instruction (padded prompt tokens are masked)."""
    policy = _policy()
    obs = _obs(2)
    obs[OBS_INSTRUCTION] = ["open the drawer", "put the black bowl on the plate next to the wooden cabinet"]
    both, _ = policy.features(obs)
    alone = {k: (v[:1] if torch.is_tensor(v) else v[:1]) for k, v in obs.items()}
    one, _ = policy.features(alone)
    assert torch.allclose(both[:1], one, atol=1e-5)


def test_cached_vision_features_give_the_same_log_probs():
    policy = _policy()
    obs = _obs()
    out = policy.act(obs, mode="sample", temperature=1.6, generator=torch.Generator().manual_seed(0))
    cached = {k: v for k, v in obs.items() if k != OBS_IMAGE}
    cached[OBS_IMAGE_FEATURES] = policy.encode_images(obs[OBS_IMAGE])
    lp, _, _ = policy.evaluate(cached, out.replay)
    assert torch.allclose(lp, out.log_prob, atol=1e-5)
    assert {id(p) for p in policy.vision_parameters()} == {id(p) for p in [*policy.dino.parameters(),
                                                                             *policy.siglip.parameters()]}


def test_towers_load_from_local_folders(tmp_path):
    import transformers as tf

    policy = _policy()
    policy.llm.save_pretrained(tmp_path / "llm")
    policy.dino.save_pretrained(tmp_path / "dino")
    policy.siglip.save_pretrained(tmp_path / "siglip")
    loaded = _policy(oft_llm=str(tmp_path / "llm"), oft_dinov2=str(tmp_path / "dino"),
                     oft_siglip=str(tmp_path / "siglip"))
    for name in ("llm", "dino", "siglip"):
        a, b = getattr(policy, name).state_dict(), getattr(loaded, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert isinstance(loaded.llm, tf.LlamaForCausalLM)
    # a policy started from those folders is saved self-contained: it loads with the folders gone
    loaded.save_pretrained(tmp_path / "policy")
    for name in ("llm", "dino", "siglip"):
        shutil.rmtree(tmp_path / name)
    again = load_pretrained(tmp_path / "policy")
    obs = _obs(2)
    assert torch.allclose(again.features(obs)[0], loaded.features(obs)[0], atol=1e-6)
    with pytest.raises(ValueError, match="cannot load the language model from .*nowhere"):
        _policy(oft_llm=str(tmp_path / "nowhere"))
    policy.llm.save_pretrained(tmp_path / "llm2")
    with pytest.raises(ValueError, match="d_model=64 must equal the language model's hidden size 32"):
        _policy(d_model=64, heads=2, oft_llm=str(tmp_path / "llm2"))


def test_missing_transformers_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r"pip install 'reinforge\[oft\]'"):
        make_policy(PolicyConfig(**TINY))


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_two_rl_iterations_on_the_built_in_world(tmp_path, algo):
    torch.manual_seed(0)
    make_policy(PolicyConfig(**TINY)).save_pretrained(tmp_path / "init")
    rows, before, after, vision = two_rl_iterations(tmp_path / "init", tmp_path / "rl", algo)
    assert all(r["rollout/episodes"] >= 1 for r in rows)
    assert all(abs(r["train/ratio_mean"] - 1) < 0.2 for r in rows)  # the replayed log-probs match the rollout's
    assert vision and all(k.startswith(("dino.", "siglip.")) for k in vision)
    assert all(torch.equal(before[k], after[k]) for k in vision), "the frozen vision towers stay put"
    if algo == "ppo":
        assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("llm."))


def test_the_l1_regression_head_learns_a_batch_and_is_refused_by_rl(tmp_path):
    policy = _policy(oft_action_head="l1").train()
    obs = _obs(4)
    actions = torch.rand(4, 4, 7) * 2 - 1
    batch = {**obs, "actions": actions, "is_pad": torch.zeros(4, 4, dtype=torch.bool)}
    opt = torch.optim.AdamW(policy.parameters(), lr=3e-3)
    first = None
    for _ in range(300):
        loss, metrics = policy.sft_loss(batch)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.25 * first and "sft/l1" in metrics
    policy.eval()
    out = policy.act(obs, mode="greedy")
    assert out.actions.shape == (4, 2, 7) and (out.actions - actions[:, :2]).abs().mean() < 0.15
    with pytest.raises(ValueError, match="deterministic.*oft_action_head=tokens"):
        policy.act(obs, mode="sample")
    policy.save_pretrained(tmp_path / "init")
    cfg = load_config(RLConfig, None, [f"init={tmp_path / 'init'}", f"out={tmp_path / 'rl'}"])
    with pytest.raises(ValueError, match="deterministic"):
        RLTrainer(cfg)


def test_towers_are_float32_whatever_dtype_their_config_names(tmp_path):
    """OpenVLA's configs name bfloat16 (its weights' dtype): the policy still builds float32 towers (precision is
    the trainer's), so a float32 forward pass works after a reload."""
    import json

    _policy().save_pretrained(tmp_path / "p")
    f = tmp_path / "p" / "oft" / "llm" / "config.json"
    f.write_text(json.dumps({**json.loads(f.read_text()), "dtype": "bfloat16", "torch_dtype": "bfloat16"}))
    policy = load_pretrained(tmp_path / "p").eval()
    assert {p.dtype for p in policy.parameters()} == {torch.float32}
    assert policy.act(_obs(2), mode="greedy").actions.dtype == torch.float32
