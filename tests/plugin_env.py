"""A third-party environment for the registry tests: a point that must reach a coloured target.

It is deliberately unlike the built-in world (2-dim actions and state, one camera, a different control rate,
random-free fixed banks of 20 initial states) so that the tests prove every command works through the contract
alone. ``register()`` is what an installed package would expose in the ``reinforge.envs`` entry-point group.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from reinforge.envs.base import ChunkResult, EnvSpec, Task, VecEnv, register_env
from reinforge.types import OBS_IMAGE, OBS_INSTRUCTION, OBS_STATE, OBS_TASK_ID, PolicyOutput, StepResult

COLOURS = {"red": (230, 40, 40), "blue": (40, 60, 230)}
NUM_INIT = 20


@dataclass
class PointOptions:
    speed: float = 0.15  # distance per step at action 1


class PointEnv(VecEnv):
    def __init__(self, suite: str = "reach", num_envs: int = 1, *, split: str = "train", image_size=24,
                 init_bank: str = "eval", max_episode_steps: int | None = None, device="cpu", seed: int = 0,
                 speed: float = 0.15):
        if suite != "reach":
            raise ValueError(f"unknown suite {suite!r}; the point env has 'reach'")
        if split != "train":
            raise ValueError(f"the point env has no {split!r} split")
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        self.num_envs, self.device, self.speed = num_envs, torch.device(device), speed
        self.spec = EnvSpec(
            env="point", suite=suite, split=split, tasks=tuple(Task(f"reach_{c}", f"move to the {c} dot")
                                                            for c in COLOURS),
            max_episode_steps=max_episode_steps or 30, control_hz=10, action_names=("vx", "vy"),
            state_names=("x", "y"), camera_names=("top",), image_size=(h, w), num_init_states=NUM_INIT,
            init_banks=("eval", "train"), expert=True)
        g = torch.Generator().manual_seed(1 if init_bank == "train" else 0)
        self.bank = torch.rand(len(COLOURS), NUM_INIT, 2, generator=g) * 1.6 - 0.8  # target positions
        self.gen = torch.Generator().manual_seed(seed)
        self.pos = torch.zeros(num_envs, 2)
        self.target = torch.zeros(num_envs, 2)
        self.task = torch.zeros(num_envs, dtype=torch.int64)
        self.t = torch.zeros(num_envs, dtype=torch.int64)

    def reset(self, task_ids, init_ids=None, seed=None, mask=None):
        B = self.num_envs
        task = torch.as_tensor(task_ids, dtype=torch.int64).expand(B).clone()
        init = (torch.randint(0, NUM_INIT, (B,), generator=self.gen) if init_ids is None
                else torch.as_tensor(init_ids, dtype=torch.int64).expand(B).clone())
        m = torch.ones(B, dtype=torch.bool) if mask is None else torch.as_tensor(mask, dtype=torch.bool).cpu()
        self.task = torch.where(m, task, self.task)
        self.target = torch.where(m[:, None], self.bank[task, init], self.target)
        self.pos = torch.where(m[:, None], torch.zeros(B, 2), self.pos)
        self.t = torch.where(m, 0, self.t)
        return self._obs()

    def _obs(self):
        h, w = self.spec.image_size
        img = torch.zeros(self.num_envs, 1, 3, h, w, dtype=torch.uint8)
        for b in range(self.num_envs):
            for xy, rgb in ((self.target[b], COLOURS[list(COLOURS)[int(self.task[b])]]), (self.pos[b], (255,) * 3)):
                r = int((1 - (xy[1] + 1) / 2) * (h - 3))
                c = int((xy[0] + 1) / 2 * (w - 3))
                img[b, 0, :, r:r + 3, c:c + 3] = torch.tensor(rgb, dtype=torch.uint8)[:, None, None]
        return {OBS_IMAGE: img.to(self.device), OBS_STATE: self.pos.clone().to(self.device),
                OBS_INSTRUCTION: [self.spec.tasks[int(t)].instruction for t in self.task],
                OBS_TASK_ID: self.task.clone().to(self.device)}

    def step(self, actions):
        a = torch.as_tensor(actions, dtype=torch.float32).cpu()
        if a.shape != (self.num_envs, 2) or not bool(torch.isfinite(a).all()):
            raise ValueError(f"actions must be finite with shape ({self.num_envs}, 2), got {tuple(a.shape)}")
        self.pos = (self.pos + self.speed * a.clamp(-1, 1)).clamp(-1, 1)
        self.t += 1
        success = (self.pos - self.target).norm(dim=1) < 0.12
        truncated = (self.t >= self.spec.max_episode_steps) & ~success
        return StepResult(self._obs(), success.float(), success.clone(), truncated, success)

    def step_chunk(self, actions, active=None) -> ChunkResult:
        return super().step_chunk(actions.cpu(), None if active is None else active.cpu())

    def make_expert(self, *, noise: float = 0.0, seed: int = 0):
        return PointExpert(self, noise, seed)


class PointExpert:
    def __init__(self, env: PointEnv, noise: float, seed: int):
        self.env, self.noise, self.gen = env, noise, torch.Generator().manual_seed(seed)

    def act(self, obs=None, *, mode: str = "greedy", temperature: float = 1.0) -> PolicyOutput:
        clean = ((self.env.target - self.env.pos) / self.env.speed).clamp(-1, 1)
        noisy = (clean + self.noise * torch.randn(clean.shape, generator=self.gen)).clamp(-1, 1)
        return PolicyOutput(actions=noisy[:, None], replay={"clean_action": clean})


def register() -> None:
    register_env("point", PointEnv, options=PointOptions, suites=("reach",))
