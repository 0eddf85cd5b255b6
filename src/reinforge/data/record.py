"""Recording scripted-expert demonstrations of any env that has an expert into a dataset (see ``dataset.py``)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from reinforge.data.dataset import EpisodeWriter
from reinforge.envs import EnvConfig, EnvSpec, make_env
from reinforge.envs.base import sized_envs
from reinforge.types import OBS_IMAGE, OBS_STATE

log = logging.getLogger(__name__)


def _run_batch(env_cfg: EnvConfig, split: str, bank: str, slots: list[tuple[int, int]], *, image_size: int,
               noise: float, seed: int) -> list[dict]:
    """Run the expert on (task, init) slots in one batched env; returns one episode record per slot."""
    env = make_env(env_cfg, num_envs=len(slots), split=split, image_size=image_size, init_bank=bank)
    try:
        spec = env.spec
        obs = env.reset([t for t, _ in slots], [spec.init_id(i) for _, i in slots])
        expert = env.make_expert(noise=noise, seed=seed)
        B = len(slots)
        frames: list[list[tuple]] = [[] for _ in range(B)]
        done = torch.zeros(B, dtype=torch.bool)
        success = torch.zeros(B, dtype=torch.bool)
        while not bool(done.all()):
            out = expert.act(obs)
            action = out.actions[:, 0].cpu()
            img, state, act = obs[OBS_IMAGE].cpu().numpy(), obs[OBS_STATE].cpu().numpy(), action.numpy()
            label = out.replay.get("clean_action", action).cpu().numpy()
            for b in (~done).nonzero().flatten().tolist():
                frames[b].append((img[b], state[b], act[b], label[b]))
            res = env.step(action.to(env.device))
            success |= res.success.cpu() & ~done
            done |= res.terminated.cpu() | res.truncated.cpu()
            obs = res.obs
    finally:
        env.close()
    out = []
    for b, (task, init) in enumerate(slots):
        img, state, act, label = (np.stack(x) for x in zip(*frames[b]))
        out.append({"images": img, "states": state, "actions": act, "labels": label, "task_id": task,
                    "init_id": spec.init_id(init), "success": bool(success[b]),
                    "instruction": spec.tasks[task].instruction})
    return out


def record_demos(env: EnvConfig | str, out: str | Path, *, per_task: int = 1, split: str = "train",
                 image_size: int = 64, noise: float = 0.2, seed: int = 0, max_envs: int = 0, retries: int = 3,
                 overwrite: bool = False, tasks: list[int | str] | None = None,
                 progress: Callable[[int, int], None] | None = None) -> Path:
    """Record ``per_task`` successful expert episodes for each task of ``env``'s suite into ``out``
    (``env`` may be a tabletop suite name for short).

    Demonstrations start from the env's *train* bank of initial states when it has one (the built-in world:
    disjoint from the 50 fixed evaluation states), else from its only bank. The executed (noisy) actions are
    stored as ``action``; the expert's noise-free actions in the same states as ``expert_action`` (DART-style
    corrective labels, used by SFT). A failed expert episode is retried with fresh noise up to ``retries``
    times. The dataset records the env, suite and action/state/camera layout.
    """
    if per_task < 1:
        raise ValueError(f"--per-task must be >= 1, got {per_task}")
    env_cfg = EnvConfig(suite=env) if isinstance(env, str) else env
    probe = make_env(env_cfg, num_envs=1, split=split, image_size=image_size)
    spec: EnvSpec = probe.spec
    probe.close()
    if not spec.expert:
        raise ValueError(f"environment {spec.env!r} has no scripted expert to record demonstrations with")
    bank = "train" if "train" in spec.init_banks else spec.init_banks[0]
    task_list = list(range(spec.num_tasks)) if tasks is None else [spec.task_index(t) for t in tasks]
    writer = EpisodeWriter(out, fps=spec.control_hz, image_size=(image_size, image_size), state_dim=spec.state_dim,
                           action_dim=spec.action_dim, camera_names=spec.camera_names, overwrite=overwrite,
                           extra_info={**spec.layout(), "split": split, "expert_noise": noise, "seed": seed,
                                       "per_task": per_task, "init_bank": bank})
    try:
        slots = [(t, k) for t in task_list for k in range(per_task)]
        results: dict[tuple[int, int], dict] = {}
        pending = list(slots)
        # envs recorded together: max_envs, or (0) as many as fit half the free memory, at most 100
        width = sized_envs(env_cfg, max_envs, len(slots) if max_envs else min(100, len(slots)), "recording",
                           "--max-envs", split=split, image_size=image_size, init_bank=bank)
        for attempt in range(retries + 1):
            for start in range(0, len(pending), width):
                batch = pending[start:start + width]
                # a failed slot is retried from the next initial state of the bank, with fresh noise
                run = [(t, k + attempt * per_task) for t, k in batch]
                for slot, ep in zip(batch, _run_batch(env_cfg, split, bank, run, image_size=image_size, noise=noise,
                                                      seed=seed + 7919 * attempt + start)):
                    if ep["success"] or slot not in results:
                        results[slot] = ep
                if progress is not None:
                    progress(sum(results[k]["success"] for k in results), len(slots))
            pending = [k for k in slots if not results[k]["success"]]
            if not pending:
                break
        if pending:
            log.warning("%d of %d demonstrations failed after %d retries; they are stored with success=false",
                        len(pending), len(slots), retries)
        for slot in slots:
            ep = results[slot]
            writer.add_episode(ep["images"], ep["states"], ep["actions"], ep["instruction"],
                               expert_actions=ep["labels"], task_id=ep["task_id"], init_id=ep["init_id"],
                               success=ep["success"], suite=spec.suite, split=split)
    except BaseException:
        writer.abort()  # nothing half-written is left behind
        raise
    return writer.close()
