"""Batched evaluation of an actor on a tabletop suite: success per task and per suite, episode lengths.

Episode ``k`` of task ``t`` starts from fixed evaluation initial state ``k`` (mod 50), so two evaluations
with the same ``episodes_per_task`` see exactly the same scenes. Policies act greedily.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reinforge.envs.tabletop.env import CONTROL_HZ, TabletopEnv
from reinforge.envs.tabletop.tasks import NUM_INIT_STATES, Split, get_suite
from reinforge.eval.video import frames_to_strip, write_video
from reinforge.progress import ProgressBar
from reinforge.types import OBS_IMAGE, Actor

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    suite: str
    split: str
    success_rate: float
    per_task: dict[str, float]
    instructions: dict[str, str]
    mean_length: float
    per_task_length: dict[str, float]
    num_episodes: int
    episodes_per_task: int
    wall_s: float
    videos: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_actions(actions: torch.Tensor, env: TabletopEnv) -> torch.Tensor:
    if actions.dim() == 2:
        actions = actions[:, None]
    if actions.dim() != 3 or actions.shape[0] != env.num_envs or actions.shape[2] != env.action_dim:
        raise ValueError(f"the policy returned actions of shape {tuple(actions.shape)}; the env expects "
                         f"({env.num_envs}, H, {env.action_dim}) action chunks. Is the policy trained for this "
                         "embodiment?")
    return actions


def _run_batch(actor_fn: Callable[[TabletopEnv], Actor], env: TabletopEnv, tasks: list[int], inits: list[int],
               video_slots: set[int], on_done: Callable[[int], None]):
    B = env.num_envs
    obs = env.reset(tasks, inits)
    actor = actor_fn(env)
    done = torch.zeros(B, dtype=torch.bool)
    success = torch.zeros(B, dtype=torch.bool)
    length = torch.zeros(B, dtype=torch.int64)
    frames: dict[int, list[np.ndarray]] = {b: [frames_to_strip(obs[OBS_IMAGE][b].cpu().numpy())] for b in video_slots}
    while not bool(done.all()):
        actions = _check_actions(actor.act(obs, mode="greedy").actions.detach().float().cpu(), env)
        # with videos, step one action at a time so every frame is rendered
        pieces = [actions[:, h:h + 1] for h in range(actions.shape[1])] if video_slots else [actions]
        for piece in pieces:
            res = env.step_chunk(piece.to(env.device), active=(~done).to(env.device))
            term, trunc = res.terminated.cpu(), res.truncated.cpu()
            length += res.valid.cpu().sum(1)
            success |= term & ~done
            finished = (term | trunc) & ~done
            done |= finished
            obs = res.obs
            for b in video_slots:
                if len(frames[b]) <= int(length[b]):
                    frames[b].append(frames_to_strip(obs[OBS_IMAGE][b].cpu().numpy()))
            if int(finished.sum()):
                on_done(int(finished.sum()))
            if bool(done.all()):
                break
    return success, length, frames


def evaluate(actor_fn: Callable[[TabletopEnv], Actor], suite: str, *, split: Split = "train",
             episodes_per_task: int = 10, max_envs: int = 500, image_size: int = 64,
             video_dir: str | Path | None = None, videos_per_task: int = 1, video_format: str = "mp4",
             device: str = "cpu", tasks: list[int] | None = None, progress: bool = False) -> EvalResult:
    """Run ``episodes_per_task`` greedy episodes of every task of ``suite`` (or of ``tasks``) and report
    success rates."""
    if episodes_per_task < 1:
        raise ValueError(f"episodes_per_task must be >= 1, got {episodes_per_task}")
    if video_format not in ("mp4", "gif"):
        raise ValueError(f"video format must be 'mp4' or 'gif', got {video_format!r}")
    s = get_suite(suite, split)
    task_ids = list(range(s.num_tasks)) if tasks is None else [s.task_index(t) for t in tasks]
    slots = [(t, k) for t in task_ids for k in range(episodes_per_task)]
    success = torch.zeros(len(slots), dtype=torch.bool)
    length = torch.zeros(len(slots), dtype=torch.int64)
    videos: list[str] = []
    t0 = time.perf_counter()
    bar = ProgressBar(f"eval {suite}/{split}", len(slots), enabled=progress)
    for start in range(0, len(slots), max_envs):
        batch = slots[start:start + max_envs]
        env = TabletopEnv(s, len(batch), image_size=image_size, device=device)
        want = {b for b, (t, k) in enumerate(batch) if video_dir is not None and k < videos_per_task}
        ok, n, frames = _run_batch(actor_fn, env, [t for t, _ in batch], [k % NUM_INIT_STATES for _, k in batch],
                                   want, bar.advance)
        success[start:start + len(batch)] = ok
        length[start:start + len(batch)] = n
        for b, fr in frames.items():
            t, k = batch[b]
            tag = "success" if bool(ok[b]) else "failure"
            path = Path(video_dir) / f"{suite}_{split}_task{t:02d}_ep{k:02d}_{tag}.{video_format}"
            videos.append(str(write_video(fr, path, fps=CONTROL_HZ)))
    bar.close()
    per = success.view(len(task_ids), episodes_per_task).float().mean(1)
    per_len = length.view(len(task_ids), episodes_per_task).float().mean(1)
    names = [s.tasks[t].name for t in task_ids]
    return EvalResult(
        suite=suite, split=split, success_rate=float(success.float().mean()),
        per_task={n: float(v) for n, v in zip(names, per)},
        instructions={s.tasks[t].name: s.tasks[t].instruction for t in task_ids},
        mean_length=float(length.float().mean()), per_task_length={n: float(v) for n, v in zip(names, per_len)},
        num_episodes=len(slots), episodes_per_task=episodes_per_task, wall_s=time.perf_counter() - t0,
        videos=videos)
