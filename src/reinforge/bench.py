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


def bench_rl(kind: str = "token", algo: str = "grpo", *, iterations: int = 2, freeze_vision: bool = True,
             init: str | None = None, suite: str = "spatial", seed: int = 0) -> dict[str, Any]:
    """RL throughput of the shipped CPU preset (``tabletop_<algo>_<policy>``): env steps per second during
    rollouts (simulation + policy inference), seconds per update and per gradient step.

    Without ``init`` the policy is freshly initialised: it never succeeds, so every episode runs to the time
    limit (the slowest case for rollouts)."""
    from pathlib import Path

    from reinforge.algos.base import build_optimizer
    from reinforge.algos.grpo import GRPO
    from reinforge.algos.ppo import PPO
    from reinforge.config import load_config
    from reinforge.policies import PolicyConfig, load_pretrained, make_policy
    from reinforge.rollout import RolloutCollector
    from reinforge.train.rl import RLConfig

    names = {("grpo", "token"): "tabletop_grpo_token", ("grpo", "flow"): "tabletop_grpo_flow_sde",
             ("ppo", "flow"): "tabletop_ppo_flow_sde", ("ppo", "token"): "tabletop_ppo_token"}
    cfg = load_config(RLConfig, Path(__file__).parent / "configs" / f"{names[(algo, kind)]}.yaml",
                      ["init=unused", f"suite={suite}"])
    torch.manual_seed(seed)
    policy = load_pretrained(init) if init else make_policy(PolicyConfig(kind=kind))
    if kind != policy.config.kind:
        raise ValueError(f"--init is a {policy.config.kind} policy, not {kind}")
    collector = RolloutCollector(suite, policy, cfg.rollout, cache_features=freeze_vision,
                                 need_values=algo == "ppo", seed=seed)
    opt = build_optimizer(policy, cfg.optim, freeze_vision=freeze_vision, train_critic=algo == "ppo")
    learner = GRPO(policy, opt, cfg.grpo, grad_clip=1.0) if algo == "grpo" else PPO(policy, opt, cfg.ppo, grad_clip=1.0)
    rows = []
    for i in range(iterations + 1):  # the first iteration warms up (renderer compilation, allocator)
        t0 = time.perf_counter()
        batch = collector.collect()
        t1 = time.perf_counter()
        learner.update(batch)
        t2 = time.perf_counter()
        steps = int(batch.env_steps.sum())
        n_grad = learner.epochs * max(1, round(batch.num_samples / learner.minibatch_size))
        if i:
            rows.append((steps, t1 - t0, t2 - t1, n_grad, batch.num_samples))
    steps, t_roll, t_upd, n_grad, samples = (sum(r[k] for r in rows) for k in range(5))
    return {"policy": kind, "algo": algo, "freeze_vision": freeze_vision, "envs": cfg.rollout.envs,
            "env_steps_per_s": round(steps / t_roll, 1), "rollout_s": round(t_roll / len(rows), 2),
            "update_s": round(t_upd / len(rows), 2), "grad_step_s": round(t_upd / n_grad, 3),
            "samples_per_update": samples // len(rows), "iteration_s": round((t_roll + t_upd) / len(rows), 2),
            "threads": torch.get_num_threads()}
