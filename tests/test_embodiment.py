"""Embodiments of the built-in world and the unified action space (Green-VLA): layouts, index maps, kinematics,
experts, masked losses, unified-space policies acting natively, SFT on several embodiments and R0 -> R1."""

from __future__ import annotations

import json
import math

import pytest
import torch

from reinforge.cli import main
from reinforge.data import DemoDataset
from reinforge.data.record import record_demos
from reinforge.data.unified import to_unified, unified_stats
from reinforge.envs import EnvConfig, make_env
from reinforge.envs.embodiment import UNIFIED_DIM, get_embodiment, registered_embodiments, slot_name
from reinforge.envs.tabletop.robots import ScaraRobot
from reinforge.envs.tabletop.tasks import get_suite
from reinforge.policies import PolicyConfig, make_policy
from reinforge.policies.base import Normalizer
from reinforge.types import OBS_IMAGE, OBS_INSTRUCTION, OBS_STATE

ROBOTS = ("franka", "scara", "widowx")
TINY = ["policy.image_size=[32,32]", "policy.d_model=32", "policy.heads=2", "policy.fusion_layers=1",
        "policy.channels=[16,16]", "policy.horizon=4", "policy.execute_steps=4", "batch_size=8", "log_every=5",
        "eval_episodes_per_task=1"]


@pytest.mark.parametrize("name", sorted(registered_embodiments()))
def test_index_maps_round_trip_native_and_unified(name):
    e = get_embodiment(name)
    for kind, dim in (("action", e.action_dim), ("state", e.state_dim)):
        x = torch.randn(3, 2, dim)
        u = e.to_unified(x, kind)
        assert u.shape == (3, 2, UNIFIED_DIM)
        assert torch.equal(e.from_unified(u, kind), x)
        mask = e.slot_mask(kind)
        assert int(mask.sum()) == dim and bool((u[..., ~mask] == 0).all())
    with pytest.raises(ValueError, match="action dims"):
        e.to_unified(torch.zeros(2, e.action_dim + 1), "action")


def test_slot_names_follow_the_green_vla_layout():
    assert slot_name(0) == "arm_joints[0]" and slot_name(13) == "gripper" and slot_name(37) == "eef_xyz[2]"
    assert slot_name(44) == "eef_rotation_delta[2]" and slot_name(60) == "unused"


def test_scara_kinematics_round_trip_and_joint_actions_move_the_gripper_through_forward_kinematics():
    robot = ScaraRobot()
    gen = torch.Generator().manual_seed(0)
    pos = torch.rand(64, 3, generator=gen) * torch.tensor([0.6, 0.52, 0.3]) + torch.tensor([-0.3, -0.26, 0.01])
    yaw = (torch.rand(64, generator=gen) * 2 - 1) * math.pi
    q = robot.inverse(pos, yaw)
    p2, yaw2 = robot.forward(q)
    assert torch.allclose(p2, pos, atol=1e-5)
    assert torch.allclose(torch.remainder(yaw2 - yaw + math.pi, 2 * math.pi) - math.pi, torch.zeros(64), atol=1e-5)
    env = make_env("tabletop", suite="spatial", num_envs=2, render=False, embodiment="scara")
    obs = env.reset(0, [0, 1])
    q0 = obs[OBS_STATE][:, :4].clone()
    a = torch.tensor([[1.0, 0.0, 0.0, 0.0, -1.0], [0.0, -1.0, 0.5, 0.0, -1.0]])
    obs = env.step(a).obs
    dq = obs[OBS_STATE][:, :4] - q0
    assert torch.allclose(dq, torch.tensor([[0.025, 0.0, 0.0, 0.0], [0.0, -0.04, 0.01, 0.0]]), atol=1e-4)


def test_widowx_gripper_takes_a_target_opening_at_half_speed():
    env = make_env("tabletop", suite="spatial", num_envs=1, render=False, embodiment="widowx")
    obs = env.reset(0, 0)
    assert float(obs[OBS_STATE][0, -1]) == 1.0
    close = torch.tensor([[0.0, 0.0, 0.0, 0.0, -1.0]])
    openings = [float(env.step(close).obs[OBS_STATE][0, -1]) for _ in range(9)]
    assert openings[:2] == [0.875, 0.75] and openings[7:] == [0.0, 0.0]
    half = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0]])  # target opening 0.5
    assert [float(env.step(half).obs[OBS_STATE][0, -1]) for _ in range(5)] == [0.125, 0.25, 0.375, 0.5, 0.5]


@pytest.mark.parametrize("robot", ROBOTS)
def test_each_expert_solves_every_suite(robot):
    for suite in ("spatial", "object", "goal", "long"):
        n = get_suite(suite).num_tasks
        env = make_env("tabletop", suite=suite, num_envs=4 * n, render=False, embodiment=robot)
        obs = env.reset([t for t in range(n) for _ in range(4)], [k for _ in range(n) for k in range(4)])
        expert = env.make_expert()
        done = torch.zeros(env.num_envs, dtype=torch.bool)
        success = done.clone()
        while not bool(done.all()):
            out = expert.act(obs)
            assert out.actions.shape == (env.num_envs, 1, env.action_dim)
            res = env.step(out.actions[:, 0])
            success |= res.success & ~done
            done |= res.terminated | res.truncated
            obs = res.obs
        assert float(success.float().mean()) >= 0.98, (robot, suite)


def test_the_same_task_needs_different_action_sequences_per_robot():
    firsts = {}
    for robot in ROBOTS:
        env = make_env("tabletop", suite="spatial", num_envs=1, render=False, embodiment=robot)
        env.reset(0, 0)
        firsts[robot] = env.make_expert().act().actions[0, 0]
        assert env.spec.embodiment == robot and env.spec.action_dim == get_embodiment(robot).action_dim
    assert firsts["scara"].shape != firsts["franka"].shape
    assert not torch.allclose(firsts["scara"][:3], firsts["widowx"][:3])


def _unified_policy(kind: str, mask: bool = True):
    table = ("franka", "scara")
    stats_a = torch.zeros(UNIFIED_DIM, 2)
    stats_a[:, 0], stats_a[:, 1] = -1.0, 1.0
    used = get_embodiment("franka").slot_mask("action") | get_embodiment("scara").slot_mask("action")
    low, high = torch.where(used, -1.0, 0.0), torch.where(used, 1.0, 0.0)
    norm = Normalizer(low.tolist(), high.tolist(), [0.0] * UNIFIED_DIM, [1.0] * UNIFIED_DIM)
    cfg = PolicyConfig(kind=kind, image_size=(32, 32), d_model=32, heads=2, fusion_layers=1, channels=(16, 16),
                       horizon=4, execute_steps=2, action_space="unified", unified_mask=mask, action_dim=UNIFIED_DIM,
                       state_dim=UNIFIED_DIM, embodiments=table, embodiment="scara")
    torch.manual_seed(0)
    return make_policy(cfg, norm)


def _batch(policy, garbage: float = 0.0):
    B, H = 4, policy.config.horizon
    scara = get_embodiment("scara")
    native = torch.rand(B, H, scara.action_dim) * 2 - 1
    actions = scara.to_unified(native, "action")
    actions[..., ~scara.slot_mask("action")] = garbage  # what the embodiment does not fill
    return {OBS_IMAGE: torch.randint(0, 255, (B, 2, 3, 32, 32), dtype=torch.uint8),
            OBS_STATE: scara.to_unified(torch.randn(B, scara.state_dim), "state"),
            OBS_INSTRUCTION: ["put the bowl on the plate"] * B, "actions": actions,
            "is_pad": torch.zeros(B, H, dtype=torch.bool), "embodiment_id": torch.ones(B, dtype=torch.int64)}


@pytest.mark.parametrize("kind", ["flow", "token"])
def test_masked_loss_ignores_the_slots_the_embodiment_does_not_fill(kind):
    def loss(policy, garbage):
        torch.manual_seed(1)
        return float(policy.sft_loss(_batch(policy, garbage))[0].detach())

    torch.manual_seed(2)
    masked_policy = _unified_policy(kind, mask=True)
    assert loss(masked_policy, 0.0) == loss(masked_policy, 0.9)
    padded = _unified_policy(kind, mask=False)
    assert loss(padded, 0.0) != loss(padded, 0.9)


@pytest.mark.parametrize("kind", ["flow", "token"])
def test_unified_policy_acts_natively_with_a_tagged_prompt_and_replays_its_log_prob(kind):
    policy = _unified_policy(kind).eval()
    env = make_env("tabletop", suite="spatial", num_envs=3, image_size=32, embodiment="scara")
    policy.bind_env(env.spec)
    obs = env.reset(0, [0, 1, 2])
    _, texts, state = policy.prepare(obs)
    assert texts[0].startswith("[joint] [scara] ") and state.shape == (3, UNIFIED_DIM)
    assert bool((state[:, ~get_embodiment("scara").slot_mask("state")] == 0).all())
    out = policy.act(obs, mode="sample", generator=torch.Generator().manual_seed(0))
    assert out.actions.shape == (3, 2, 5)
    lp, _, _ = policy.evaluate(obs, out.replay)
    assert torch.allclose(lp, out.log_prob, atol=1e-4)
    assert int(policy.entry_mask().sum()) == 2 * 5  # executed steps x the scara's action slots
    widowx = make_env("tabletop", suite="spatial", num_envs=1, image_size=32, embodiment="widowx")
    with pytest.raises(ValueError, match="knows the embodiments.*widowx"):
        policy.bind_env(widowx.spec)


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    root = tmp_path_factory.mktemp("emb")
    return {r: record_demos(EnvConfig.from_mapping({"name": "tabletop", "suite": "spatial", "embodiment": r}),
                            root / r, per_task=1, image_size=32, tasks=[0, 1]) for r in ROBOTS}


def test_datasets_record_their_embodiment_and_unified_stats_count_only_filling_embodiments(demos):
    info = json.loads((demos["scara"] / "meta" / "info.json").read_text())["reinforge"]
    assert info["embodiment"] == "scara" and info["control_mode"] == "joint"
    assert info["variant"] == {"embodiment": "scara"} and info["action_slots"] == [0, 1, 2, 3, 13]
    table = ("franka", "scara")
    sets = [to_unified(DemoDataset.load(demos[r]), table) for r in table]
    assert sets[1].actions.shape[1] == UNIFIED_DIM and set(sets[1].embodiment_id.tolist()) == {1}
    stats = unified_stats(sets)["action"]
    scara_only = torch.cat([DemoDataset.load(demos["scara"]).actions[:, 0]])
    assert stats["mean"][0] == pytest.approx(float(scara_only.double().mean()), abs=1e-6)
    assert stats["q01"][5] == stats["q99"][5] == 0.0  # no embodiment fills slot 5


def test_sft_on_several_embodiments_then_fine_tuning_on_one(demos, tmp_path, capsys):
    r0, r1 = tmp_path / "r0", tmp_path / "r1"
    assert main(["sft", "--data", str(demos["franka"]), "--data", str(demos["scara"]), "--data",
                 str(demos["widowx"]), "--policy", "flow", "--out", str(r0), "--steps", "4", "--quiet", *TINY,
                 "policy.action_space=unified", "policy.embodiment=widowx"]) == 0
    cfg = json.loads((r0 / "policy" / "config.json").read_text())["reinforge_policy"]
    assert cfg["embodiments"] == ["franka", "scara", "widowx"] and cfg["action_dim"] == UNIFIED_DIM
    capsys.readouterr()
    assert main(["sft", "--data", str(demos["widowx"]), "--out", str(r1), "--steps", "4", "--quiet", *TINY,
                 f"init={r0 / 'policy'}"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "eval/spatial/success_rate" in summary  # evaluated in the widowx world the data came from
    cfg = json.loads((r1 / "policy" / "config.json").read_text())["reinforge_policy"]
    assert cfg["embodiment"] == "widowx" and cfg["kind"] == "flow"
    # an init policy of another embodiment is refused with the dims that differ
    assert main(["sft", "--data", str(demos["scara"]), "--out", str(tmp_path / "x"), "--steps", "2", "--quiet",
                 *TINY, f"init={r1 / 'policy'}"]) == 0  # unified: scara is in its table
    native = tmp_path / "native"
    assert main(["sft", "--data", str(demos["franka"]), "--out", str(native), "--steps", "2", "--quiet", *TINY]) == 0
    assert main(["sft", "--data", str(demos["scara"]), "--out", str(tmp_path / "y"), "--steps", "2", "--quiet",
                 *TINY, f"init={native / 'policy'}"]) == 2
    assert "start from a policy of this embodiment" in capsys.readouterr().err


def test_embodiments_command_lists_one_per_line_then_layouts(capsys):
    assert main(["embodiments"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = list(registered_embodiments())
    assert [ln.split()[0] for ln in lines[:len(names)]] == names
    assert "scara  joint  action_dim=5" in lines[1]
    text = "\n".join(lines)
    assert "action[0] dq_shoulder" in text and "unified[ 0] arm_joints[0]" in text
