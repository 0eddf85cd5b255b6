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


def test_cuda_and_cpu_policies_compute_alike():
    """The same weights give the same greedy token actions and the same flow log-probs of a CPU-sampled chain
    on both devices (the flow's initial noise comes from each device's own RNG, so its actions differ)."""
    env = make_env("tabletop", suite="spatial", num_envs=16, image_size=32)
    obs = env.reset(torch.arange(16) % 10, torch.arange(16))
    for kind in ("token", "flow"):
        torch.manual_seed(0)
        cpu = make_policy(PolicyConfig(kind=kind, **TINY)).eval()
        gpu = make_policy(PolicyConfig(kind=kind, **TINY)).eval()
        gpu.load_state_dict(cpu.state_dict())
        gpu.cuda()
        if kind == "token":
            a, b = cpu.act(obs, mode="greedy").actions, gpu.act(obs, mode="greedy").actions.cpu()
            assert (a - b).abs().le(1e-3).float().mean() > 0.99  # an argmax may flip on a near-tie
        out = cpu.act(obs, mode="sample", generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            lp_cpu = cpu.evaluate(obs, out.replay)[0]
            lp_gpu = gpu.evaluate(obs, {k: v.cuda() for k, v in out.replay.items()})[0].cpu()
        assert torch.allclose(lp_cpu, out.log_prob, atol=1e-4) and torch.allclose(lp_gpu, lp_cpu, atol=1e-3), kind


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_rl_iterations_on_cuda(tmp_path, precision):
    from reinforge.train.rl import RLConfig, RLTrainer

    torch.manual_seed(0)
    init = make_policy(PolicyConfig(kind="flow", **TINY)).save_pretrained(tmp_path / "init")
    cfg = load_config(RLConfig, None, [
        f"init={init}", f"out={tmp_path / 'rl'}", "algo=ppo", "rollout.mode=autoreset", "rollout.num_envs=16",
        "rollout.chunks_per_rollout=4", "ppo.minibatch_size=64", "ppo.epochs=1", "device=cuda",
        f"precision={precision}", "env.device=cuda", "iterations=2", "eval.episodes_per_task=1",
        "eval.final_episodes_per_task=1", "eval.heldout=false", "eval.videos=0"])
    with RLTrainer(cfg) as trainer:
        assert next(trainer.policy.parameters()).is_cuda
        m = trainer.train_iteration()  # one minibatch: its ratio is taken before the only optimizer step
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


def test_a_cuda_run_diverges_safely_and_its_checkpoint_resumes_on_cpu(tmp_path):
    """A CUDA/bf16 SFT run that diverges keeps its last good checkpoint (CPU tensors on disk), and a rerun on
    the CPU with a sane learning rate resumes from it."""
    from reinforge.data.record import record_demos
    from reinforge.train.checkpoint import DivergedError
    from reinforge.train.sft import SFTConfig, SFTTrainer

    data = record_demos("spatial", tmp_path / "d", per_task=1, image_size=32, tasks=[0])
    base = [f"data={data}", f"out={tmp_path / 's'}", "policy.kind=flow", "policy.image_size=[32,32]",
            "policy.d_model=32", "policy.heads=2", "eval_episodes_per_task=1", "batch_size=8", "checkpoint_every=2"]
    SFTTrainer(load_config(SFTConfig, None, [*base, "steps=4", "device=cuda", "precision=bf16"])).run(progress=False)
    bad = SFTTrainer(load_config(SFTConfig, None, [*base, "steps=10", "device=cuda", "precision=bf16",
                                                   "optim.lr=1e6", "optim.warmup_steps=0", "checkpoint_every=1"]))
    with pytest.raises(DivergedError, match="last good checkpoint"):
        bad.run(progress=False)
    again = SFTTrainer(load_config(SFTConfig, None, [*base, "steps=10", "device=cpu", "optim.lr=1e-4"]))
    assert again.step == bad.saved_step and any(k == "device" for k, _, _ in again.resume_changes)
    again.run(progress=False)
    assert all(torch.isfinite(p).all() for p in again.policy.parameters())


def test_rl_co_iteration_on_cuda(tmp_path):
    """The co-training SFT term on a CUDA policy (its real batches come from the CPU dataset)."""
    from reinforge.data.record import record_demos
    from reinforge.envs import EnvConfig
    from reinforge.train.rl import RLConfig, RLTrainer

    real = record_demos(EnvConfig(suite="spatial", options={"domain": "real"}), tmp_path / "real", per_task=1,
                        image_size=32, tasks=[0])
    torch.manual_seed(0)
    init = make_policy(PolicyConfig(kind="flow", **TINY)).save_pretrained(tmp_path / "init")
    cfg = load_config(RLConfig, None, [
        f"init={init}", f"out={tmp_path / 'rl'}", "algo=ppo", "rollout.mode=autoreset", "rollout.num_envs=16",
        "rollout.chunks_per_rollout=4", "ppo.minibatch_size=32", "ppo.epochs=1", "ppo.critic_warmup=0",
        "device=cuda", "precision=bf16", f"cotrain.data={real}", "cotrain.beta=0.2", "cotrain.batch_size=8",
        "iterations=1", "eval.episodes_per_task=1", "eval.final_episodes_per_task=1", "eval.heldout=false",
        "eval.videos=0", "eval.tasks=[0]"])
    with RLTrainer(cfg) as trainer:
        m = trainer.train_iteration()
    assert m["train/sft_loss"] > 0 and m["train/sft_to_rl"] > 0


def test_world_model_trains_and_imagines_on_cuda_as_on_cpu(tmp_path):
    """World-model training on CUDA, and WorldModelEnv on CUDA: the ground truth still scores 0 (to 1e-8: cuDNN's
    convolutions are not bit-reproducible between calls, the CPU's are and give exactly 0), and the CUDA
    imagination matches the CPU one of the same weights; then one GRPO iteration in it with a CUDA policy."""
    from reinforge.data.record import record_demos
    from reinforge.train.rl import RLConfig, RLTrainer
    from reinforge.worldmodel.train import WMTrainConfig, WMTrainer

    data = record_demos("spatial", tmp_path / "demos", per_task=2, image_size=32, tasks=[0, 1])
    small = ["model.channels=[16,16,16]", "model.latent_channels=8", "model.dyn_channels=16", "model.dyn_blocks=1",
             "model.cond_dim=16", "batch_size=8", "unroll=2", "eval_horizon=4", "eval_every=6", "videos=0"]
    WMTrainer(load_config(WMTrainConfig, None, [f"data={data}", f"out={tmp_path / 'wm'}", "steps=20",
                                                "device=cuda", *small])).run(progress=False)
    envs = {d: make_env("worldmodel", suite="spatial", num_envs=4, model=str(tmp_path / "wm"), device=d,
                        max_episode_steps=6) for d in ("cpu", "cuda")}
    out = {}
    for d, env in envs.items():
        env.reset([0, 1, 0, 1], [1, 2, 3, 4])
        gt = torch.stack([env.ds.actions[env.gt + h] for h in range(3)], 1)
        r = env.step_chunk(gt).reward
        assert torch.equal(r, torch.zeros(4, 3)) if d == "cpu" else float(r.abs().max()) < 1e-8
        env.reset([0, 1, 0, 1], [1, 2, 3, 4])
        out[d] = env.step_chunk(gt * 0.5)
    assert torch.allclose(out["cuda"].reward, out["cpu"].reward, atol=1e-4, rtol=1e-3)
    assert (out["cuda"].obs["image"].int() - out["cpu"].obs["image"].int()).abs().max() <= 2
    torch.manual_seed(0)
    init = make_policy(PolicyConfig(kind="flow", **TINY)).save_pretrained(tmp_path / "init")
    cfg = load_config(RLConfig, None, [
        f"init={init}", f"out={tmp_path / 'rl'}", "algo=grpo", "env.name=worldmodel", f"env.model={tmp_path / 'wm'}",
        "env.device=cuda", "device=cuda", "rollout.num_groups=2", "rollout.group_size=4",
        "rollout.max_episode_steps=6", "grpo.reward=return", "grpo.minibatch_size=8", "iterations=1",
        "eval.episodes_per_task=1", "eval.final_episodes_per_task=1", "eval.heldout=false", "eval.videos=0",
        "eval.tasks=[0]"])
    with RLTrainer(cfg) as trainer:
        m = trainer.train_iteration()
    assert m["rollout/return"] < 0 and m["train/num_samples"] > 0
