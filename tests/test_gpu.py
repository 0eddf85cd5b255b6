"""CUDA paths (``gpu`` marker; skipped where torch sees no GPU; ``make test-gpu`` runs them): the policy on CUDA
with the env on CPU, both on CUDA, exact log-prob replay on the GPU, bf16 autocast, SFT and RL loops."""

from __future__ import annotations

import json

import pytest
import torch

from reinforge.config import load_config
from reinforge.envs import make_env
from reinforge.policies import PolicyConfig, make_policy
from reinforge.rollout import RolloutCollector, RolloutConfig, rollout_env_kwargs

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

TINY = dict(image_size=(32, 32), d_model=32, heads=2, fusion_layers=1, channels=(16, 16), horizon=4,
            execute_steps=3, value_hidden=16, expert_layers=1, num_steps=3)


@pytest.mark.parametrize("env_device", ["cpu", "cuda"])
@pytest.mark.parametrize("kind", ["token", "flow"])
def test_cuda_policy_collects_and_replays_log_probs_exactly(kind, env_device):
    torch.manual_seed(0)
    policy = make_policy(PolicyConfig(kind=kind, **TINY)).cuda()
    cfg = RolloutConfig(mode="autoreset", num_envs=8, chunks_per_rollout=3)
    env = make_env("tabletop", suite="spatial", device=env_device,
                   **rollout_env_kwargs(cfg, policy.config.image_size, 0))
    b = RolloutCollector(env, policy, cfg, need_values=True, cache_features=True).collect()
    rows, steps = b.valid.nonzero(as_tuple=True)
    with torch.no_grad():
        lp, _, value = policy.evaluate(b.sample_obs(rows, steps), {k: v[rows, steps] for k, v in b.replay.items()})
    assert lp.is_cuda and torch.allclose(lp.cpu(), b.log_prob[rows, steps], atol=1e-4)
    assert torch.allclose(value.cpu(), b.value[rows, steps], atol=1e-5)


def test_cuda_and_cpu_policies_act_alike():
    torch.manual_seed(0)
    cpu = make_policy(PolicyConfig(kind="flow", **TINY)).eval()
    gpu = make_policy(PolicyConfig(kind="flow", **TINY)).eval()
    gpu.load_state_dict(cpu.state_dict())
    gpu.cuda()
    env = make_env("tabletop", suite="spatial", num_envs=16, image_size=32)
    obs = env.reset(torch.arange(16) % 10, torch.arange(16))
    a = cpu.act(obs, mode="greedy").actions
    b = gpu.act(obs, mode="greedy").actions.cpu()
    assert torch.allclose(a, b, atol=1e-3)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_rl_iterations_on_cuda(tmp_path, precision):
    from reinforge.train.rl import RLConfig, RLTrainer

    torch.manual_seed(0)
    init = make_policy(PolicyConfig(kind="flow", **TINY)).save_pretrained(tmp_path / "init")
    cfg = load_config(RLConfig, None, [
        f"init={init}", f"out={tmp_path / 'rl'}", "algo=ppo", "rollout.mode=autoreset", "rollout.num_envs=16",
        "rollout.chunks_per_rollout=4", "ppo.minibatch_size=32", "ppo.epochs=1", "device=cuda",
        f"precision={precision}", "env.device=cuda", "iterations=2", "eval.episodes_per_task=1",
        "eval.final_episodes_per_task=1", "eval.heldout=false", "eval.videos=0"])
    with RLTrainer(cfg) as trainer:
        assert next(trainer.policy.parameters()).is_cuda
        m = trainer.train_iteration()
        assert m["train/ratio_mean"] == pytest.approx(1.0, abs=0.05 if precision == "bf16" else 1e-3)
        final = trainer.run(progress=False)
    assert "eval/spatial/success_rate" in final


def test_sft_on_cuda(tmp_path, capsys):
    from reinforge.cli import main
    from reinforge.data.record import record_demos

    data = record_demos("spatial", tmp_path / "d", per_task=1, image_size=32, tasks=[0])
    argv = ["sft", "--data", str(data), "--policy", "token", "--out", str(tmp_path / "s"), "--steps", "6",
            "--device", "cuda", "--quiet", "policy.image_size=[32,32]", "policy.d_model=32", "policy.heads=2",
            "eval_episodes_per_task=1", "batch_size=8"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 6
