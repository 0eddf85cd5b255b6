"""Batched evaluation of an actor on any registered env: success per task and per suite, episode lengths.

Episode ``k`` of task ``t`` starts from fixed evaluation initial state ``k`` (mod the bank size; for envs
with random resets, from reset seed ``k``), so two evaluations with the same ``episodes_per_task`` see exactly
the same scenes. Policies act greedily by default; ``mode="sample"`` evaluates the stochastic policy that RL
rollouts run (a token policy's sampling at ``temperature``, a flow policy's Flow-SDE / Flow-Noise sampler),
which says how far the behaviour RL learns from lies from the greedy one it is judged by. The global torch RNG
is seeded with ``seed`` for the evaluation (and restored after it), so a policy whose greedy action still draws
random numbers (a flow policy's initial noise) is evaluated reproducibly and the caller's random stream is left
untouched. One env of ``min(max_envs, episodes)`` slots is built and reused batch after batch; slots past the
last episode stay idle.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reinforge.envs import EnvConfig, EnvSpec, VecEnv, make_env
from reinforge.envs.base import sized_envs
from reinforge.eval.video import frames_to_strip, write_video
from reinforge.progress import ProgressBar
from reinforge.types import OBS_IMAGE, Actor

log = logging.getLogger(__name__)

ActorFactory = Callable[[VecEnv], Actor]


@dataclass
class EvalResult:
    env: str
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
    failed_episodes: int = 0  # lost to simulator faults (crashed workers); counted as failures
    mode: str = "greedy"  # greedy | sample (the stochastic rollout policy)
    bank: str = "eval"  # the initial-state bank the episodes started from (see EnvSpec.init_banks)
    seed: int = 0  # the evaluation's random stream (a flow policy's initial noise, sampled actions)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_actions(actions: torch.Tensor, env: VecEnv) -> torch.Tensor:
    if actions.dim() == 2:
        actions = actions[:, None]
    if actions.dim() != 3 or actions.shape[0] != env.num_envs or actions.shape[2] != env.action_dim:
        raise ValueError(f"the policy returned actions of shape {tuple(actions.shape)}; the env expects "
                         f"({env.num_envs}, H, {env.action_dim}) action chunks. Is the policy trained for this "
                         "embodiment?")
    return actions


def _run_batch(actor_fn: ActorFactory, env: VecEnv, tasks: list[int], inits: list[int], video_slots: set[int],
               on_done: Callable[[int], None], mode: str = "greedy", temperature: float = 1.0):
    """Run one episode in each of the first ``len(tasks)`` env slots (the rest idle) to its end."""
    B, n = env.num_envs, len(tasks)
    pad = B - n
    obs = env.reset(tasks + tasks[:1] * pad, inits + inits[:1] * pad)
    actor = actor_fn(env)
    if hasattr(actor, "bind_env"):  # a policy: fit it to the env (dims; the embodiment of a unified-space policy)
        actor.bind_env(env.spec)
    done = torch.arange(B) >= n
    success = torch.zeros(B, dtype=torch.bool)
    failed = torch.zeros(B, dtype=torch.bool)
    length = torch.zeros(B, dtype=torch.int64)
    frames: dict[int, list[np.ndarray]] = {b: [frames_to_strip(obs[OBS_IMAGE][b].cpu().numpy())] for b in video_slots}
    while not bool(done.all()):
        actions = _check_actions(actor.act(obs, mode=mode, temperature=temperature).actions.detach().float().cpu(), env)
        # with videos, step one action at a time so every frame is rendered
        pieces = [actions[:, h:h + 1] for h in range(actions.shape[1])] if video_slots else [actions]
        for piece in pieces:
            res = env.step_chunk(piece.to(env.device), active=(~done).to(env.device))
            term, trunc = res.terminated.cpu(), res.truncated.cpu()
            length += res.valid.cpu().sum(1)
            success |= term & res.success.cpu() & ~done
            if "failed" in res.info:
                failed |= res.info["failed"].cpu() & ~done
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
    return success[:n], length[:n], failed[:n], frames


@contextmanager
def seeded_stream(seed: int) -> Iterator[None]:
    """Run the block on torch's random stream seeded with ``seed``; the caller's stream (CPU and initialised CUDA
    devices) is restored after, so an evaluation neither depends on nor disturbs the training stream."""
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield


def env_spec(env: EnvConfig, split: str = "train", **kwargs: Any) -> EnvSpec:
    """The spec of ``env``'s suite and ``split`` (builds a one-env instance, which is cheap by contract)."""
    probe = make_env(env, num_envs=1, split=split, **kwargs)
    try:
        return probe.spec
    finally:
        probe.close()


def evaluate(actor_fn: ActorFactory, env: EnvConfig, *, split: str = "train", episodes_per_task: int = 10,
             max_envs: int = 0, image_size: int | tuple[int, int] | None = None,
             video_dir: str | Path | None = None, videos_per_task: int = 1, video_format: str = "mp4",
             tasks: list[int | str] | None = None, progress: bool = False, seed: int = 0,
             mode: str = "greedy", temperature: float = 1.0, bank: str = "eval",
             max_envs_setting: str = "max_envs") -> EvalResult:
    """Run ``episodes_per_task`` episodes (greedy, or sampled with ``mode="sample"``) of every task of ``env``'s
    suite (or of ``tasks``) on the ``split`` and report success rates. ``actor_fn(env)`` gives the actor for a
    freshly reset env. ``image_size`` (the policy's) wins over ``env.image_size``. Episodes start from the fixed
    initial states of ``bank``: ``eval`` for reported numbers, ``val`` for anything that steers a run (an env
    with one bank serves both from it). ``seed`` fixes the evaluation's own random stream, so the same policy
    gives the same numbers; the caller's stream is left as it was. ``max_envs``: envs stepped together (0 = as many
    as fit the memory available, at most 500); a number that does not fit stops with one line
    naming ``max_envs_setting`` (the caller's name of it) and a value that does."""
    if episodes_per_task < 1:
        raise ValueError(f"episodes_per_task must be >= 1, got {episodes_per_task}")
    if max_envs < 0:
        raise ValueError(f"{max_envs_setting} must be >= 0 (0 = as many as fit), got {max_envs}")
    if mode not in ("greedy", "sample"):
        raise ValueError(f"evaluation mode must be 'greedy' or 'sample', got {mode!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if video_format not in ("mp4", "gif"):
        raise ValueError(f"video format must be 'mp4' or 'gif', got {video_format!r}")
    kw = {} if image_size is None else {"image_size": image_size}
    spec = env_spec(env, split, **kw)
    if split not in spec.splits:
        raise ValueError(f"suite {spec.suite!r} of env {spec.env!r} has no {split!r} split (it offers "
                         f"{list(spec.splits)})")
    bank = spec.bank(bank)
    task_ids = list(range(spec.num_tasks)) if tasks is None else [spec.task_index(t) for t in tasks]
    slots = [(t, k) for t in task_ids for k in range(episodes_per_task)]
    success = torch.zeros(len(slots), dtype=torch.bool)
    failed = torch.zeros(len(slots), dtype=torch.bool)
    length = torch.zeros(len(slots), dtype=torch.int64)
    videos: list[str] = []
    t0 = time.perf_counter()
    bar = ProgressBar(f"eval {spec.suite}/{split}" + ("" if bank == "eval" else f" ({bank} bank)"), len(slots),
                      enabled=progress)
    num_envs = sized_envs(env, max_envs, len(slots), "evaluation", max_envs_setting, split=split, init_bank=bank,
                          **kw)
    sim = make_env(env, num_envs=num_envs, split=split, init_bank=bank, **kw)
    with seeded_stream(seed):
        try:
            for start in range(0, len(slots), sim.num_envs):
                batch = slots[start:start + sim.num_envs]
                want = {b for b, (t, k) in enumerate(batch) if video_dir is not None and k < videos_per_task}
                ok, n, bad, frames = _run_batch(actor_fn, sim, [t for t, _ in batch],
                                                [spec.init_id(k) for _, k in batch], want, bar.advance,
                                                mode, temperature)
                success[start:start + len(batch)] = ok
                length[start:start + len(batch)] = n
                failed[start:start + len(batch)] = bad
                for b, fr in frames.items():
                    t, k = batch[b]
                    tag = "success" if bool(ok[b]) else "failure"
                    path = Path(video_dir) / f"{spec.suite}_{split}_task{t:02d}_ep{k:02d}_{tag}.{video_format}"
                    videos.append(str(write_video(fr, path, fps=int(round(spec.control_hz)))))
        finally:
            sim.close()
            bar.close()
    if bool(failed.any()):
        log.warning("%d of %d evaluation episodes were lost to simulator faults; they count as failures",
                    int(failed.sum()), len(slots))
    per = success.view(len(task_ids), episodes_per_task).float().mean(1)
    per_len = length.view(len(task_ids), episodes_per_task).float().mean(1)
    names = [spec.tasks[t].name for t in task_ids]
    return EvalResult(
        env=spec.env, suite=spec.suite, split=split, success_rate=float(success.float().mean()),
        per_task={n: float(v) for n, v in zip(names, per)},
        instructions={spec.tasks[t].name: spec.tasks[t].instruction for t in task_ids},
        mean_length=float(length.float().mean()), per_task_length={n: float(v) for n, v in zip(names, per_len)},
        num_episodes=len(slots), episodes_per_task=episodes_per_task, wall_s=time.perf_counter() - t0,
        videos=videos, failed_episodes=int(failed.sum()), mode=mode, bank=bank, seed=seed)
