"""Perturbed initial states (env option ``perturb``): each condition moves exactly what it names, by its
magnitude, the same way in every env; unknown names are config errors; the expert still solves the tasks."""

from __future__ import annotations

import pytest
import torch

from reinforge.cli import main
from reinforge.config import ConfigError
from reinforge.envs import EnvConfig, TabletopEnv, make_env
from reinforge.envs.tabletop.catalog import CATEGORY_INDEX, DRAWER_MAX_OPEN
from reinforge.envs.tabletop.expert import ScriptedExpert
from reinforge.envs.tabletop.options import TabletopOptions
from reinforge.envs.tabletop.perturb import PERTURBATIONS, SHIFT, YAW, moved_keys, perturbed_init
from reinforge.envs.tabletop.tasks import NUM_INIT_STATES, get_suite
from reinforge.envs.tabletop.world import Scene

SUITES = ("spatial", "goal", "long")
INITS = (0, 7, 23, 49)
# (suite, group) -> tasks whose cabinet has no room for a major shift with its drawer's path clear (long_v1 had
# three: long_0 and long_6 for goal_major, long_9 for object_major; the smaller scenes of long have room)
PINNED = {("goal", "object"): (2,)}


def _initial_states(suite: str, perturb: str):
    """The initial WorldState of every (task, init) in INITS, task-major, and the task ids."""
    s = get_suite(suite)
    tasks = torch.arange(s.num_tasks).repeat_interleave(len(INITS))
    env = TabletopEnv(suite, len(tasks), render=False, perturb=perturb)
    env.reset(tasks, torch.tensor(INITS).repeat(s.num_tasks))
    return env.get_state(), tasks


def _slots(suite: str, task: int, group: str) -> list[int]:
    keys = get_suite(suite).object_keys[task]
    return [keys.index(k) for k in moved_keys(get_suite(suite).tasks[task], group)]


def test_names_and_magnitudes():
    assert PERTURBATIONS == ("object_minor", "object_major", "goal_minor", "goal_major", "robot_minor",
                             "robot_major", "combined_minor", "combined_major")
    assert SHIFT["minor"] < SHIFT["major"] and YAW["minor"] < YAW["major"]


def test_groups_follow_the_goal_predicates():
    spatial, goal, long = (get_suite(n).tasks for n in SUITES)
    assert moved_keys(spatial[0], "object") == ("target",) and moved_keys(spatial[0], "goal") == ("plate",)
    assert moved_keys(spatial[3], "object") == ("target", "cheese")  # the bowl starts on the cheese box
    assert moved_keys(goal[2], "object") == ("cabinet", "drawer") and moved_keys(goal[2], "goal") == ()  # open
    assert moved_keys(goal[5], "goal") == ()  # push into a region: no receptacle
    assert moved_keys(long[1], "object") == ("bowl",) and moved_keys(long[1], "goal") == ("cabinet", "drawer")


@pytest.mark.parametrize("suite", SUITES)
@pytest.mark.parametrize("perturb", PERTURBATIONS)
def test_each_condition_moves_exactly_what_it_names(suite, perturb):
    base, tasks = _initial_states(suite, "")
    moved, _ = _initial_states(suite, perturb)
    what, level = perturb.rsplit("_", 1)
    groups = ("object", "goal") if what == "combined" else (what,) if what != "robot" else ()
    unmoved = perturbed_init(suite, "train", "eval", perturb).unmoved
    pinned = [t for g in groups for t in PINNED.get((suite, g), ())] if level == "major" else []
    free = [t for t in range(unmoved.shape[0]) if t not in pinned]
    assert unmoved[free].float().mean() < 0.01  # a clear direction nearly always exists
    for b, t in enumerate(tasks.tolist()):
        d = moved.pos[b] - base.pos[b]
        assert torch.equal(d[:, 2], torch.zeros_like(d[:, 2]))  # heights and supports as they were
        assert torch.equal(moved.support[b], base.support[b]) and torch.equal(moved.inside[b], base.inside[b])
        slots = [i for g in groups for i in _slots(suite, t, g)]
        shift = d[:, :2].norm(dim=-1)
        others = [i for i in range(d.shape[0]) if i not in slots]
        assert torch.equal(shift[others], torch.zeros(len(others))), (t, perturb)
        if slots and not unmoved[t, INITS[b % len(INITS)]]:
            assert torch.allclose(shift[slots], torch.full((len(slots),), SHIFT[level]), atol=1e-5), (t, perturb)
        # drawers start closed where they are, or drawer_open out of it
        drawer = get_suite(suite).category[t] == CATEGORY_INDEX["drawer"]
        opened = torch.where(drawer, get_suite(suite).tasks[t].drawer_open, 0.0)
        assert torch.allclose(moved.anchor_y[b], moved.pos[b, :, 1] + opened)
        g = moved.grip_pos[b] - base.grip_pos[b]
        if what in ("robot", "combined"):
            assert g.norm().item() == pytest.approx(SHIFT[level], abs=1e-5) and g[2].abs() <= SHIFT[level] / 2
            assert moved.grip_yaw[b].abs().item() == pytest.approx(YAW[level])
        else:
            assert torch.equal(g, torch.zeros(3)) and moved.grip_yaw[b].item() == 0.0


def test_stacks_and_drawers_move_with_what_they_rest_in():
    spatial, _ = _initial_states("spatial", "object_major")
    base, _ = _initial_states("spatial", "")
    d = (spatial.pos - base.pos)[3 * len(INITS)]  # task 3: the bowl on the cheese box
    keys = get_suite("spatial").object_keys[3]
    assert torch.allclose(d[keys.index("target")], d[keys.index("cheese")])
    goal, _ = _initial_states("goal", "object_minor")  # (major: no room, PINNED)
    base, _ = _initial_states("goal", "")
    d = (goal.pos - base.pos)[2 * len(INITS)]  # task 2: open the drawer, which moves with its cabinet
    keys = get_suite("goal").object_keys[2]
    assert torch.allclose(d[keys.index("drawer")], d[keys.index("cabinet")]) and d[keys.index("cabinet")].norm() > 0


@pytest.mark.parametrize("suite", ["goal", "long"])
def test_a_drawer_the_task_opens_has_a_clear_path(suite):
    """The world lets an opening drawer pass through objects: no perturbation may put one in its way."""
    s = get_suite(suite)
    for perturb in PERTURBATIONS:
        st, tasks = _initial_states(suite, perturb)
        half = Scene.from_categories(s.category[tasks], s.rgb[tasks], s.active[tasks]).half  # (B, N, 2)
        for b, t in enumerate(tasks.tolist()):
            keys = s.object_keys[t]
            if "drawer" not in {k for term in s.tasks[t].goals for k in term[1:]}:
                continue
            d, cabinet = keys.index("drawer"), keys.index("cabinet")
            lo = st.anchor_y[b, d] - half[b, d, 1] - DRAWER_MAX_OPEN  # the front of the fully open drawer
            for i in set(range(len(keys))) - {d, cabinet}:
                apart_x = (st.pos[b, i, 0] - st.pos[b, d, 0]).abs() >= half[b, i, 0] + half[b, d, 0]
                apart_y = st.pos[b, i, 1] - half[b, i, 1] >= st.anchor_y[b, d] + half[b, d, 1] or \
                    st.pos[b, i, 1] + half[b, i, 1] <= lo
                assert apart_x or apart_y, (perturb, s.tasks[t].name, keys[i])


def test_same_task_and_init_give_the_same_scene_in_any_env():
    a = TabletopEnv("object", 6, render=False, seed=0, perturb="combined_major")
    b = TabletopEnv("object", 3, render=False, seed=123, perturb="combined_major")
    a.reset([0, 4, 9, 2, 2, 7], [3, 11, 40, 5, 6, 0])
    b.reset([7, 2, 4], [0, 5, 11])
    sa, sb = a.get_state(), b.get_state()
    for ia, ib in ((5, 0), (3, 1), (1, 2)):
        for field in ("pos", "grip_pos", "grip_yaw", "anchor_y"):
            assert torch.equal(getattr(sa, field)[ia], getattr(sb, field)[ib]), field
    # combined = the goal, object and robot draws of its level: the goal and robot parts are theirs exactly
    combined, goal, robot = (perturbed_init("object", "train", "eval", f"{p}_major")
                             for p in ("combined", "goal", "robot"))
    assert combined.pos.shape[:2] == (10, NUM_INIT_STATES)
    basket = get_suite("object").object_keys[0].index("basket")
    assert torch.equal(combined.pos[:, :, basket], goal.pos[:, :, basket])
    assert torch.equal(combined.gripper, robot.gripper) and torch.equal(combined.yaw, robot.yaw)


def test_the_option_reaches_the_env_and_its_spec():
    cfg = EnvConfig.from_mapping({"name": "tabletop", "suite": "spatial", "perturb": "goal_minor"})
    env = make_env(cfg, num_envs=2, image_size=16)
    assert env.spec.variant == {"perturb": "goal_minor"}
    env.reset([0, 1], [2, 3])
    plain = TabletopEnv("spatial", 2, image_size=16)
    plain.reset([0, 1], [2, 3])
    assert not torch.equal(env.get_state().pos, plain.get_state().pos) and plain.spec.variant == {}
    real = TabletopEnv("spatial", 1, render=False, domain="real", perturb="robot_major")
    assert real.spec.variant == {"domain": "real", "perturb": "robot_major"}


def test_unknown_perturbation_is_a_clear_error(capsys):
    with pytest.raises(ConfigError, match=r"'env.perturb' must be one of .*'object_minor'.*got 'object_huge'"):
        EnvConfig.from_mapping({"name": "tabletop", "perturb": "object_huge"})
    with pytest.raises(ConfigError, match=r"'env.perturb' must be empty \(none\) or one of"):
        TabletopOptions(perturb="object")
    with pytest.raises(ValueError, match="unknown perturbation 'goal'"):
        TabletopEnv("spatial", 1, perturb="goal")
    assert main(["eval", "--env-opt", "perturb=robot_huge"]) == 2
    assert "env.perturb" in capsys.readouterr().err


def test_expert_still_solves_spatial_under_combined_major():
    env = TabletopEnv("spatial", 20, render=False, perturb="combined_major")
    env.reset(torch.arange(20) // 2, torch.tensor([4, 31] * 10))
    expert = ScriptedExpert(env)
    success = torch.zeros(20, dtype=torch.bool)
    for _ in range(env.max_episode_steps):
        res = env.step(expert.act().actions[:, 0])
        success |= res.success
        if bool((res.terminated | res.truncated).all()):
            break
    assert success.float().mean() >= 0.9, success.tolist()
