"""Recording expert demonstrations of the tabletop suites into a dataset (see ``dataset.py``)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from reinforge.data.dataset import EpisodeWriter
from reinforge.envs.tabletop.env import CONTROL_HZ, TabletopEnv
from reinforge.envs.tabletop.expert import ScriptedExpert
from reinforge.envs.tabletop.tasks import NUM_INIT_STATES, Split, get_suite
from reinforge.types import OBS_IMAGE, OBS_STATE

log = logging.getLogger(__name__)


def _run_batch(suite: str, split: Split, slots: list[tuple[int, int]], *, image_size: int, noise: float,
               seed: int) -> list[dict]:
    """Run the expert on (task, init) slots in one batched env; returns one episode record per slot."""
    env = TabletopEnv(suite, len(slots), split=split, image_size=image_size, init_bank="train")
    obs = env.reset([t for t, _ in slots], [i % NUM_INIT_STATES for _, i in slots])
    expert = ScriptedExpert(env, noise=noise, seed=seed)
    B = len(slots)
    frames: list[list[tuple]] = [[] for _ in range(B)]
    done = torch.zeros(B, dtype=torch.bool)
    success = torch.zeros(B, dtype=torch.bool)
    while not bool(done.all()):
        action = expert.act(obs).actions[:, 0]
        img, state, act = obs[OBS_IMAGE].numpy(), obs[OBS_STATE].numpy(), action.numpy()
        label = expert.clean_action.numpy()
        for b in (~done).nonzero().flatten().tolist():
            frames[b].append((img[b], state[b], act[b], label[b]))
        res = env.step(action)
        success |= res.success & ~done
        done |= res.terminated | res.truncated
        obs = res.obs
    out = []
    for b, (task, init) in enumerate(slots):
        img, state, act, label = (np.stack(x) for x in zip(*frames[b]))
        out.append({"images": img, "states": state, "actions": act, "labels": label, "task_id": task,
                    "init_id": init % NUM_INIT_STATES,
                    "success": bool(success[b]), "instruction": env.suite.tasks[task].instruction})
    return out


def record_demos(suite: str, out: str | Path, *, per_task: int = 1, split: Split = "train", image_size: int = 64,
                 noise: float = 0.2, seed: int = 0, max_envs: int = 100, retries: int = 3, overwrite: bool = False,
                 tasks: list[int] | None = None, progress: Callable[[int, int], None] | None = None) -> Path:
    """Record ``per_task`` successful expert episodes for each task of ``suite`` into ``out``.

    Demonstrations start from the suite's *train* bank of initial states, disjoint from the 50 fixed
    evaluation states. The executed (noisy) actions are stored as ``action``; the expert's noise-free
    actions in the same states as ``expert_action`` (DART-style corrective labels, used by SFT). A failed
    expert episode is retried with fresh noise up to ``retries`` times.
    """
    if per_task < 1:
        raise ValueError(f"--per-task must be >= 1, got {per_task}")
    s = get_suite(suite, split)
    task_list = list(range(s.num_tasks)) if tasks is None else [s.task_index(t) for t in tasks]
    writer = EpisodeWriter(out, fps=CONTROL_HZ, image_size=(image_size, image_size), state_dim=TabletopEnv.state_dim,
                           action_dim=TabletopEnv.action_dim, overwrite=overwrite,
                           extra_info={"suite": suite, "split": split, "expert_noise": noise, "seed": seed,
                                       "per_task": per_task, "init_bank": "train"})
    slots = [(t, k) for t in task_list for k in range(per_task)]
    results: dict[tuple[int, int], dict] = {}
    pending = list(slots)
    for attempt in range(retries + 1):
        for start in range(0, len(pending), max_envs):
            batch = pending[start:start + max_envs]
            # a failed slot is retried from the next initial state of the bank, with fresh noise
            run = [(t, k + attempt * per_task) for t, k in batch]
            for slot, ep in zip(batch, _run_batch(suite, split, run, image_size=image_size, noise=noise,
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
        writer.add_episode(ep["images"], ep["states"], ep["actions"], ep["instruction"], expert_actions=ep["labels"],
                           task_id=ep["task_id"], init_id=ep["init_id"], success=ep["success"], suite=suite,
                           split=split)
    return writer.close()
