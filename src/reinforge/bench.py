"""Benchmarks that print figures (speed goals live here, not in tests): any registered env, the policies, and
RL iterations through the same trainer ``reinforge train`` runs."""

from __future__ import annotations

import dataclasses
import resource
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import torch

from reinforge.envs import EnvConfig, VecEnv, make_env
from reinforge.envs.base import env_options_class
from reinforge.resources import process_pss_mb


def _sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _steps_per_s(env: VecEnv, steps: int, seed: int, warmup: int = 5) -> float:
    gen = torch.Generator().manual_seed(seed)
    actions = torch.rand(steps + warmup, env.num_envs, env.action_dim, generator=gen) * 2 - 1
    env.reset(torch.arange(env.num_envs) % env.spec.num_tasks, seed=seed)
    for i in range(warmup):  # warm-up (compiles the renderer on first use, starts workers)
        env.step(actions[i].to(env.device))
    _sync(env.device)
    t0 = time.perf_counter()
    for i in range(steps):
        env.step(actions[warmup + i].to(env.device))
    _sync(env.device)  # CUDA work is asynchronous: time it to its end
    dt = time.perf_counter() - t0
    return env.num_envs * steps / dt


def _has_option(env: EnvConfig, name: str) -> bool:
    cls = env_options_class(env.name)
    return cls is not None and name in {f.name for f in dataclasses.fields(cls)}


def bench_env(env: EnvConfig | None = None, num_envs: int = 256, image_size: int = 64, steps: int = 50,
              num_workers: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Env steps per second with the cameras rendered (and, for envs that can skip rendering, without)."""
    env = env or EnvConfig()
    opts = dict(env.options)
    if num_workers is not None:
        if not _has_option(env, "num_workers"):
            raise ValueError(f"env {env.name!r} has no worker processes (no num_workers option)")
        opts["num_workers"] = num_workers
    cfg = dataclasses.replace(env, options=opts)
    with make_env(cfg, num_envs=num_envs, image_size=image_size) as sim:
        with_render = _steps_per_s(sim, steps, seed)
        spec = sim.spec
        # envs stepping in worker processes (LIBERO): their memory, measured while they hold their envs
        workers = [process_pss_mb(pid) for pid in getattr(sim, "worker_pids", [])]
    row: dict[str, Any] = {"env": env.name, "suite": env.suite, "env_device": env.device, "num_envs": num_envs,
                           "image_size": image_size, "views": spec.num_views, "steps_per_s": round(with_render, 1),
                           "ms_per_step": round(1000 * num_envs / with_render, 3)}
    if _has_option(env, "render"):
        with make_env(dataclasses.replace(cfg, options={**opts, "render": False}), num_envs=num_envs) as sim:
            row["steps_per_s_no_render"] = round(_steps_per_s(sim, steps * 4, seed), 1)
    if num_workers is not None:
        row["num_workers"] = num_workers
    row.update({k: opts[k] for k in ("render_backend", "render_quality") if k in opts})
    row["peak_mem_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # this process
    if workers and all(w is not None for w in workers):
        row["workers_mem_mb"] = round(sum(workers), 1)  # PSS of the worker processes, summed
        row["total_mem_mb"] = round(row["peak_mem_mb"] + row["workers_mem_mb"], 1)
    row["torch_threads"] = torch.get_num_threads()
    return row


# architectures of `reinforge bench policy --kinds`: the built-in policies' CPU presets and the OpenVLA-OFT style
# policy at two sizes (the real OpenVLA-OFT is a 7B Llama 2 with DINOv2-L + SigLIP-So400m at 224 px)
POLICY_PRESETS: dict[str, dict[str, Any]] = {
    "token": {"kind": "token"},
    "flow": {"kind": "flow"},
    "oft-tiny": {"kind": "oft"},  # d_model 64, 2 Llama layers, 2-layer 32-wide towers, patch 8: ~0.4 M params
    "oft-medium": {"kind": "oft", "d_model": 512, "heads": 8, "oft_llm_layers": 8, "oft_vision_dim": 384,
                   "oft_vision_layers": 6, "oft_patch_size": 16, "image_size": 224},  # ~59 M params
    # LeRobot's pi0 (Python >= 3.12, .venv-lerobot); the real one is a PaliGemma 3B with a 300M Gemma expert
    "lerobot-tiny": {"kind": "lerobot", "d_model": 64},
    "lerobot-pi05-tiny": {"kind": "lerobot", "lerobot_model": "pi05", "d_model": 64},
    "lerobot-smolvla-tiny": {"kind": "lerobot", "lerobot_model": "smolvla", "d_model": 64},
    "lerobot-medium": {"kind": "lerobot", "d_model": 512, "lerobot_expert_width": 256, "lerobot_depth": 6,
                       "lerobot_head_dim": 64, "lerobot_vision_dim": 384, "lerobot_patch_size": 16, "image_size": 224},
    "lerobot-pi05-medium": {"kind": "lerobot", "lerobot_model": "pi05", "d_model": 512, "lerobot_expert_width": 256,
                            "lerobot_depth": 6, "lerobot_head_dim": 64, "lerobot_vision_dim": 384,
                            "lerobot_patch_size": 16, "image_size": 224},
    "lerobot-smolvla-medium": {"kind": "lerobot", "lerobot_model": "smolvla", "d_model": 512,
                               "lerobot_expert_width": 256, "lerobot_depth": 6, "lerobot_head_dim": 64,
                               "lerobot_vision_dim": 384, "lerobot_patch_size": 16, "image_size": 224},
}


def bench_policy(kind: str = "token", batch: int = 512, train_batch: int = 64, repeats: int = 3,
                 image_size: int = 64, seed: int = 0, device: str = "cpu") -> dict[str, Any]:
    """Policy inference (act, sample mode) and SFT update throughput of a ``POLICY_PRESETS`` architecture."""
    from reinforge.device import resolve_device
    from reinforge.policies import PolicyConfig, make_policy

    if kind not in POLICY_PRESETS:
        raise ValueError(f"unknown policy preset {kind!r}; known: {list(POLICY_PRESETS)}")
    dev = resolve_device(device)
    torch.manual_seed(seed)
    preset = dict(POLICY_PRESETS[kind])
    image_size = preset.pop("image_size", image_size)
    cfg = PolicyConfig(image_size=(image_size, image_size), **preset)
    policy = make_policy(cfg).to(dev)
    with make_env("tabletop", suite="spatial", num_envs=batch, image_size=image_size) as env:
        obs = env.reset(torch.arange(batch) % env.spec.num_tasks, seed=seed)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    policy.eval()
    policy.act(obs, mode="sample")
    sync()
    t0 = time.perf_counter()
    for _ in range(repeats):
        out = policy.act(obs, mode="sample")
    sync()
    act_s = (time.perf_counter() - t0) / repeats
    t0 = time.perf_counter()
    with torch.no_grad():
        for _ in range(repeats):
            policy.evaluate(obs, out.replay)
    sync()
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
    sync()
    step_s = (time.perf_counter() - t0) / repeats
    return {"kind": kind, "device": str(dev), "params_m": round(sum(p.numel() for p in policy.parameters()) / 1e6, 3),
            "image_size": image_size, "act_batch": batch, "act_s": round(act_s, 4),
            "act_obs_per_s": round(batch / act_s, 1),
            "evaluate_s": round(eval_s, 4), "sft_batch": train_batch, "sft_step_s": round(step_s, 4),
            "torch_threads": torch.get_num_threads()}


def bench_rl(kind: str = "token", algo: str = "grpo", *, iterations: int = 2, freeze_vision: bool = True,
             init: str | None = None, env: EnvConfig | None = None, seed: int = 0, device: str = "cpu",
             precision: str = "fp32", num_envs: int | None = None, extra: Sequence[str] = (),
             layout: str = "in-process") -> dict[str, Any]:
    """RL throughput of the shipped preset (``tabletop_<algo>_<policy>``) through ``RLTrainer``'s own iteration:
    env steps per second during rollouts (simulation + policy inference), seconds per update and per gradient
    step. GRPO runs one rollout round per iteration (dynamic sampling off, so every iteration updates).

    Without ``init`` the policy is freshly initialised for the env's layout: it never succeeds, so every episode
    runs to the time limit (the slowest case for rollouts). ``extra``: more dotted config overrides (e.g. the
    ``distributed`` section of a Ray layout, named ``layout`` in the row)."""
    from reinforge.config import load_config
    from reinforge.policies import PolicyConfig, load_pretrained, make_policy
    from reinforge.train.quickstart import QUICKSTART_CONFIGS, resolve_config
    from reinforge.train.rl import RLConfig, RLTrainer

    env = env or EnvConfig()
    with tempfile.TemporaryDirectory(prefix="reinforge-bench-") as tmp:
        if init is None:
            from reinforge.eval.evaluate import env_spec

            spec = env_spec(env, image_size=64)
            torch.manual_seed(seed)
            tiny = {"d_model": 64} if kind == "lerobot" else {}  # LeRobot's pi0 at the lerobot-tiny preset's size
            policy = make_policy(PolicyConfig(kind=kind, action_dim=spec.action_dim, state_dim=spec.state_dim,
                                              num_views=spec.num_views, **tiny))
            init = str(policy.save_pretrained(f"{tmp}/init"))
        elif load_pretrained(init).config.kind != kind:
            raise ValueError(f"--init is not a {kind} policy")
        overrides = [f"init={init}", f"out={tmp}/run", f"env.name={env.name}", f"env.suite={env.suite}",
                     f"env.device={env.device}", f"freeze_vision={freeze_vision}", "resume=false", f"seed={seed}",
                     f"device={device}", f"precision={precision}", "grpo.dynamic_sampling=false", "grpo.max_rounds=1"]
        overrides += [f"env.{k}={list(v) if isinstance(v, tuple) else v}" for k, v in env.options.items()]
        if num_envs is not None:
            overrides.append(("rollout.num_envs=" if algo == "ppo" else "rollout.num_groups=")
                             + str(num_envs if algo == "ppo" else max(1, num_envs // 8)))
        overrides += list(extra)
        # the oft policy is a token policy, LeRobot's a flow policy: they run those presets
        preset = QUICKSTART_CONFIGS[(algo, {"oft": "token", "lerobot": "flow"}.get(kind, kind))]
        cfg = load_config(RLConfig, resolve_config(preset), overrides)
        rows = []
        with RLTrainer(cfg) as trainer:
            learner = trainer.algo
            for i in range(iterations + 1):  # the first iteration warms up (renderer compilation, allocator)
                m = trainer.train_iteration()
                n_grad = learner.epochs * max(1, round(m["rollout/samples"] / learner.minibatch_size))
                if i:
                    rows.append((m["rollout/env_steps"], m["time/rollout_s"], m["time/update_s"], n_grad,
                                 m["rollout/samples"]))
    steps, t_roll, t_upd, n_grad, samples = (sum(r[k] for r in rows) for k in range(5))
    return {"layout": layout, "policy": kind, "algo": algo, "env": f"{env.name}/{env.suite}", "device": device,
            "precision": precision, "freeze_vision": freeze_vision, "envs": cfg.rollout.envs,
            "env_steps_per_s": round(steps / t_roll, 1), "rollout_s": round(t_roll / len(rows), 2),
            "update_s": round(t_upd / len(rows), 2), "grad_step_s": round(t_upd / n_grad, 3),
            "samples_per_update": int(samples // len(rows)), "iteration_s": round((t_roll + t_upd) / len(rows), 2),
            "threads": torch.get_num_threads()}
