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
over all rollouts and within each demonstration's group (the comparison GRPO actually makes), and of the reward's
MAE and perceptual parts alone (the effect of the perceptual term). The imagination is the env's own (the same
model, weights and per-step distance), stepped here one action at a time so every frame is kept.
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
                   seed: int, max_steps: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sampled episodes from (task, init) of the env's train bank: actions (B, horizon, D), frames after each of
    the first ``horizon`` actions (B, horizon, V, 3, H, W) uint8, success (B,)."""
    B = tasks.numel()
    limit = {"max_episode_steps": max_steps} if max_steps else {}
    env = make_env(env_cfg, num_envs=B, init_bank="train", image_size=policy.config.image_size, seed=seed, **limit)
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


def _imagine_step(env: WorldModelEnv, action: torch.Tensor, gt_action: torch.Tensor, gt_frames: list) -> torch.Tensor:
    """One imagined step of every env with the policy's and the ground truth's action; returns the policy's
    frames (B, V, 3, H, W) in [0, 1] and appends the ground truth's to ``gt_frames``."""
    wm, dev = env.wm, env.device
    env.z, env.s = wm.step(env.z, env.s, action.to(dev))
    env.z_gt, env.s_gt = wm.step(env.z_gt, env.s_gt, gt_action.to(dev))
    env.gt += 1
    env.elapsed += 1
    gt_frames.append(wm.decode(env.z_gt).cpu())
    return wm.decode(env.z).cpu()


def _distances(model, a: torch.Tensor, b: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over the horizon of MAE and of the perceptual distance between frames a, b (N, T, V, 3, H, W)."""
    n, T = a.shape[:2]
    fa, fb = a.flatten(0, 1), b.flatten(0, 1)
    perc = torch.cat([model.perceptual_distance(fa[j:j + 256].to(device), fb[j:j + 256].to(device)).cpu()
                      for j in range(0, fa.shape[0], 256)])
    return mae(fa, fb).view(n, T).mean(1), perc.view(n, T).mean(1)


@torch.no_grad()
def reward_agreement(policy: Policy, wm_env: WorldModelEnv, *, demos: int = 100, samples: int = 4, horizon: int = 16,
                     seed: int = 0, max_steps: int | None = None) -> dict[str, Any]:
    """Spearman agreement of the verified reward with true success, over ``demos`` demonstrations (spread over
    the tasks) x ``samples`` sampled policy rollouts each (see the module docstring); the real episodes run to
    the env's time limit (or ``max_steps``)."""
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
    actions, real_frames, success = _real_rollouts(policy, env_cfg, tasks, inits, horizon, seed, max_steps)
    first = ds.episode_start[eps]
    # per rollout: the world-model and oracle distances, their MAE and perceptual parts kept apart
    parts = {k: torch.zeros(eps.numel()) for k in ("wm_mae", "wm_perc", "oracle_mae", "oracle_perc")}
    B, model = wm_env.num_envs, wm_env.wm
    for i in range(0, eps.numel(), B):
        idx = torch.arange(i, min(i + B, eps.numel()))
        n = idx.numel()
        frames = torch.cat([first[idx], first[idx][-1:].expand(B - n)])  # pad to the env's size
        acts = torch.cat([actions[idx], actions[idx][-1:].expand(B - n, -1, -1)])
        wm_env.reset_to_frames(frames)
        gt_frames, pol_frames = [], []
        for h in range(horizon):  # past a demonstration's end its last recorded action repeats, as in the env
            gt = wm_env.ds.actions[torch.minimum(wm_env.gt, wm_env.gt_end - 1)]
            pol_frames.append(_imagine_step(wm_env, acts[:, h], gt, gt_frames))
        a, b = torch.stack(pol_frames, 1)[:n], torch.stack(gt_frames, 1)[:n]
        parts["wm_mae"][idx], parts["wm_perc"][idx] = _distances(model, a, b, wm_env.device)
        # oracle: the rollout's real frames vs the demonstration's recorded frames
        last = first[idx] + torch.tensor([int(ds.episodes[int(e)]["length"]) - 1 for e in eps[idx]])
        rec = torch.minimum(first[idx][:, None] + 1 + torch.arange(horizon)[None], last[:, None])
        parts["oracle_mae"][idx], parts["oracle_perc"][idx] = _distances(
            model, real_frames[idx].float() / 255, ds.images[rec].float() / 255, wm_env.device)
    w_mae, w_perc = wm_env.weights
    wm = -(w_mae * parts["wm_mae"] + w_perc * parts["wm_perc"])
    oracle = -(w_mae * parts["oracle_mae"] + w_perc * parts["oracle_perc"])
    s = success.float().numpy()
    out = {"rollouts": int(eps.numel()), "demos": int(len(pick)), "samples": samples, "horizon": horizon,
           "success_rate": float(s.mean()), "weights": {"mae": w_mae, "perceptual": w_perc},
           "spearman_wm_success": spearman(wm.numpy(), s), "spearman_oracle_success": spearman(oracle.numpy(), s),
           "spearman_wm_oracle": spearman(wm.numpy(), oracle.numpy()),
           "spearman_wm_mae_only_success": spearman(-parts["wm_mae"].numpy(), s),
           "spearman_wm_perceptual_only_success": spearman(-parts["wm_perc"].numpy(), s),
           "spearman_oracle_mae_only_success": spearman(-parts["oracle_mae"].numpy(), s)}
    for name, r in (("wm_oracle", oracle), ("wm_success", torch.as_tensor(s))):
        within = [spearman(wm[j:j + samples].numpy(), r[j:j + samples].numpy()) for j in range(0, eps.numel(), samples)]
        within = [w for w in within if not math.isnan(w)]
        out[f"spearman_{name}_within_group"] = float(np.mean(within)) if within else float("nan")
        out[f"groups_{name}_within"] = len(within)
    return out
