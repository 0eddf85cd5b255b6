"""World-model RL (VLA-RFT): the world model learns, ``WorldModelEnv`` keeps the VecEnv contract and its verified
reward means what it says, continuous-reward GRPO, the KL-gated regulariser, and a short RL run in imagination
evaluated in the real simulator."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from reinforge.algos.cotrain import CotrainConfig, SFTAnchor
from reinforge.algos.grpo import flat_groups, group_advantages, trajectory_outcomes
from reinforge.cli import main
from reinforge.config import load_config
from reinforge.data import DemoDataset
from reinforge.data.record import record_demos
from reinforge.envs import make_env
from reinforge.policies import PolicyConfig, make_policy
from reinforge.types import OBS_IMAGE, OBS_STATE
from reinforge.worldmodel.metrics import mae, psnr, ssim
from reinforge.worldmodel.model import WorldModel, load_world_model
from reinforge.worldmodel.train import WMTrainConfig, WMTrainer, evaluate_world_model, split_episodes
from reinforge.worldmodel.verify import rankdata, spearman

SMALL = ["model.channels=[16,16,16]", "model.latent_channels=8", "model.dyn_channels=16", "model.dyn_blocks=1",
         "model.cond_dim=16", "batch_size=8", "unroll=2", "eval_horizon=4", "eval_every=6", "videos=1",
         "log_every=10", "warmup_steps=10"]
TINY_POLICY = dict(image_size=(32, 32), d_model=32, heads=2, fusion_layers=1, channels=(16, 16), horizon=4,
                   execute_steps=2, value_hidden=16, expert_layers=1, num_steps=3)


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    return record_demos("spatial", tmp_path_factory.mktemp("wm") / "demos", per_task=5, image_size=32, tasks=[0, 1])


@pytest.fixture(scope="module")
def trained(demos, tmp_path_factory):
    """A small world model trained 150 steps (its run folder), and the same architecture untrained."""
    out = tmp_path_factory.mktemp("wmrun") / "wm"
    torch.manual_seed(0)
    trainer = WMTrainer(load_config(WMTrainConfig, None, [f"data={demos}", f"out={out}", "steps=150",
                                                          "heldout_fraction=0.2", *SMALL]))
    untrained = WorldModel(trainer.model.config, trainer.model.state_mean, trainer.model.state_std)
    untrained.load_state_dict(trainer.model.state_dict())
    trainer.run(progress=False)
    return out, untrained


def _wm_env(trained, n=4, **kw):
    return make_env("worldmodel", suite="spatial", num_envs=n, model=str(trained[0]), max_episode_steps=6, **kw)


# --------------------------------------------------------------------------------- the model and its training


def test_training_reduces_heldout_prediction_error(trained, demos):
    out, untrained = trained
    model = load_world_model(out)
    ds = DemoDataset.load(demos)
    meta = json.loads((out / "model" / "split.json").read_text())
    held = meta["heldout_episodes"]
    assert held == split_episodes(ds.num_episodes, 0.2)[1] and held
    before = evaluate_world_model(untrained, ds, held, horizon=4, every=6)["summary"]
    after = evaluate_world_model(model, ds, held, horizon=4, every=6)["summary"]
    assert after["model/mae_mean"] < 0.5 * before["model/mae_mean"]
    assert after["model/psnr_mean"] > before["model/psnr_mean"] + 3
    report = out / "report"
    assert (report / "wm_eval.md").is_file() and (report / "horizon.png").is_file()
    assert list((report / "videos").iterdir()), "a recorded | imagined video"


def test_image_metrics_on_known_cases():
    a = torch.rand(3, 2, 3, 16, 16)
    assert torch.equal(mae(a, a), torch.zeros(3)) and torch.allclose(ssim(a, a), torch.ones(3))
    b = (a + 0.1).clamp(0, 1)
    assert torch.allclose(mae(a, b), (a - b).abs().flatten(1).mean(1))
    assert torch.allclose(psnr(torch.zeros(1, 3, 8, 8), torch.full((1, 3, 8, 8), 0.1)), torch.tensor([20.0]))
    assert (ssim(a, torch.rand_like(a)) < 0.2).all()


def test_a_corrupt_or_missing_world_model_is_a_clear_error(trained, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(trained[0] / "model", bad)
    (bad / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="corrupt.*retrain"):
        load_world_model(bad)
    with pytest.raises(ValueError, match="not a world model.*wm train"):
        load_world_model(tmp_path)
    with pytest.raises(Exception, match="env.model"):
        from reinforge.envs import EnvConfig

        EnvConfig.from_mapping({"name": "worldmodel", "suite": "spatial"})


# --------------------------------------------------------------------------------- the env and its reward


def test_world_model_env_obeys_the_vecenv_contract(trained):
    env = _wm_env(trained)
    assert env.spec.env == "worldmodel" and env.spec.evaluate_in == {"name": "tabletop", "suite": "spatial"}
    assert env.spec.action_dim == 7 and env.spec.image_size == (32, 32) and env.spec.num_tasks == 2
    obs = env.reset([0, 1, 0, 1], [3, 4, 5, 6])
    assert obs[OBS_IMAGE].shape == (4, 2, 3, 32, 32) and obs[OBS_IMAGE].dtype == torch.uint8
    assert obs[OBS_STATE].shape == (4, 8) and obs["task_id"].tolist() == [0, 1, 0, 1]
    res = env.step_chunk(torch.zeros(4, 2, 7))
    assert res.reward.shape == (4, 2) and res.valid.all() and not res.success.any()
    # determinism: the same ids give the same starts, and the same actions the same imagination, in any env
    other = _wm_env(trained, seed=123)
    o2 = other.reset([0, 1, 0, 1], [3, 4, 5, 6])
    assert torch.equal(o2[OBS_IMAGE], obs[OBS_IMAGE])
    r2 = other.step_chunk(torch.zeros(4, 2, 7))
    assert torch.equal(r2.reward, res.reward) and torch.equal(r2.obs[OBS_IMAGE], res.obs[OBS_IMAGE])
    # a masked reset restarts only the chosen envs
    before = res.obs[OBS_IMAGE].clone()
    o3 = env.reset([1, 1, 1, 1], [9, 9, 9, 9], mask=torch.tensor([True, False, False, False]))
    assert torch.equal(o3[OBS_IMAGE][1:], before[1:]) and o3["task_id"].tolist() == [1, 1, 0, 1]
    assert env.elapsed.tolist()[0] == 0 and env.elapsed.tolist()[1] == 2
    # episodes end after max_episode_steps imagined steps (or where the demonstration ends)
    env.reset([0, 1, 0, 1], [3, 4, 5, 6])
    ends = [env.step_chunk(torch.zeros(4, 2, 7)).truncated for _ in range(3)]
    assert not ends[0].any() and ends[2].all()
    with pytest.raises(ValueError, match="shape"):
        env.step_chunk(torch.zeros(4, 3, 6))
    with pytest.raises(ValueError, match="NaN"):
        env.step(torch.full((4, 7), float("nan")))
    snap = env.snapshot()
    a = env.step(torch.ones(4, 7) * 0.3)
    env.restore(snap)
    b = env.step(torch.ones(4, 7) * 0.3)
    assert torch.equal(a.reward, b.reward) and torch.equal(a.obs[OBS_IMAGE], b.obs[OBS_IMAGE])


def _returns(env, noise: float, steps: int = 6, seed: int = 0) -> torch.Tensor:
    env.reset([0, 1, 0, 1, 0, 1, 0, 1], list(range(8)))
    g = torch.Generator().manual_seed(seed)
    total = torch.zeros(env.num_envs)
    for _ in range(steps):
        gt = env.ds.actions[env.gt]
        total += env.step((gt + noise * torch.randn(gt.shape, generator=g)).clamp(-1, 1)).reward
    return total


def test_the_reward_is_zero_for_the_ground_truth_and_falls_as_actions_diverge(trained):
    env = _wm_env(trained, n=8)
    assert torch.equal(_returns(env, 0.0), torch.zeros(8)), "the ground truth's own actions score exactly 0"
    means = [float(_returns(env, s).mean()) for s in (0.1, 0.4, 1.0)]
    assert means[0] < 0 and means[0] > means[1] > means[2]
    mae_only = _wm_env(trained, n=8, perceptual_weight=0.0)
    r = _returns(mae_only, 0.4)
    assert (r <= 0).all() and (r > _returns(env, 0.4)).all(), "the perceptual term adds to the distance"


def test_the_reward_is_a_mean_over_the_episodes_own_imagined_steps(trained):
    """r_t = -d_t / N with N the episode's imagined steps: the time limit, or fewer where its demonstration ends
    first, so a return is the mean distance over the frames the episode predicts, whatever the limit."""
    limited = _wm_env(trained)
    unlimited = make_env("worldmodel", suite="spatial", num_envs=4, model=str(trained[0]), max_episode_steps=100)
    ds = limited.ds
    lengths = [int(e["length"]) for e in ds.episodes[:2]]
    starts = [int(ds.episode_start[e]) for e in range(2)]
    assert min(lengths) > 20
    # envs 0, 1 start 3 steps before their demonstration's end, envs 2, 3 at its start (far from its end)
    frames = torch.tensor([starts[0] + lengths[0] - 4, starts[1] + lengths[1] - 4, starts[0], starts[1]])
    g = torch.Generator().manual_seed(0)
    actions = torch.rand(3, 4, 7, generator=g) * 2 - 1
    rewards = []
    for env in (limited, unlimited):
        env.reset_to_frames(frames)
        rewards.append(torch.stack([env.step(actions[t]).reward for t in range(3)]))  # (3, 4)
    assert limited.horizon.tolist() == [3, 3, 6, 6] and unlimited.horizon.tolist() == [3, 3, lengths[0] - 1,
                                                                                     lengths[1] - 1]
    assert torch.equal(rewards[0][:, :2], rewards[1][:, :2]), "an episode cut short by its data: the same reward"
    assert (rewards[0] < 0).all()
    scale = torch.tensor([lengths[0] - 1, lengths[1] - 1]) / 6.0
    assert torch.allclose(rewards[0][:, 2:], rewards[1][:, 2:] * scale, rtol=1e-5)


# --------------------------------------------------------------------------------- continuous-reward GRPO


def test_group_advantages_and_dynamic_sampling_for_continuous_returns():
    r = torch.tensor([[-0.1234567, -0.1234567, -0.1234567, -0.1234567],
                      [-0.3, -0.1, -0.2, -0.4], [5.0, 5.0 + 1e-7, 5.0, 5.0]])
    assert flat_groups(r).tolist() == [True, False, True]
    adv = group_advantages(r)
    assert torch.equal(adv[0], torch.zeros(4)) and torch.equal(adv[2], torch.zeros(4))
    assert torch.allclose(adv[1], (r[1] - r[1].mean()) / r[1].std(), atol=1e-5)


def test_trajectory_outcomes_sum_the_valid_rewards():
    from reinforge.types import RolloutBatch

    reward = torch.tensor([[-0.1, -0.2, 7.0], [-0.3, 0.0, 0.0]])
    valid = torch.tensor([[True, True, False], [True, False, False]])
    b = RolloutBatch(obs={}, instructions=[], replay={}, log_prob=torch.zeros(2, 3), value=None, next_value=None,
                     reward=reward, valid=valid, terminated=torch.zeros(2, 3, dtype=torch.bool),
                     truncated=torch.zeros(2, 3, dtype=torch.bool), env_steps=torch.zeros(2, 3),
                     episode_success=torch.tensor([True, False]), episode_length=torch.zeros(2),
                     episode_task=torch.zeros(2), episode_init=torch.zeros(2))
    assert torch.allclose(trajectory_outcomes(b, "return"), torch.tensor([-0.3, -0.3]))
    assert trajectory_outcomes(b, "success").tolist() == [1.0, 0.0]


def test_the_kl_gate_scales_the_regulariser(demos):
    policy = make_policy(PolicyConfig(kind="flow", **TINY_POLICY))
    anchor = SFTAnchor(policy, CotrainConfig(data=str(demos), beta=0.01, kl_gate=0.2, batch_size=4))
    assert anchor.weight(0.0) == 0.0 and anchor.weight(0.1) == pytest.approx(0.005)
    assert anchor.weight(0.2) == pytest.approx(0.01) and anchor.weight(3.0) == pytest.approx(0.01)
    assert SFTAnchor(policy, CotrainConfig(data=str(demos), beta=0.3, batch_size=4)).weight(None) == 0.3
    with pytest.raises(ValueError, match="approximate KL"):
        anchor.weight(None)


def test_spearman_with_ties():
    assert rankdata(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # binary outcome vs scores: Pearson on average ranks (hand-computed)
    assert spearman([0.1, 0.4, 0.35, 0.8], [0, 1, 0, 1]) == pytest.approx(0.8944271909999159)
    assert np.isnan(spearman([1, 2, 3], [1, 1, 1]))


# --------------------------------------------------------------------------------- end to end


def test_grpo_in_imagination_with_a_frozen_backbone_evaluated_in_the_simulator(trained, demos, tmp_path, capsys):
    from reinforge.train.rl import RLConfig, RLTrainer

    torch.manual_seed(0)
    init = make_policy(PolicyConfig(kind="flow", **TINY_POLICY)).save_pretrained(tmp_path / "init")
    cfg = load_config(RLConfig, None, [
        f"init={init}", f"out={tmp_path / 'rl'}", "algo=grpo", "env.name=worldmodel", f"env.model={trained[0]}",
        "rollout.num_groups=2", "rollout.group_size=3", "rollout.max_episode_steps=4", "grpo.reward=return",
        "grpo.dual_clip=3", "grpo.entropy_coef=0.003", "grpo.minibatch_size=4", "iterations=2",
        "freeze_backbone=true", "flow_sampler=noise", "flow_noise_min=0.08", "flow_noise_max=0.2",
        f"cotrain.data={demos}", "cotrain.beta=0.01", "cotrain.kl_gate=0.2", "cotrain.batch_size=4",
        "eval.every=0", "eval.final_episodes_per_task=1", "eval.heldout=false", "eval.videos=0",
        "eval.tasks=[0,1]", "checkpoint_every=1"])
    with RLTrainer(cfg) as trainer:
        backbone = {k: v.clone() for k, v in trainer.policy.backbone.state_dict().items()}
        expert = {k: v.clone() for k, v in trainer.policy.expert.state_dict().items()}
        final = trainer.run(progress=False)
        assert trainer.policy.config.noise_max == 0.2 and trainer.eval_env.name == "tabletop"
        assert all(torch.equal(v, trainer.policy.backbone.state_dict()[k]) for k, v in backbone.items())
        assert any(not torch.equal(v, trainer.policy.expert.state_dict()[k]) for k, v in expert.items())
    assert "eval/spatial/success_rate" in final  # evaluated in the real simulator, not in imagination
    from reinforge.train.logging import read_metrics

    rows = [r for r in read_metrics(tmp_path / "rl" / "metrics.jsonl") if "rollout/return" in r]
    assert len(rows) == 2 and all(r["rollout/return"] < 0 for r in rows)
    assert all("train/sft_weight" in r for r in rows)


def test_wm_train_and_eval_from_the_cli(demos, tmp_path, capsys):
    out = tmp_path / "wm"
    assert main(["wm", "train", "--data", str(demos), "--out", str(out), "--steps", "4", "--quiet", *SMALL]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["model"] == str(out / "model") and summary["horizon"] == 4.0
    assert main(["wm", "eval", str(out), "--horizon", "3", "--every", "10", "--videos", "0",
                 "--out", str(tmp_path / "rep")]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["horizon"] == 3.0
    assert (tmp_path / "rep" / "wm_eval.md").is_file()
    # a rerun resumes from the finished checkpoint instead of training again
    assert main(["wm", "train", "--data", str(demos), "--out", str(out), "--steps", "4", "--quiet", *SMALL]) == 0
    assert "resuming at step 4" in " ".join(capsys.readouterr().err.split())
    assert main(["wm", "train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["wm", "train", "--data", str(demos), "--out", str(tmp_path / "y"), "unrol=3"]) == 2
    assert "unroll" in capsys.readouterr().err


def test_rl_evaluates_where_eval_env_says(tmp_path):
    """``eval.env`` sends evaluation elsewhere than training (here: training in sim, evaluating under a
    perturbation); without it a learned simulator's ``evaluate_in`` decides (the test above)."""
    from reinforge.train.rl import RLConfig, RLTrainer

    init = make_policy(PolicyConfig(kind="flow", **TINY_POLICY)).save_pretrained(tmp_path / "init")
    cfg = load_config(RLConfig, None, [f"init={init}", f"out={tmp_path / 'rl'}", "rollout.num_groups=1",
                                       "rollout.group_size=2", "eval.env.perturb=object_major"])
    with RLTrainer(cfg) as trainer:
        assert trainer.collector.env.spec.variant == {}
        assert trainer.eval_env.options["perturb"] == "object_major"
        assert trainer.eval_spec.variant == {"perturb": "object_major"}


class _ReplayOrRandom(torch.nn.Module):
    """A stand-in policy for the agreement check: even envs replay their demonstration's recorded actions (the
    world model's reward is then exactly 0 and the real frames are the recorded ones), odd envs act at random."""

    def __init__(self, ds, episodes, image_size, horizon=4):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # a device for the caller
        self.config = PolicyConfig(kind="flow", **TINY_POLICY)
        self.horizon, self.t = horizon, 0
        longest = max(int(ds.episodes[e]["length"]) for e in episodes)
        self.seqs = torch.zeros(len(episodes), longest + 400, 7)
        for i, e in enumerate(episodes):
            start, n = int(ds.episode_start[e]), int(ds.episodes[e]["length"])
            self.seqs[i, :n] = ds.actions[start:start + n]
        self.random = torch.rand(self.seqs.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1

    def act(self, obs, *, mode="sample", generator=None):
        from types import SimpleNamespace

        sl = slice(self.t, self.t + self.horizon)
        self.t += self.horizon
        chunk = self.seqs[:, sl].clone()
        chunk[1::2] = self.random[1::2, sl]
        return SimpleNamespace(actions=chunk)


def test_reward_agreement_ranks_a_replayed_demonstration_above_random_actions(trained, demos):
    from reinforge.worldmodel.verify import reward_agreement

    env = make_env("worldmodel", suite="spatial", num_envs=3, model=str(trained[0]), start="first")
    ds = env.ds
    pick = np.linspace(0, ds.num_episodes - 1, 2).round().astype(int)
    policy = _ReplayOrRandom(ds, np.repeat(pick, 2), TINY_POLICY["image_size"])
    r = reward_agreement(policy, env, demos=2, samples=2, horizon=3)
    assert r["rollouts"] == 4 and r["demos"] == 2
    assert r["success_rate"] == 0.5, "the replayed demonstrations succeed, the random rollouts do not"
    # within each demonstration's group the replay ranks first by the world model, the real frames and success
    assert r["spearman_wm_oracle_within_group"] == pytest.approx(1.0) and r["groups_wm_oracle_within"] == 2
    assert r["spearman_wm_success_within_group"] == pytest.approx(1.0)
    assert r["spearman_wm_success"] > 0.5 and r["spearman_oracle_success"] > 0.5
