"""Tabletop env throughput: env steps/s with both cameras rendered and without rendering, or (``--render-only``)
the renderer alone, without physics: frames/s (one frame = every view of one env) and images/s.

Usage: python bench/env_throughput.py [--num-envs 256 ...] [--image-size 64 ...] [--env-device cuda]
                                      [--render-backend triton torch ...] [--render-only] [--steps 40]
Prints one JSON line per configuration (env steps: the same figures as `reinforge bench env --json`).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

from reinforge.bench import bench_env
from reinforge.envs import EnvConfig, make_env


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def render_throughput(cfg: EnvConfig, num_envs: int, image_size: int, repeats: int, seed: int = 0) -> dict[str, Any]:
    """Frames/s of the env's renderer on a fixed scene (after a few random steps), physics excluded."""
    with make_env(cfg, num_envs=num_envs, image_size=image_size) as env:
        env.reset(torch.arange(num_envs) % env.spec.num_tasks, seed=seed)
        gen = torch.Generator().manual_seed(seed)
        for _ in range(3):
            env.step((torch.rand(num_envs, env.action_dim, generator=gen) * 2 - 1).to(env.device))
        renderer, scene, state = env.renderer, env.scene, env.state
        for _ in range(2):  # warm-up: compiles the kernel
            renderer.render(scene, state)
        _sync(env.device)
        t0 = time.perf_counter()
        for _ in range(repeats):
            img = renderer.render(scene, state)
        _sync(env.device)
        dt = (time.perf_counter() - t0) / repeats
        backend = renderer._select(env.device)
        row = {"render_only": True, "suite": cfg.suite, "env_device": cfg.device, "render_backend": backend,
               "num_envs": num_envs, "image_size": image_size, "views": img.shape[1],
               "frames_per_s": round(num_envs / dt, 1), "images_per_s": round(num_envs * img.shape[1] / dt, 1),
               "ms_per_render": round(1000 * dt, 3)}
        if backend == "triton":  # the kernel's float32 mode, for GPUs with slow float64
            row["frames_per_s_float32"] = round(num_envs / _time_triton_float32(env, repeats), 1)
        return row


def _time_triton_float32(env, repeats: int) -> float:
    """Seconds per render of the triton kernel in float32 on the env's current scene."""
    from reinforge.envs.tabletop import _render_triton
    from reinforge.envs.tabletop.render import build_cameras, build_primitives

    h, w = env.image_size

    def render() -> torch.Tensor:
        return _render_triton.render(build_primitives(env.scene, env.state), build_cameras(env.state, w / h), h, w,
                                     precise=False)

    render()
    _sync(env.device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        render()
    _sync(env.device)
    return (time.perf_counter() - t0) / repeats


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--num-envs", type=int, nargs="+", default=[64, 256, 1024])
    p.add_argument("--image-size", type=int, nargs="+", default=[64, 128])
    p.add_argument("--steps", type=int, default=40, help="timed env steps (renders with --render-only)")
    p.add_argument("--suite", default="spatial")
    p.add_argument("--env-device", default="cpu")
    p.add_argument("--render-backend", nargs="+", default=["auto"], choices=("auto", "numba", "torch", "triton"))
    p.add_argument("--render-only", action="store_true", help="time the renderer alone (no physics)")
    args = p.parse_args()
    for backend in args.render_backend:
        cfg = EnvConfig(suite=args.suite, device=args.env_device, options={"render_backend": backend})
        for n in args.num_envs:
            for size in args.image_size:
                row = (render_throughput(cfg, n, size, args.steps) if args.render_only
                       else bench_env(cfg, num_envs=n, image_size=size, steps=args.steps))
                print(json.dumps(row), flush=True)
