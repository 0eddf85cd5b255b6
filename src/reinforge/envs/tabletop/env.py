"""``TabletopEnv``: the built-in batched tabletop manipulation world as a ``VecEnv``.

With the default robot (``embodiment="franka"``) actions follow LIBERO: 7 floats in [-1, 1], end-effector
deltas (x, y, z, roll, pitch, yaw) scaled by a maximum speed per step, then the gripper command (-1 open, +1
close). Roll and pitch are ignored by this world. Control runs at 20 Hz. Observations: two 3x H x W uint8 camera
views (agentview, wrist), an 8-dim LIBERO-layout proprio state (end-effector position, axis-angle orientation,
two finger positions), the instruction and the task id. Other robots (``scara``: joint-space, ``widowx``: a
position-controlled gripper) have their own action and state layouts (``robots.py``). Rewards are sparse: 1 on
the step the task succeeds, which ends the episode.

The env never resets itself: reset finished envs with ``reset(..., mask=done)``.
"""

from __future__ import annotations

import time
from dataclasses import fields

import numpy as np
import torch

from reinforge.envs.base import ChunkResult, EnvSpec, Task, VecEnv
from reinforge.envs.tabletop.domain import get_domain
from reinforge.envs.tabletop.perturb import PERTURBATIONS, perturbed_init
from reinforge.envs.tabletop.predicates import task_success
from reinforge.envs.tabletop.render import Backend, Renderer
from reinforge.envs.tabletop.robots import TabletopRobot, make_robot
from reinforge.envs.tabletop.tasks import (
    HELDOUT_SUITES,
    INIT_BANKS,
    NUM_INIT_STATES,
    InitBank,
    Split,
    Suite,
    get_suite,
)
from reinforge.envs.tabletop.world import Scene, WorldState, step_world
from reinforge.types import OBS_IMAGE, OBS_INSTRUCTION, OBS_STATE, OBS_TASK_ID, Observation, StepResult

ACTION_DIM = 7  # the default robot's (franka) layout
STATE_DIM = 8
CONTROL_HZ = 20
ACTION_NAMES = ("dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper")
STATE_NAMES = ("eef_x", "eef_y", "eef_z", "eef_axis_angle_x", "eef_axis_angle_y", "eef_axis_angle_z",
               "finger_left", "finger_right")
CAMERA_NAMES = ("agentview", "wrist")
NEUTRAL_ACTION = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0])  # stay, gripper open
DEFAULT_ROBOT = "franka"


def _as_index_tensor(x, n: int, name: str, device) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=torch.int64, device=device)
    if t.dim() == 0:
        t = t.expand(n)
    if t.shape != (n,):
        raise ValueError(f"{name} must be an int or a sequence of {n} ints (one per env), got shape "
                         f"{tuple(t.shape)}")
    return t.clone()


def proprio_state(state: WorldState) -> torch.Tensor:
    """(B, 8) LIBERO-layout proprio of the default robot: eef xyz, axis-angle of a downward gripper with yaw,
    finger qpos."""
    return TabletopRobot().proprio(state)


class TabletopEnv(VecEnv):
    """B tabletop envs of one suite, stepped together with tensor ops (CPU or CUDA)."""

    def __init__(self, suite: str | Suite = "spatial", num_envs: int = 1, *, split: Split = "train",
                 image_size: int | tuple[int, int] = 64, render: bool = True,
                 render_backend: Backend = "auto",
                 max_episode_steps: int | None = None, init_bank: InitBank = "eval",
                 device: str | torch.device = "cpu", seed: int = 0, domain: str = "sim", perturb: str = "",
                 end_on_success: bool = True, embodiment: str = DEFAULT_ROBOT, step_delay_ms: float = 0.0):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.suite = suite if isinstance(suite, Suite) else get_suite(suite, split)
        self.num_envs = int(num_envs)
        self.device = torch.device(device)
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        self.image_size = (int(h), int(w))
        self.render_images = render
        self.domain = get_domain(domain)
        d = self.domain
        self.renderer = Renderer(h, w, render_backend, camera_offsets=dict(
            eye_offset=d.agent_eye_offset, target_offset=d.agent_target_offset,
            wrist_pitch_offset=d.wrist_pitch_offset))
        self._seed = int(seed)
        self._frames = 0  # rendered frames: the sensor noise of frame k is drawn from (seed, k)
        limit = int(max_episode_steps or self.suite.max_episode_steps)
        if limit < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {limit}")
        if init_bank not in INIT_BANKS:
            raise ValueError(f"unknown init_bank {init_bank!r}; use one of {list(INIT_BANKS)}")
        self.init_bank = init_bank
        self.end_on_success = bool(end_on_success)
        if step_delay_ms < 0:
            raise ValueError(f"step_delay_ms must be >= 0, got {step_delay_ms}")
        self.step_delay_s = float(step_delay_ms) / 1000
        self.robot = make_robot(embodiment)
        emb = self.robot.embodiment
        if perturb and perturb not in PERTURBATIONS:
            raise ValueError(f"unknown perturbation {perturb!r}; use '' (none) or one of {list(PERTURBATIONS)}")
        s = self.suite
        self.spec = EnvSpec(
            env="tabletop", suite=s.name, split=s.split, tasks=tuple(Task(t.name, t.instruction) for t in s.tasks),
            max_episode_steps=limit, control_hz=CONTROL_HZ, action_names=emb.action_names, state_names=emb.state_names,
            camera_names=CAMERA_NAMES if render else (), image_size=self.image_size, num_init_states=NUM_INIT_STATES,
            init_banks=INIT_BANKS, splits=("train", "heldout") if s.name in HELDOUT_SUITES else ("train",),
            snapshot=True, expert=True, embodiment=emb.name,
            variant={**({"embodiment": emb.name} if emb.name != DEFAULT_ROBOT else {}),
                     **({"domain": d.name} if d.name != "sim" else {}), **({"perturb": perturb} if perturb else {}),
                     **({} if end_on_success else {"end_on_success": False})})
        self._rng = np.random.default_rng(seed)
        dev = self.device
        bank = INIT_BANKS.index(init_bank)
        self._tables = {k: getattr(s, k).to(dev) for k in (
            "category", "rgb", "active", "goal_terms", "goal_mask", "goal_regions")}
        self._tables["rgb"] = d.object_rgb(self._tables["rgb"])
        for k in ("init_pos", "init_support", "init_inside", "init_gripper"):
            self._tables[k] = getattr(s, k)[bank].to(dev)
        self._tables["init_yaw"] = torch.zeros(self._tables["init_gripper"].shape[:2], device=dev)
        if perturb:  # moved objects and robot start, precomputed once per (suite, split, bank, perturbation)
            p = perturbed_init(s.name, s.split, init_bank, perturb)
            self._tables.update(init_pos=p.pos.to(dev), init_gripper=p.gripper.to(dev), init_yaw=p.yaw.to(dev))
        self.task_id = torch.zeros(self.num_envs, dtype=torch.int64, device=dev)
        self.init_id = torch.zeros(self.num_envs, dtype=torch.int64, device=dev)
        self.elapsed = torch.zeros(self.num_envs, dtype=torch.int64, device=dev)
        # commands waiting to be executed (latency): (B, latency_steps, 7), oldest first
        self._pending = torch.zeros(self.num_envs, d.latency_steps, self.action_dim, device=dev)
        self.scene: Scene | None = None
        self.state: WorldState | None = None
        self._goal = None

    # ------------------------------------------------------------ contract

    @property
    def instructions(self) -> list[str]:
        return [self.suite.tasks[i].instruction for i in self.task_id.tolist()]

    def reset(self, task_ids=0, init_ids=None, seed: int | None = None, mask: torch.Tensor | None = None
              ) -> Observation:
        """Reset envs to ``task_ids`` (int or (B,)) from initial states ``init_ids`` of the env's bank
        (None: drawn from the env's seeded generator; ``seed`` reseeds it). With ``mask`` (B,) bool only
        those envs are reset; the others keep their state. Returns the observation of every env."""
        B, dev = self.num_envs, self.device
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        task = _as_index_tensor(task_ids, B, "task_ids", dev)
        if bool(((task < 0) | (task >= self.suite.num_tasks)).any()):
            raise ValueError(f"task id out of range for suite {self.suite.name!r}: got {task.tolist()}, "
                             f"valid ids are 0..{self.suite.num_tasks - 1}")
        if init_ids is None:
            init = torch.as_tensor(self._rng.integers(0, NUM_INIT_STATES, size=B), device=dev)
        else:
            init = _as_index_tensor(init_ids, B, "init_ids", dev)
            if bool(((init < 0) | (init >= NUM_INIT_STATES)).any()):
                raise ValueError(f"init id out of range: got {init.tolist()}, valid ids are "
                                 f"0..{NUM_INIT_STATES - 1}")
        m = torch.ones(B, dtype=torch.bool, device=dev) if mask is None else torch.as_tensor(
            mask, dtype=torch.bool, device=dev)
        if m.shape != (B,):
            raise ValueError(f"mask must have shape ({B},), got {tuple(m.shape)}")
        if self.state is None:
            m = torch.ones_like(m)  # the first reset initialises every env
        self.task_id = torch.where(m, task, self.task_id)
        self.init_id = torch.where(m, init, self.init_id)
        self.elapsed = torch.where(m, 0, self.elapsed)
        self._pending[m] = self.robot.neutral_action().to(self._pending.device)  # "stay, gripper open"
        self._rebuild(m)
        return self._observe()

    def _rebuild(self, m: torch.Tensor) -> None:
        t, i, tb = self.task_id, self.init_id, self._tables
        self.scene = Scene.from_categories(tb["category"][t], tb["rgb"][t], tb["active"][t])
        pos = tb["init_pos"][t, i]
        fresh = WorldState(
            pos=pos, support=tb["init_support"][t, i], inside=tb["init_inside"][t, i],
            anchor_y=pos[..., 1].clone(),
            grip_pos=tb["init_gripper"][t, i], grip_yaw=tb["init_yaw"][t, i],
            grip_open=torch.ones(self.num_envs, device=self.device),
            held=torch.full((self.num_envs,), -1, dtype=torch.int64, device=self.device),
            held_offset=torch.zeros(self.num_envs, 3, device=self.device))
        # drawers that start open: their closed position is recorded as anchor
        fresh.anchor_y = self._drawer_anchor(fresh)
        if self.state is None:
            self.state = fresh
        else:
            self.state.assign(fresh, m)
        self._goal = (tb["goal_terms"][t], tb["goal_mask"][t], tb["goal_regions"][t])

    def _drawer_anchor(self, st: WorldState) -> torch.Tensor:
        opened = torch.tensor([task.drawer_open for task in self.suite.tasks], device=self.device)
        return st.pos[..., 1] + torch.where(self.scene.drawer, opened[self.task_id][:, None], 0.0)

    def _require_reset(self, what: str) -> None:
        if self.state is None:
            raise RuntimeError(f"call reset() before {what}: the env has no episode yet")

    def _check_actions(self, actions, shape: tuple[int, ...]) -> torch.Tensor:
        if isinstance(actions, np.ndarray):
            actions = torch.from_numpy(actions)
        if not isinstance(actions, torch.Tensor):
            raise TypeError(f"actions must be a torch.Tensor or numpy array, got {type(actions).__name__}")
        if tuple(actions.shape) != shape:
            raise ValueError(f"actions must have shape {shape} (num_envs={self.num_envs}, action_dim="
                             f"{self.action_dim}: {', '.join(self.spec.action_names)}), got "
                             f"{tuple(actions.shape)}")
        actions = actions.to(device=self.device, dtype=torch.float32)
        bad = ~torch.isfinite(actions)
        if bool(bad.any()):
            envs = bad.flatten(1).any(1).nonzero().flatten().tolist()
            raise ValueError(f"actions contain NaN or inf for envs {envs[:10]}; check the policy output "
                             "(and its action normalisation statistics)")
        return actions.clamp(-1.0, 1.0)

    def step(self, actions: torch.Tensor) -> StepResult:
        self._require_reset("step()")
        a = self._check_actions(actions, (self.num_envs, self.action_dim))
        success, terminated, truncated = self._advance(a)
        self._delay(self.num_envs)
        return StepResult(obs=self._observe(), reward=success.float(), terminated=terminated,
                          truncated=truncated, success=success, info={"elapsed": self.elapsed.clone()})

    def step_chunk(self, actions: torch.Tensor, active: torch.Tensor | None = None) -> ChunkResult:
        """Execute a chunk (B, H, 7); rendering happens once, after the chunk. Envs that finish mid-chunk
        stop there; envs where ``active`` (B,) is False do not move at all."""
        self._require_reset("step_chunk()")
        if isinstance(actions, torch.Tensor) and actions.dim() == 3:
            H = actions.shape[1]
        else:
            raise ValueError(f"step_chunk expects actions of shape (num_envs, H, {self.action_dim})")
        a = self._check_actions(actions, (self.num_envs, H, self.action_dim))
        B, dev = self.num_envs, self.device
        reward = torch.zeros(B, H, device=dev)
        valid = torch.zeros(B, H, dtype=torch.bool, device=dev)
        done = torch.zeros(B, dtype=torch.bool, device=dev)
        if active is not None:
            done = ~torch.as_tensor(active, dtype=torch.bool, device=dev)
        term = torch.zeros_like(done)
        trunc = torch.zeros_like(done)
        for h in range(H):
            alive = ~done
            success, t_h, tr_h = self._advance(a[:, h], alive)
            valid[:, h] = alive
            reward[:, h] = (success & alive).float()
            term |= t_h & alive
            trunc |= tr_h & alive
            done |= t_h | tr_h
            if bool(done.all()):
                break
        success = self.success()
        self._delay(int(valid.sum()))
        return ChunkResult(self._observe(), reward, valid, term, trunc, success)

    def _delay(self, env_steps: int) -> None:
        """``step_delay_ms`` per executed env step: the cost of a slow simulator, for scaling benchmarks."""
        if self.step_delay_s and env_steps:
            time.sleep(self.step_delay_s * env_steps)

    def _advance(self, a: torch.Tensor, alive: torch.Tensor | None = None):
        d = self.domain
        if d.latency_steps:  # the world executes the oldest pending command; this one waits
            queued = torch.cat([self._pending, a[:, None]], 1)
            keep = torch.ones(self.num_envs, dtype=torch.bool, device=a.device) if alive is None else alive
            a = torch.where(keep[:, None], queued[:, 0], a)
            self._pending = torch.where(keep[:, None, None], queued[:, 1:], self._pending)
        a, grip_goal = self.robot.world_action(a, self.state)
        if d.action_gain != 1.0:
            a = a.clone()
            a[:, :3] *= d.action_gain
            a[:, 5] *= d.action_gain
        new = step_world(self.scene, self.state, a, grasp_tolerance=d.grasp_tolerance,
                         gripper_rate=self.robot.gripper_rate, grip_goal=grip_goal)
        if alive is None:
            self.state = new
            self.elapsed = self.elapsed + 1
        else:
            self.state.assign(new, alive)
            self.elapsed = self.elapsed + alive.long()
        success = self.success()
        if not self.end_on_success:  # the episode runs to its time limit whatever happens
            return success, torch.zeros_like(success), self.elapsed >= self.max_episode_steps
        truncated = (self.elapsed >= self.max_episode_steps) & ~success
        return success, success.clone(), truncated

    def success(self) -> torch.Tensor:
        """(B,) bool: the task's goal holds in the current state."""
        return task_success(self.state, *self._goal[:2], self._goal[2])

    # ------------------------------------------------------------ observations

    def render(self) -> torch.Tensor:
        """(B, 2, 3, H, W) uint8 images of the current state (agentview, wrist)."""
        self._require_reset("render()")
        images = self.renderer.render(self.scene, self.state)
        if self.domain.visual:
            gen = torch.Generator().manual_seed(self._seed * 1_000_003 + self._frames)
            images = self.domain.shade(images, gen)
        self._frames += 1
        return images

    def _observe(self) -> Observation:
        obs: Observation = {
            OBS_STATE: self.robot.proprio(self.state),
            OBS_INSTRUCTION: self.instructions,
            OBS_TASK_ID: self.task_id.clone(),
        }
        if self.render_images:
            obs[OBS_IMAGE] = self.render().to(self.device)
        return obs

    def make_expert(self, *, noise: float = 0.0, seed: int = 0):
        """The privileged scripted expert (``ScriptedExpert``) bound to this env."""
        from reinforge.envs.tabletop.expert import ScriptedExpert

        return ScriptedExpert(self, noise=noise, seed=seed)

    def get_state(self) -> WorldState:
        """A copy of the full dynamic state (for snapshots and tests)."""
        return self.state.clone()

    def snapshot(self) -> dict[str, torch.Tensor]:
        """Everything needed to continue the running episodes later, as CPU tensors (checkpointable
        with ``torch.save``/``torch.load(weights_only=True)``): task, initial state, elapsed steps and the
        world state of every env."""
        self._require_reset("snapshot()")
        snap = {"task_id": self.task_id, "init_id": self.init_id, "elapsed": self.elapsed,
                "pending": self._pending, "frames": torch.tensor(self._frames)}
        snap.update({f"state.{f.name}": getattr(self.state, f.name) for f in fields(WorldState)})
        return {k: v.detach().cpu().clone() for k, v in snap.items()}

    def restore(self, snap: dict[str, torch.Tensor]) -> Observation:
        """Continue from a ``snapshot()`` of an env with the same suite and number of envs; returns the
        observation of every env."""
        task = snap["task_id"]
        if task.shape != (self.num_envs,):
            raise ValueError(f"the snapshot holds {task.shape[0]} envs, this env has {self.num_envs}")
        self.reset(task, snap["init_id"])  # scene, goals and drawer anchors of the tasks
        self.elapsed = snap["elapsed"].to(self.device).clone()
        if "pending" in snap:
            self._pending = snap["pending"].to(self.device).clone()
            # the observation returned below re-renders the snapshot's last frame (the same sensor noise)
            self._frames = max(int(snap["frames"]) - 1, 0)
        self.state = WorldState(**{f.name: snap[f"state.{f.name}"].to(self.device).clone()
                                   for f in fields(WorldState)})
        return self._observe()

    def __repr__(self) -> str:
        return (f"TabletopEnv(suite={self.suite.name!r}, split={self.suite.split!r}, "
                f"num_envs={self.num_envs}, image_size={self.image_size}, device={self.device})")


def task_ids_for(suite: Suite | str, per_task: int) -> list[int]:
    """Task ids laid out task-major: [0]*per_task + [1]*per_task + ..."""
    s = suite if isinstance(suite, Suite) else get_suite(suite)
    return [t for t in range(s.num_tasks) for _ in range(per_task)]


