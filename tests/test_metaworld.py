"""MetaWorldEnv: the VecEnv contract on MetaWorld (observations, upright images, fixed initial states, chunks,
episode ends, bad input) and its scripted expert. Needs MetaWorld (installed by ``make test``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reinforge.envs import make_env  # first: it picks MuJoCo's headless GL platform

pytest.importorskip("metaworld")

from reinforge.envs.metaworld.tasks import init_states  # noqa: E402
from reinforge.types import OBS_IMAGE, OBS_INSTRUCTION, OBS_STATE, OBS_TASK_ID  # noqa: E402

pytestmark = pytest.mark.metaworld

EXPERT_TASKS = "reach-v3,drawer-open-v3,button-press-topdown-v3"


def _wood(img: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) uint8 -> (..., H, W) bool: pixels of the table's brown wood."""
    r, g, b = img.int().unbind(-3)
    return (r > 60) & (g * 2 > r) & (g * 100 < 85 * r) & (b < g)


def _run_expert(env, expert, obs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run every env from ``obs`` to its end; returns success, summed reward and length per env."""
    B = env.num_envs
    done = torch.zeros(B, dtype=torch.bool)
    success, ret, length = torch.zeros(B, dtype=torch.bool), torch.zeros(B), torch.zeros(B, dtype=torch.int64)
    while not bool(done.all()):
        res = env.step(expert.act(obs).actions[:, 0])
        ret += torch.where(done, 0.0, res.reward)
        length += (~done).long()
        success |= res.success & ~done
        done |= res.terminated | res.truncated
        obs = res.obs
    return success, ret, length


def test_observation_contract_and_upright_images():
    env = make_env("metaworld", suite="reach-v3,drawer-open-v3", num_envs=2, image_size=(48, 40))
    with env:
        spec = env.spec
        assert spec.action_names == ("dx", "dy", "dz", "gripper") and spec.state_dim == 4
        assert spec.camera_names == ("corner", "gripperPOV") and spec.image_size == (48, 40)
        assert spec.control_hz == pytest.approx(80.0) and spec.num_init_states == 50
        assert spec.init_banks == ("eval", "train", "val") and spec.expert and not spec.snapshot
        obs = env.reset([1, 0], [3, 4])
        assert obs[OBS_IMAGE].shape == (2, 2, 3, 48, 40) and obs[OBS_IMAGE].dtype == torch.uint8
        assert obs[OBS_STATE].shape == (2, 4) and obs[OBS_STATE].dtype == torch.float32
        assert obs[OBS_TASK_ID].tolist() == [1, 0] and obs[OBS_TASK_ID].dtype == torch.int64
        assert obs[OBS_INSTRUCTION] == ["open the drawer", "move the gripper to the goal"]
        # proprio only: hand position and gripper opening (open at reset), no object or goal positions
        full = env.privileged_obs()
        assert torch.equal(obs[OBS_STATE], torch.from_numpy(full[:, :4]).float())
        assert obs[OBS_STATE][:, 3].tolist() == pytest.approx([1.0, 1.0], abs=0.05)
        # upright: the table fills the lower half of the corner view, not the upper one
        wood = _wood(obs[OBS_IMAGE][:, 0]).float()
        assert bool((wood[:, 24:].mean((1, 2)) > 0.25).all()) and bool((wood[:, :24].mean((1, 2)) < 0.05).all())
        res = env.step(torch.zeros(2, 4))
        assert res.obs[OBS_IMAGE].shape == (2, 2, 3, 48, 40) and res.reward.dtype == torch.float32
        assert res.terminated.dtype == torch.bool and res.truncated.dtype == torch.bool
        assert not bool(res.terminated.any() | res.truncated.any())


def test_gripper_command_closes_with_plus_one_and_hand_follows_dz():
    with make_env("metaworld", suite="reach-v3", num_envs=1, render=False) as env:
        s0 = env.reset(0, 0)[OBS_STATE][0]
        for _ in range(15):
            s = env.step(torch.tensor([[0.0, 0.0, 1.0, 1.0]])).obs[OBS_STATE][0]
        assert s[2] > s0[2] + 0.05 and s[3] < s0[3] - 0.3  # moved up, fingers closed


def test_same_task_and_init_id_give_the_same_start():
    kw = dict(suite="reach-v3,push-v3", image_size=32)
    only0 = torch.tensor([True, False])
    with make_env("metaworld", num_envs=2, **kw) as env, make_env("metaworld", num_envs=1, **kw) as fresh:
        first = env.reset([1, 0], [7, 2])
        for tasks, inits, mask in (([1, 1], [3, 9], None), ([0, 1], [5, 9], only0)):
            env.reset(tasks, inits, mask=mask)  # other states, then env 0 switches task (its push env idles)
            for _ in range(8):
                env.step(torch.rand(2, 4) * 2 - 1)
        env1 = env.privileged_obs()[1]
        again = env.reset([1, 0], [7, 0], mask=only0)  # env 0 gets its used push env back, env 1 runs on
        ref = fresh.reset([1], [7])
        for o in (again, ref):
            assert torch.equal(o[OBS_IMAGE][0], first[OBS_IMAGE][0])
            assert torch.equal(o[OBS_STATE][0], first[OBS_STATE][0])
        assert again[OBS_TASK_ID].tolist() == [1, 1] and np.array_equal(env.privileged_obs()[1], env1)
        # init ids are distinct variations: other object/goal positions
        other = fresh.reset([1], [8])
        assert not np.allclose(env.privileged_obs()[0, 4:], fresh.privileged_obs()[0, 4:])
        assert not torch.equal(other[OBS_IMAGE], ref[OBS_IMAGE])


def test_eval_train_and_val_banks_are_disjoint():
    ev, tr, va = (init_states("reach-v3", b) for b in ("eval", "train", "val"))
    assert len(ev) == len(tr) == len(va) == 50
    banks = [{t.data for t in ev}, {t.data for t in tr}, {t.data for t in va}]
    assert not banks[0] & banks[1] and not banks[0] & banks[2] and not banks[1] & banks[2]


def test_step_chunk_equals_stepping_one_by_one():
    kw = dict(suite="push-v3,drawer-close-v3", num_envs=2, image_size=32, max_episode_steps=6)
    actions = torch.rand(2, 8, 4) * 2 - 1
    with make_env("metaworld", **kw) as one, make_env("metaworld", **kw) as chunked:
        one.reset([0, 1], [0, 1])
        chunked.reset([0, 1], [0, 1])
        steps = [one.step(actions[:, h]) for h in range(6)]
        c1 = chunked.step_chunk(actions[:, :4])
        assert c1.valid.all() and not bool(c1.truncated.any())
        assert torch.equal(c1.obs[OBS_IMAGE], steps[3].obs[OBS_IMAGE])
        assert torch.equal(c1.obs[OBS_STATE], steps[3].obs[OBS_STATE])
        # the time limit ends both envs after 2 more steps; an inactive env does not move
        c2 = chunked.step_chunk(actions[:, 4:], active=torch.tensor([True, True]))
        assert c2.valid.tolist() == [[True, True, False, False]] * 2 and c2.truncated.all()
        assert torch.equal(c2.obs[OBS_IMAGE], steps[5].obs[OBS_IMAGE])
        assert torch.equal(c2.obs[OBS_STATE], steps[5].obs[OBS_STATE]) and steps[5].truncated.all()
        chunked.reset([0, 1], [0, 1], mask=torch.tensor([True, False]))
        before = chunked.privileged_obs()[1]
        c3 = chunked.step_chunk(actions[:, :3], active=torch.tensor([True, False]))
        assert c3.valid.tolist() == [[True] * 3, [False] * 3] and np.array_equal(chunked.privileged_obs()[1], before)


def test_expert_solves_easy_tasks_and_the_episode_ends_on_success():
    with make_env("metaworld", suite=EXPERT_TASKS, num_envs=9, render=False) as env:
        obs = env.reset([0, 0, 0, 1, 1, 1, 2, 2, 2], [0, 1, 2] * 3)
        success, ret, length = _run_expert(env, env.make_expert(), obs)
        assert success.all(), success
        assert ret.tolist() == [1.0] * 9  # reward 1 once, on the step success first holds
        assert bool((length < env.max_episode_steps).all())


def test_noisy_expert_keeps_the_clean_action():
    with make_env("metaworld", suite="reach-v3", num_envs=2, render=False) as env:
        obs = env.reset(0, [0, 1])
        clean = env.make_expert().act(obs).actions[:, 0]
        out = env.make_expert(noise=0.3, seed=1).act(obs)
        assert out.actions.shape == (2, 1, 4) and torch.equal(out.replay["clean_action"], clean)
        assert not torch.allclose(out.actions[:, 0, :3], clean[:, :3])
        assert torch.equal(out.actions[:, 0, 3], clean[:, 3])  # noise on the translation only
        assert bool((out.actions.abs() <= 1).all())


def test_bad_actions_and_unknown_names_are_refused():
    with make_env("metaworld", suite="reach-v3", num_envs=2, render=False) as env:
        env.reset(0, 0)
        bad = torch.zeros(2, 4)
        bad[1, 2] = float("nan")
        with pytest.raises(ValueError, match="NaN"):
            env.step(bad)
        with pytest.raises(ValueError, match="NaN"):
            env.step_chunk(bad[:, None])
        with pytest.raises(ValueError, match="shape"):
            env.step(torch.zeros(2, 7))
        with pytest.raises(ValueError, match="out of range"):
            env.reset(1)
        with pytest.raises(ValueError, match="out of range"):
            env.reset(0, 50)
    with pytest.raises(ValueError, match="mt10.*pick-place-v3"):
        make_env("metaworld", suite="mt11")
    with pytest.raises(ValueError, match="unknown tasks"):
        make_env("metaworld", suite="reach-v3,fly-v3")
    with pytest.raises(ValueError, match="split"):
        make_env("metaworld", suite="mt10", split="heldout")
    with pytest.raises(ValueError, match="camera"):
        make_env("metaworld", suite="reach-v3", cameras=("corner", "wrist"))


def test_close_releases_the_envs():
    env = make_env("metaworld", suite="reach-v3", num_envs=1, image_size=16)
    env.reset(0, 0)
    env.close()
    env.close()  # twice is fine
    with pytest.raises(RuntimeError, match="closed"):
        env.reset(0, 0)


def test_the_whole_loop_through_the_commands(tmp_path, capsys):
    """demos (MetaWorld's scripted policy) -> SFT -> 1 PPO iteration -> eval, all through `reinforge ...` and the
    registry, with MetaWorld's 4-dim actions and state."""
    import json

    from reinforge.cli import main

    data, sft, rl = tmp_path / "demos", tmp_path / "sft", tmp_path / "rl"
    assert main(["demos", "--env", "metaworld", "--suite", "reach-v3", "--per-task", "1", "--image-size", "32",
                 "--out", str(data)]) == 0
    info = json.loads((data / "meta" / "info.json").read_text())
    assert info["reinforge"]["env"] == "metaworld" and info["features"]["action"]["names"][-1] == "gripper"
    capsys.readouterr()
    assert main(["sft", "--data", str(data), "--policy", "flow", "--out", str(sft), "--steps", "3", "--quiet",
                 "policy.image_size=[32,32]", "policy.d_model=32", "policy.heads=2", "batch_size=8",
                 "eval_episodes_per_task=1"]) == 0
    assert "eval/reach-v3/success_rate" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["train", "metaworld_ppo_flow_sde", f"init={sft / 'policy'}", f"out={rl}", "env.suite=reach-v3",
                 "iterations=1", "rollout.num_envs=2", "rollout.chunks_per_rollout=2", "ppo.critic_warmup=0",
                 "ppo.minibatch_size=4", "eval.final_episodes_per_task=1", "eval.videos=0", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["iterations"] == 1 and "eval/reach-v3/success_rate" in summary
    assert main(["eval", "--env", "metaworld", "--suite", "reach-v3", "--policy", str(rl / "policy"),
                 "--episodes-per-task", "1", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["env"] == "metaworld" and r["num_episodes"] == 1
