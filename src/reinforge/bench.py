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
