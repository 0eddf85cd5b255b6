"""Benchmarks that print figures (speed goals live here, not in tests)."""

from __future__ import annotations

import resource
import time
from typing import Any

import torch

from reinforge.envs.tabletop.env import TabletopEnv


def _steps_per_s(env: TabletopEnv, steps: int, seed: int) -> float:
    gen = torch.Generator().manual_seed(seed)
    actions = torch.rand(steps + 5, env.num_envs, env.action_dim, generator=gen) * 2 - 1
    env.reset(torch.arange(env.num_envs) % env.suite.num_tasks, seed=seed)
    for i in range(5):  # warm-up (compiles the renderer on first use)
        env.step(actions[i])
    t0 = time.perf_counter()
    for i in range(steps):
        env.step(actions[5 + i])
    dt = time.perf_counter() - t0
    return env.num_envs * steps / dt


def bench_env(num_envs: int = 256, image_size: int = 64, steps: int = 50, suite: str = "spatial",
              render_backend: str = "auto", seed: int = 0) -> dict[str, Any]:
    """Env steps per second with both cameras rendered, and without rendering."""
    with_render = _steps_per_s(TabletopEnv(suite, num_envs, image_size=image_size, render_backend=render_backend),
                               steps, seed)
    no_render = _steps_per_s(TabletopEnv(suite, num_envs, render=False), steps * 4, seed)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"steps_per_s": round(with_render, 1), "ms_per_step": round(1000 * num_envs / with_render, 3),
            "steps_per_s_no_render": round(no_render, 1), "peak_mem_mb": round(peak, 1), "num_envs": num_envs,
            "image_size": image_size, "views": 2, "suite": suite, "torch_threads": torch.get_num_threads()}


def bench_policy(kind: str = "token", batch: int = 512, train_batch: int = 64, repeats: int = 3,
                 image_size: int = 64, seed: int = 0) -> dict[str, Any]:
    """Policy inference (act, sample mode) and SFT update throughput for the default CPU preset."""
    from reinforge.policies import PolicyConfig, make_policy

    torch.manual_seed(seed)
    cfg = PolicyConfig(kind=kind, image_size=(image_size, image_size))
    policy = make_policy(cfg)
    env = TabletopEnv("spatial", batch, image_size=image_size)
    obs = env.reset(torch.arange(batch) % 10, seed=seed)
    policy.eval()
    policy.act(obs, mode="sample")
    t0 = time.perf_counter()
    for _ in range(repeats):
        out = policy.act(obs, mode="sample")
    act_s = (time.perf_counter() - t0) / repeats
    t0 = time.perf_counter()
    with torch.no_grad():
        for _ in range(repeats):
            policy.evaluate(obs, out.replay)
    eval_s = (time.perf_counter() - t0) / repeats
    policy.train()
    idx = torch.arange(train_batch)
    sub = {k: (v[idx] if torch.is_tensor(v) else [v[i] for i in idx]) for k, v in obs.items()}
    sub["actions"] = torch.rand(train_batch, cfg.horizon, cfg.action_dim) * 2 - 1
    sub["is_pad"] = torch.zeros(train_batch, cfg.horizon, dtype=torch.bool)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-4)
    t0 = time.perf_counter()
    for _ in range(repeats):
        loss, _ = policy.sft_loss(sub)
        opt.zero_grad()
        loss.backward()
        opt.step()
    step_s = (time.perf_counter() - t0) / repeats
    return {"kind": kind, "params_m": round(sum(p.numel() for p in policy.parameters()) / 1e6, 3),
            "act_batch": batch, "act_s": round(act_s, 4), "act_obs_per_s": round(batch / act_s, 1),
            "evaluate_s": round(eval_s, 4), "sft_batch": train_batch, "sft_step_s": round(step_s, 4),
            "torch_threads": torch.get_num_threads()}
