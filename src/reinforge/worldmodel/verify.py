"""How good is the verified reward? Its agreement with true success in the real simulator.

For demonstrations of the world model's data, the policy is rolled out (sampling, as in RL) in the REAL env
from the demonstration's own initial state (task, init id), ``samples`` times each. Each rollout then gets:

- ``wm_reward``: the world model's verified reward of its first ``horizon`` actions, imagined from the
  demonstration's first frame against the demonstration's recorded actions (exactly what RL in the world model
  optimises, summed over the horizon);
- ``oracle_reward``: the same distance between the REAL frames of the rollout and the demonstration's recorded
  frames (no model error: what a perfect world model would give);
- ``success``: whether the real episode succeeded (run to the env's time limit).

Reported: Spearman rank correlations wm_reward ~ success, oracle_reward ~ success, and wm_reward ~ oracle_reward,
over all rollouts and within each demonstration's group (the comparison GRPO actually makes).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from reinforge.envs import EnvConfig, make_env
from reinforge.policies import Policy
from reinforge.types import OBS_IMAGE
from reinforge.worldmodel.env import WorldModelEnv
from reinforge.worldmodel.metrics import mae


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    sx = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sx[j + 1] == sx[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x, y) -> float:
    """Spearman's rank correlation (Pearson on average ranks); nan when either side is constant."""
    rx, ry = rankdata(np.asarray(x, float)), rankdata(np.asarray(y, float))
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


@torch.no_grad()
def _real_rollouts(policy: Policy, env_cfg: EnvConfig, tasks: torch.Tensor, inits: torch.Tensor, horizon: int,
                   seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sampled episodes from (task, init) of the env's train bank: actions (B, horizon, D), frames after each of
    the first ``horizon`` actions (B, horizon, V, 3, H, W) uint8, success (B,)."""
    B = tasks.numel()
    env = make_env(env_cfg, num_envs=B, init_bank="train", image_size=policy.config.image_size, seed=seed)
    gen = torch.Generator(device=next(policy.parameters()).device).manual_seed(seed)
    obs = env.reset(tasks, inits)
    acts, frames = [], []
    done, success = torch.zeros(B, dtype=torch.bool), torch.zeros(B, dtype=torch.bool)
    steps = 0
    while not bool(done.all()) and steps < env.max_episode_steps:
        out = policy.act(obs, mode="sample", generator=gen)
        chunk = out.actions.float().cpu()
        for h in range(chunk.shape[1]):  # step one action at a time to keep every frame of the horizon
            res = env.step(chunk[:, h].to(env.device))
            if steps < horizon:
                acts.append(chunk[:, h])
                frames.append(res.obs[OBS_IMAGE].cpu())
            success |= res.success.cpu() & ~done
            done |= res.terminated.cpu() | res.truncated.cpu()
            steps += 1
            obs = res.obs
            if bool(done.all()):
                break
    env.close()
    while len(acts) < horizon:  # an episode shorter than the horizon: hold its last frame, zero motion
        acts.append(torch.zeros_like(acts[-1]))
        frames.append(frames[-1])
    return torch.stack(acts, 1), torch.stack(frames, 1), success


@torch.no_grad()
def reward_agreement(policy: Policy, wm_env: WorldModelEnv, *, demos: int = 100, samples: int = 4, horizon: int = 16,
                     seed: int = 0) -> dict[str, Any]:
    """Spearman agreement of the verified reward with true success, over ``demos`` demonstrations (spread over
    the tasks) x ``samples`` sampled policy rollouts each (see the module docstring)."""
    policy.eval()
    ds = wm_env.ds
    n_eps = ds.num_episodes
    pick = np.linspace(0, n_eps - 1, min(demos, n_eps)).round().astype(int)
    eps = torch.as_tensor(np.repeat(pick, samples))
    meta = [ds.episodes[int(e)] for e in eps]
    tasks = torch.tensor([int(m.get("task_id", 0)) for m in meta])
    inits = torch.tensor([int(m.get("init_id", 0)) for m in meta])
    ev = wm_env.spec.evaluate_in or {}
    env_cfg = EnvConfig.from_mapping(dict(ev))
    actions, real_frames, success = _real_rollouts(policy, env_cfg, tasks, inits, horizon, seed)
    first = ds.episode_start[eps]
    wm, oracle = torch.zeros(eps.numel()), torch.zeros(eps.numel())
    w_mae, w_perc = wm_env.weights
    B = wm_env.num_envs
    model = wm_env.wm
    for i in range(0, eps.numel(), B):
        idx = torch.arange(i, min(i + B, eps.numel()))
        rows = torch.arange(idx.numel())
        frames = torch.cat([first[idx], first[idx][-1:].expand(B - idx.numel())])  # pad to the env's size
        wm_env.reset_to_frames(frames)
        acts = torch.cat([actions[idx], actions[idx][-1:].expand(B - idx.numel(), -1, -1)])
        total = torch.zeros(B)
        live = torch.ones(B, dtype=torch.bool)
        for h in range(horizon):
            res = wm_env.step_chunk(acts[:, h:h + 1], active=live)
            total += res.reward[:, 0]
            live &= ~res.truncated
        wm[idx] = total[rows] * wm_env.spec.max_episode_steps / horizon  # a per-step mean, as the env's return
        # oracle: real frames vs recorded frames, the same distance
        last = first[idx] + torch.tensor([int(ds.episodes[int(e)]["length"]) - 1 for e in eps[idx]])
        rec = torch.minimum(first[idx][:, None] + 1 + torch.arange(horizon)[None], last[:, None])
        a = real_frames[idx].flatten(0, 1).float() / 255
        b = ds.images[rec].flatten(0, 1).float() / 255
        d = w_mae * mae(a, b) + (w_perc * model.perceptual_distance(a.to(wm_env.device), b.to(wm_env.device)).cpu()
                                 if w_perc else 0.0)
        oracle[idx] = -d.view(idx.numel(), horizon).mean(1)
    s = success.float().numpy()
    out = {"rollouts": int(eps.numel()), "demos": int(len(pick)), "samples": samples, "horizon": horizon,
           "success_rate": float(s.mean()),
           "spearman_wm_success": spearman(wm.numpy(), s), "spearman_oracle_success": spearman(oracle.numpy(), s),
           "spearman_wm_oracle": spearman(wm.numpy(), oracle.numpy())}
    within = [spearman(wm[j:j + samples].numpy(), oracle[j:j + samples].numpy())
              for j in range(0, eps.numel(), samples)]
    within = [w for w in within if not math.isnan(w)]
    out["spearman_wm_oracle_within_group"] = float(np.mean(within)) if within else float("nan")
    return out
