"""``WorldModelEnv``: a learned world model served as a ``VecEnv`` (registered as ``worldmodel``), with VLA-RFT's
verified reward (arXiv 2510.00406; METHODS.md section 6), so GRPO / PPO train in imagination unchanged.

- ``reset`` puts each env at a start frame of a dataset (a demonstration) together with that frame's recorded
  action continuation, the "ground truth". ``init_ids`` are seeds: the same id gives the same start frame of
  the task (start ``init_id mod N_task``); ``start: first`` uses episode starts only, ``any`` every frame.
- ``step`` / ``step_chunk`` imagine one frame per action, twice: with the policy's actions and with the
  ground-truth ones, both from the same context frame and both through the same model. The policy then
  observes its imagined frame (decoded, uint8) and predicted proprio state.
- Reward, per step: r_t = -(w_mae * MAE_t + w_perc * D_t) / N, with MAE and the perceptual distance D between
  the two imagined frames at step t (pixels in [0, 1], views averaged) and N the episode's imagined steps, so an
  episode's return is the reference's -mean over the predicted frames of (MAE + perceptual) (the context frame
  excluded), extended from its one 8-action chunk to several chunks. It is exactly 0 when the actions equal
  the ground truth (the two rollouts run as separate, identically shaped batches, so they agree bit for bit).
- An episode ends (truncated) after ``max_episode_steps`` imagined steps (default 16: four chunks of four
  actions) or when the ground-truth continuation ends. ``success`` is always False: imagination has no success
  predicate; learn with GRPO's ``grpo.reward: return`` and evaluate in the real simulator (the spec's
  ``evaluate_in``, the env the data was recorded in).

The perceptual distance is ``WorldModel.perceptual_distance`` (an LPIPS-form distance over the frozen world
model's encoder features, see model.py); ``perceptual_weight: 0`` leaves MAE alone (the fallback).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from reinforge.data.dataset import DemoDataset
from reinforge.envs.base import EnvSpec, Task, VecEnv
from reinforge.types import OBS_IMAGE, OBS_INSTRUCTION, OBS_STATE, OBS_TASK_ID, Observation, StepResult
from reinforge.worldmodel.metrics import mae
from reinforge.worldmodel.model import WorldModel, load_world_model
from reinforge.worldmodel.train import SPLIT_NAME, episode_bounds, split_episodes

DEFAULT_STEPS = 16


def _training_meta(model_path: Path) -> dict:
    import json

    folder = model_path / "model" if (model_path / "model").is_dir() else model_path
    f = folder / SPLIT_NAME
    return json.loads(f.read_text()) if f.is_file() else {}


class WorldModelEnv(VecEnv):
    """B imagined envs of a world model over one dataset's start frames (see the module docstring)."""

    def __init__(self, suite: str = "", num_envs: int = 1, *, model: str, data: str = "", split: str = "train",
                 image_size: int | tuple[int, int] | None = None, init_bank: str = "eval",
                 max_episode_steps: int | None = None, device: str | torch.device = "cpu", seed: int = 0,
                 episodes: str = "all", start: str = "any", mae_weight: float = 1.0, perceptual_weight: float = 1.0):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if split != "train":
            raise ValueError(f"the world model env has only the 'train' split (its data's start frames), got {split!r}")
        self.num_envs, self.device = int(num_envs), torch.device(device)
        self.wm: WorldModel = load_world_model(model, self.device)
        for p in self.wm.parameters():
            p.requires_grad_(False)
        meta = _training_meta(Path(model))
        data = data or meta.get("data", "")
        if not data:
            raise ValueError(f"world model {model} does not record its data; set env.data=DIR")
        self.ds = DemoDataset.load(data)
        c = self.wm.config
        H, W = (int(x) for x in self.ds.images.shape[-2:])
        if (self.ds.num_views, self.ds.state_dim, self.ds.action_dim, (H, W)) != (
                c.num_views, c.state_dim, c.action_dim, tuple(c.image_size)):
            raise ValueError(f"dataset {data} does not fit world model {model}: views/state/action dims/image size "
                             f"{(self.ds.num_views, self.ds.state_dim, self.ds.action_dim, (H, W))} vs "
                             f"{(c.num_views, c.state_dim, c.action_dim, tuple(c.image_size))}")
        if image_size is not None:
            want = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
            if tuple(want) != (H, W):
                raise ValueError(f"the world model imagines {H}x{W} frames, the policy wants {want[0]}x{want[1]}")
        self.weights = (float(mae_weight), float(perceptual_weight))
        self._build_starts(meta, episodes, start)
        rec = self.ds.recorded_in
        if suite and rec.get("suite") and suite != rec["suite"]:
            raise ValueError(f"the world model's data was recorded in suite {rec['suite']!r}, not {suite!r}; set "
                             f"env.suite={rec['suite']}")
        n_tasks = int(self._task_of_episode.max()) + 1
        instr = {int(t): self.ds.tasks[int(self.ds.task_index[int(self.ds.episode_start[e])])]
                 for e, t in enumerate(self._task_of_episode.tolist())}
        tasks = tuple(Task(f"task{i}", instr.get(i, "")) for i in range(n_tasks))
        limit = int(max_episode_steps or DEFAULT_STEPS)
        self.spec = EnvSpec(
            env="worldmodel", suite=rec.get("suite") or suite or "data", split="train", tasks=tasks,
            max_episode_steps=limit, control_hz=float(self.ds.info.get("fps", rec.get("control_hz", 20))),
            action_names=tuple(rec.get("action_names") or [f"a{i}" for i in range(c.action_dim)]),
            state_names=tuple(rec.get("state_names") or [f"s{i}" for i in range(c.state_dim)]),
            camera_names=tuple(rec.get("camera_names") or [f"view{i}" for i in range(c.num_views)]),
            image_size=(H, W), snapshot=True,
            evaluate_in={"name": rec.get("env", "tabletop"), "suite": rec.get("suite", suite),
                         **dict(rec.get("variant", {}))})
        self._rng = np.random.default_rng(seed)
        B, dev = self.num_envs, self.device
        self.task_id = torch.zeros(B, dtype=torch.int64)
        self.init_id = torch.zeros(B, dtype=torch.int64)
        self.elapsed = torch.zeros(B, dtype=torch.int64)
        self.gt = torch.zeros(B, dtype=torch.int64)  # global dataset frame of the ground truth's current step
        self.gt_end = torch.zeros(B, dtype=torch.int64)  # one past the episode's last frame
        self.horizon = torch.ones(B, dtype=torch.int64)  # imagined steps of each env's current episode
        self.z = self.z_gt = torch.zeros(B, c.latent_channels, *c.latent_hw, device=dev)
        self.s = self.s_gt = torch.zeros(B, c.state_dim, device=dev)
        self.frames: torch.Tensor | None = None  # (B, V, 3, H, W) uint8: what the policy sees

    def _build_starts(self, meta: dict, episodes: str, start: str) -> None:
        n = self.ds.num_episodes
        train, held = (meta.get("train_episodes"), meta.get("heldout_episodes"))
        if held is None:
            train, held = split_episodes(n, 0.0)
        else:
            train = [e for e in range(n) if e not in set(held)]
        chosen = {"all": list(range(n)), "train": train, "heldout": held}[episodes]
        if not chosen:
            raise ValueError(f"env.episodes={episodes!r} selects no episode of {self.ds.root}")
        first, lengths = episode_bounds(self.ds)
        self._task_of_episode = torch.tensor([int(e.get("task_id", 0)) for e in self.ds.episodes])
        self._starts: dict[int, torch.Tensor] = {}
        for e in chosen:
            last = int(lengths[e]) - 1  # a start needs at least one recorded step after it
            frames = [0] if start == "first" else list(range(max(last, 1)))
            t = int(self._task_of_episode[e])
            new = torch.tensor([int(first[e]) + f for f in frames], dtype=torch.int64)
            self._starts[t] = torch.cat([self._starts.get(t, torch.zeros(0, dtype=torch.int64)), new])
        self._episode_end = first + lengths

    # ------------------------------------------------------------ contract

    def reset(self, task_ids=0, init_ids=None, seed: int | None = None, mask: torch.Tensor | None = None
              ) -> Observation:
        B = self.num_envs
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        task = torch.as_tensor(task_ids, dtype=torch.int64).expand(B).clone() if torch.as_tensor(
            task_ids).dim() == 0 else torch.as_tensor(task_ids, dtype=torch.int64).cpu().clone()
        if task.shape != (B,):
            raise ValueError(f"task_ids must be an int or {B} ints, got shape {tuple(task.shape)}")
        missing = sorted({t for t in task.tolist() if t not in self._starts})
        if missing:
            raise ValueError(f"the world model's data has no start frames for task ids {missing}; its tasks: "
                             f"{sorted(self._starts)} (set rollout.tasks to those)")
        init = (torch.as_tensor(self._rng.integers(0, 2**31 - 1, size=B)) if init_ids is None
                else torch.as_tensor(init_ids, dtype=torch.int64).cpu().expand(B).clone())
        m = torch.ones(B, dtype=torch.bool) if mask is None or self.frames is None else torch.as_tensor(
            mask, dtype=torch.bool).cpu()
        rows = m.nonzero().flatten()
        frame = torch.tensor([int(self._starts[int(task[i])][int(init[i]) % len(self._starts[int(task[i])])])
                              for i in rows.tolist()], dtype=torch.int64)
        self.task_id[rows], self.init_id[rows] = task[rows], init[rows]
        return self.reset_to_frames(frame, rows)

    def reset_to_frames(self, frames: torch.Tensor, rows: torch.Tensor | None = None) -> Observation:
        """Put envs ``rows`` (default: all) at global dataset frames ``frames`` with their recorded continuations
        (e.g. the first frames of chosen demonstrations, to score actions against them)."""
        frame = torch.as_tensor(frames, dtype=torch.int64).cpu()
        rows = torch.arange(self.num_envs) if rows is None else rows
        if frame.shape != rows.shape or bool(((frame < 0) | (frame >= self.ds.num_frames)).any()):
            raise ValueError(f"frames must be {rows.numel()} dataset frame indices in 0..{self.ds.num_frames - 1}")
        if self.frames is None and rows.numel() != self.num_envs:
            raise RuntimeError("the first reset must reset every env")
        self.task_id[rows] = self._task_of_episode[self.ds.episode_index[frame]]
        self.elapsed[rows], self.gt[rows] = 0, frame
        self.gt_end[rows] = self._episode_end[self.ds.episode_index[frame]]
        # the episode's imagined steps N (the time limit, or fewer where the recorded continuation ends first):
        # each step's reward is divided by it, so a return is a mean over the episode's predicted frames
        self.horizon[rows] = (self.gt_end[rows] - 1 - frame).clamp(min=1, max=self.spec.max_episode_steps)
        images, states = self.ds.images[frame], self.ds.states[frame]
        with torch.no_grad():
            z, s = self.wm.encode(images), self.wm.norm_state(states)
        if self.frames is None:
            self.frames = images.clone()
            self.z, self.z_gt, self.s, self.s_gt = z, z.clone(), s, s.clone()
        else:
            self.frames[rows] = images
            dev_rows = rows.to(self.device)
            self.z[dev_rows], self.z_gt[dev_rows], self.s[dev_rows], self.s_gt[dev_rows] = z, z, s, s
        return self._observe()

    def _observe(self) -> Observation:
        return {OBS_IMAGE: self.frames.clone(), OBS_STATE: self.wm.denorm_state(self.s).cpu().float(),
                OBS_INSTRUCTION: [self.spec.tasks[i].instruction for i in self.task_id.tolist()],
                OBS_TASK_ID: self.task_id.clone()}

    @torch.no_grad()
    def _advance(self, actions: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Imagine one step for ``rows`` with the policy's and the ground truth's actions; (len(rows),) reward."""
        dev = self.device
        r = rows.to(dev)
        # an env stepped past its demonstration's end (the caller did not reset it) repeats the last recorded action
        gt_action = self.ds.actions[torch.minimum(self.gt[rows], self.gt_end[rows] - 1)].to(dev)
        z, s = self.wm.step(self.z[r], self.s[r], actions[rows].to(dev))
        z_gt, s_gt = self.wm.step(self.z_gt[r], self.s_gt[r], gt_action)
        frames, frames_gt = self.wm.decode(z), self.wm.decode(z_gt)
        w_mae, w_perc = self.weights
        dist = w_mae * mae(frames, frames_gt)
        if w_perc:
            dist = dist + w_perc * self.wm.perceptual_distance(frames, frames_gt)
        self.z[r], self.s[r], self.z_gt[r], self.s_gt[r] = z, s, z_gt, s_gt
        self.frames[rows] = (frames.clamp(0, 1) * 255).round().to(torch.uint8).cpu()
        self.gt[rows] += 1
        self.elapsed[rows] += 1
        return (-dist.cpu() / self.horizon[rows].to(dist.dtype).cpu()).float()

    def _ended(self) -> torch.Tensor:
        return (self.elapsed >= self.spec.max_episode_steps) | (self.gt >= self.gt_end - 1)

    def _check(self, actions: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        if not isinstance(actions, torch.Tensor):
            actions = torch.as_tensor(np.asarray(actions))
        if tuple(actions.shape) != shape:
            raise ValueError(f"actions must have shape {shape} ({', '.join(self.spec.action_names)}), got "
                             f"{tuple(actions.shape)}")
        actions = actions.detach().cpu().float()
        if not bool(torch.isfinite(actions).all()):
            raise ValueError("actions contain NaN or inf; check the policy output")
        return actions.clamp(-1, 1)

    def step(self, actions: torch.Tensor) -> StepResult:
        if self.frames is None:
            raise RuntimeError("call reset() before step()")
        a = self._check(actions, (self.num_envs, self.action_dim))
        rows = torch.arange(self.num_envs)
        reward = self._advance(a, rows)
        B = self.num_envs
        return StepResult(self._observe(), reward, torch.zeros(B, dtype=torch.bool), self._ended(),
                          torch.zeros(B, dtype=torch.bool))

    def step_chunk(self, actions: torch.Tensor, active: torch.Tensor | None = None):
        from reinforge.envs.base import ChunkResult

        if self.frames is None:
            raise RuntimeError("call reset() before step_chunk()")
        B, H = self.num_envs, actions.shape[1]
        a = self._check(actions, (B, H, self.action_dim))
        live = torch.ones(B, dtype=torch.bool) if active is None else active.cpu().bool().clone()
        reward, valid = torch.zeros(B, H), torch.zeros(B, H, dtype=torch.bool)
        trunc = torch.zeros(B, dtype=torch.bool)
        for h in range(H):
            rows = live.nonzero().flatten()
            if rows.numel() == 0:
                break
            reward[rows, h] = self._advance(a[:, h], rows)
            valid[rows, h] = True
            ended = self._ended() & live
            trunc |= ended
            live &= ~ended
        no = torch.zeros(B, dtype=torch.bool)
        return ChunkResult(self._observe(), reward, valid, no, trunc, no.clone(), {})

    def snapshot(self) -> dict[str, torch.Tensor]:
        return {"task_id": self.task_id.clone(), "init_id": self.init_id.clone(), "elapsed": self.elapsed.clone(),
                "gt": self.gt.clone(), "gt_end": self.gt_end.clone(), "horizon": self.horizon.clone(),
                "frames": self.frames.clone(),
                **{k: getattr(self, k).cpu().clone() for k in ("z", "z_gt", "s", "s_gt")}}

    def restore(self, snap: dict[str, torch.Tensor]) -> Observation:
        for k in ("task_id", "init_id", "elapsed", "gt", "gt_end", "frames"):
            setattr(self, k, snap[k].clone())
        # snapshots from before the per-episode horizon: the episode's steps from its recorded continuation
        self.horizon = snap["horizon"].clone() if "horizon" in snap else (
            self.gt_end - 1 - self.gt + self.elapsed).clamp(min=1, max=self.spec.max_episode_steps)
        for k in ("z", "z_gt", "s", "s_gt"):
            setattr(self, k, snap[k].to(self.device).clone())
        return self._observe()
