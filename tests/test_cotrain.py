"""Sim-real co-training: the "real" domain of the built-in world, mixed-dataset SFT, and RL with an SFT anchor
on real demonstrations (RL-Co)."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from helpers import make_scene
from reinforge.algos.base import RLOptimConfig, build_optimizer
from reinforge.algos.cotrain import CotrainConfig, SFTAnchor
from reinforge.algos.grpo import GRPO, GRPOConfig
from reinforge.config import load_config
from reinforge.data import DemoDataset
from reinforge.data.augment import AugmentConfig
from reinforge.data.record import record_demos
from reinforge.data.sampler import MixtureSampler, shares
from reinforge.envs import EnvConfig, make_env
from reinforge.envs.tabletop.domain import REAL, SIM, DomainShift
from reinforge.envs.tabletop.world import step_world
from reinforge.policies import PolicyConfig, make_policy
from reinforge.types import OBS_IMAGE, OBS_INSTRUCTION, OBS_STATE

TINY = dict(image_size=(32, 32), d_model=32, heads=2, fusion_layers=1, channels=(16, 16), horizon=4,
            execute_steps=3, value_hidden=16, expert_layers=1, num_steps=3)
REAL_ENV = EnvConfig(suite="spatial", options={"domain": "real"})


@pytest.fixture(scope="module")
def sim_data(tmp_path_factory):
    return record_demos("spatial", tmp_path_factory.mktemp("sim") / "ds", per_task=1, image_size=32, tasks=[0, 1])


@pytest.fixture(scope="module")
def real_data(tmp_path_factory):
    return record_demos(REAL_ENV, tmp_path_factory.mktemp("real") / "ds", per_task=1, image_size=32, tasks=[0, 1])


# --------------------------------------------------------------------------------- the real domain


def _roll(domain: str, actions: torch.Tensor, seed: int = 0):
    env = make_env("tabletop", suite="spatial", num_envs=2, image_size=32, domain=domain, seed=seed)
    obs = [env.reset([0, 3], [1, 2])]
    grips = [env.state.grip_pos.clone()]
    for a in actions:
        obs.append(env.step(a.expand(2, -1)).obs)
        grips.append(env.state.grip_pos.clone())
    return obs, torch.stack(grips)


def test_the_real_domain_is_deterministic_and_shifted_only_as_documented():
    move = torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0]]).repeat(4, 1)
    sim_obs, sim_grip = _roll("sim", move)
    real_obs, real_grip = _roll("real", move)
    again_obs, again_grip = _roll("real", move)
    # deterministic for a seed: the same images (sensor noise included) and states
    assert all(torch.equal(a[OBS_IMAGE], b[OBS_IMAGE]) for a, b in zip(real_obs, again_obs))
    assert torch.equal(real_grip, again_grip)
    assert not torch.equal(_roll("real", move, seed=1)[0][1][OBS_IMAGE], real_obs[1][OBS_IMAGE])
    # dynamics: one step of latency (the first step executes "stay"), then action_gain x the sim motion
    dx_sim = sim_grip[1:, :, 0] - sim_grip[:-1, :, 0]
    dx_real = real_grip[1:, :, 0] - real_grip[:-1, :, 0]
    assert torch.allclose(dx_real[0], torch.zeros(2), atol=1e-7)
    assert torch.allclose(dx_real[1:], REAL.action_gain * dx_sim[:-1], atol=1e-6)
    # visuals: the same scene looks different (camera, light, colours, noise), warmer and darker
    s, r = sim_obs[0][OBS_IMAGE].float(), real_obs[0][OBS_IMAGE].float()
    assert (s - r).abs().mean() > 10
    assert r.mean() < s.mean() and (r[:, :, 0].mean() / r[:, :, 2].mean()) > (s[:, :, 0].mean() / s[:, :, 2].mean())
    # the proprio state, instructions and layout are those of sim
    assert sim_obs[0][OBS_INSTRUCTION] == real_obs[0][OBS_INSTRUCTION]
    assert torch.allclose(sim_obs[0][OBS_STATE], real_obs[0][OBS_STATE])
    spec = make_env("tabletop", suite="spatial", domain="real").spec
    assert spec.variant == {"domain": "real"} and spec.layout()["variant"] == {"domain": "real"}
    assert make_env("tabletop", suite="spatial").spec.variant == {}


def test_a_real_domain_snapshot_continues_exactly():
    a = make_env(REAL_ENV, num_envs=2, image_size=32, seed=3)
    obs = a.reset([0, 1], [0, 1])
    act = torch.tensor([[0.5, -0.3, 0.0, 0.0, 0.0, 0.2, 1.0]]).expand(2, -1)
    for _ in range(3):
        obs = a.step(act).obs
    b = make_env(REAL_ENV, num_envs=2, image_size=32, seed=3)
    restored = b.restore(a.snapshot())
    assert torch.equal(restored[OBS_IMAGE], obs[OBS_IMAGE])
    for _ in range(2):
        ra, rb = a.step(act), b.step(act)
        assert torch.equal(ra.obs[OBS_IMAGE], rb.obs[OBS_IMAGE]) and torch.equal(a.state.grip_pos, b.state.grip_pos)


def test_a_shift_of_nothing_is_sim_and_the_grasp_tolerance_is_tighter():
    assert DomainShift() == SIM and not SIM.visual and REAL.visual
    scene, state = make_scene([("bowl", (0.0, 0.0, 0.0))], grip=(0.0, 0.0, 0.02))
    state.grip_open[:] = 0.55  # about to close
    close = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]])
    tol = 0.02 + 0.3 * scene.half[0, 0, 0]  # the sim tolerance along x
    state.grip_pos[0, 0] = 0.8 * float(tol)  # off-centre: within sim's tolerance, outside real's
    assert int(step_world(scene, state, close).held) == 0
    assert int(step_world(scene, state, close, grasp_tolerance=REAL.grasp_tolerance).held) == -1


def test_the_expert_succeeds_in_the_real_domain():
    env = make_env(REAL_ENV, num_envs=10, image_size=32)
    obs = env.reset(torch.arange(10), torch.zeros(10, dtype=torch.long))
    expert = env.make_expert()
    done = torch.zeros(10, dtype=torch.bool)
    ok = torch.zeros(10, dtype=torch.bool)
    while not bool(done.all()):
        res = env.step(expert.act(obs).actions[:, 0])
        ok |= res.success & ~done
        done |= res.terminated | res.truncated
        obs = res.obs
    assert bool(ok.all())


# --------------------------------------------------------------------------------- mixed-dataset SFT


def test_the_mixture_sampler_gives_every_batch_its_shares(sim_data, real_data):
    assert shares(16, [0.5, 0.5]) == [8, 8] and shares(10, [0.7, 0.3]) == [7, 3] and shares(5, [1, 1, 1]) == [2, 2, 1]
    assert shares(7, [1.0, 0.0]) == [7, 0]
    goal = record_demos("goal", real_data.parent / "goal", per_task=1, image_size=32, tasks=[0])
    sim, other = DemoDataset.load(sim_data), DemoDataset.load(goal)
    sampler = MixtureSampler([sim, other], [0.75, 0.25])
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        b = sampler.sample(16, 4, gen, AugmentConfig(enabled=False))
        from_goal = sum(i in other.tasks for i in b[OBS_INSTRUCTION])
        assert from_goal == 4 and b[OBS_IMAGE].shape[0] == 16 and b["actions"].shape == (16, 4, 7)
    pooled = sampler.stats()
    both = torch.cat([sim.labels, other.labels])
    assert pooled["expert_action"]["max"] == pytest.approx(both.max(0).values.tolist())
    with pytest.raises(ValueError, match="one non-negative weight per dataset"):
        MixtureSampler([sim, other], [1.0])


def test_sft_on_a_sim_real_mixture_from_the_cli(sim_data, real_data, tmp_path, capsys):
    from reinforge.cli import main

    out = tmp_path / "mix"
    argv = ["sft", "--data", str(sim_data), "--data", str(real_data), "--policy", "flow", "--out", str(out),
            "--steps", "3", "--quiet", "data_weights=[0.5,0.5]", "policy.image_size=[32,32]", "policy.d_model=32",
            "policy.heads=2", "batch_size=8", "eval_episodes_per_task=1"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "on 4 episodes" in " ".join(err.split())  # 2 sim + 2 real
    assert (out / "policy" / "model.safetensors").is_file()


# --------------------------------------------------------------------------------- the RL-Co update


def _grpo_with_anchor(real_data, beta: float, seed: int = 0, kind: str = "flow"):
    torch.manual_seed(0)
    policy = make_policy(PolicyConfig(kind=kind, **TINY))
    opt = build_optimizer(policy, RLOptimConfig(lr=1e-3), freeze_vision=True, train_critic=False)
    algo = GRPO(policy, opt, GRPOConfig(minibatch_size=1000), grad_clip=1.0, seed=seed)
    algo.anchor = SFTAnchor(policy, CotrainConfig(data=str(real_data), beta=beta, batch_size=8), seed=seed)
    return policy, algo


def _collect(policy, logprob: str):
    from reinforge.rollout import RolloutCollector, RolloutConfig, rollout_env_kwargs

    cfg = RolloutConfig(num_groups=2, group_size=2, max_episode_steps=6)
    env = make_env("tabletop", suite="spatial", **rollout_env_kwargs(cfg, policy.config.image_size, 0))
    return RolloutCollector(env, policy, cfg, seed=0, cache_features=True, logprob=logprob).collect()


@pytest.mark.parametrize("kind", ["flow", "token"])
def test_the_sft_term_reaches_the_parameters(real_data, kind):
    """The failure of the reference implementation (an SFT loss computed and logged but never back-propagated)
    cannot happen here: beta changes the update, and with no RL signal the update IS an SFT step."""
    p0, a0 = _grpo_with_anchor(real_data, beta=0.0, kind=kind)
    batch = _collect(p0, a0.logprob)
    batch.episode_success = torch.tensor([True, False, True, False])  # every group informative
    p1, a1 = _grpo_with_anchor(real_data, beta=0.5, kind=kind)
    torch.manual_seed(1)
    m0 = a0.update(copy.deepcopy(batch))
    torch.manual_seed(1)
    m1 = a1.update(copy.deepcopy(batch))
    assert m1["train/sft_loss"] > 0 and m1["train/sft_to_rl"] > 0 and "train/rl_loss" in m1
    assert m0["train/sft_to_rl"] == 0
    moved = [not torch.equal(x, y) for x, y in zip(p0.parameters(), p1.parameters())]
    assert any(moved), "beta > 0 must change the update"
    # zero RL loss: the co-trained step equals a plain SFT step on the same real batch
    p2, a2 = _grpo_with_anchor(real_data, beta=0.5, seed=3, kind=kind)
    ref = copy.deepcopy(p2)
    ref_opt = build_optimizer(ref, RLOptimConfig(lr=1e-3), freeze_vision=True, train_critic=False)
    ref_anchor = SFTAnchor(ref, CotrainConfig(data=str(real_data), beta=0.5, batch_size=8), seed=3)
    torch.manual_seed(5)
    a2.begin_update()
    a2.step(torch.zeros((), requires_grad=True))
    torch.manual_seed(5)
    ref_anchor.new_update()
    loss, _ = ref_anchor.loss(torch.zeros(()))
    ref_opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for g in ref_opt.param_groups for p in g["params"]], 1.0)
    ref_opt.step()
    for (name, x), y in zip(p2.named_parameters(), ref.parameters()):
        assert torch.allclose(x, y, atol=1e-7), name
    assert any(not torch.equal(x, y) for x, y in zip(p2.parameters(), make_policy(p2.config).parameters()))


def test_a_short_rl_co_run_end_to_end(sim_data, real_data, tmp_path):
    from reinforge.train.rl import RLConfig, RLTrainer

    torch.manual_seed(0)
    init = make_policy(PolicyConfig(kind="flow", **TINY)).save_pretrained(tmp_path / "init")
    cfg = load_config(RLConfig, None, [
        f"init={init}", f"out={tmp_path / 'rl'}", "algo=grpo", "rollout.num_groups=2", "rollout.group_size=2",
        "rollout.tasks=[0,1]", "rollout.max_episode_steps=12", "grpo.dynamic_sampling=false", "iterations=2",
        "eval.every=1", "eval.episodes_per_task=1", "eval.final_episodes_per_task=1", "eval.heldout=false",
        "eval.videos=0", "eval.tasks=[0,1]", f"cotrain.data={real_data}", "cotrain.beta=0.2",
        "cotrain.batch_size=8", "checkpoint_every=1"])
    with RLTrainer(cfg) as trainer:
        final = trainer.run(progress=False)
    assert "eval/spatial_real/success_rate" in final and "eval/spatial/success_rate" in final
    from reinforge.train.logging import read_metrics

    rows = [r for r in read_metrics(tmp_path / "rl" / "metrics.jsonl") if "train/sft_loss" in r]
    assert len(rows) == 2 and all(r["train/sft_to_rl"] >= 0 for r in rows)
    state = torch.load(tmp_path / "rl" / "checkpoints" / "last" / "trainer_state.pt", weights_only=True)
    assert "anchor" in state["algo"]
    # the real domain is for evaluation and real demonstrations only: RL rolls out in sim
    assert trainer.collector.env.spec.variant == {}
    assert dataclasses.asdict(trainer.cfg.cotrain)["data"] == str(real_data)


def test_each_component_domain_holds_one_part_of_the_real_shift():
    import dataclasses as dc

    from reinforge.envs.tabletop.domain import COMPONENTS, DOMAINS

    fields = [f.name for f in dc.fields(REAL) if f.name not in ("name", "notes")]
    assert sorted(k for keys in COMPONENTS.values() for k in keys) == sorted(fields)  # the parts cover the shift
    for comp, keys in COMPONENTS.items():
        d = DOMAINS[f"real-{comp}"]
        for f in fields:
            assert getattr(d, f) == (getattr(REAL, f) if f in keys else getattr(SIM, f)), (comp, f)
    env = make_env("tabletop", suite="spatial", domain="real-latency", num_envs=1, image_size=16)
    assert env.spec.variant == {"domain": "real-latency"}
