"""LIBERO throughput: env steps/s through the adapter (worker processes, shared memory, one render per chunk)
against a plain single-process LIBERO loop (LIBERO's own camera observables, rendered every step), for LIBERO's
default look and for ``render_quality="fast"``.

Rows, per render quality:
  (a) adapter, 1 env in 1 worker: ``step_chunk`` with chunks of H steps, and ``step`` (a render every step)
  (b) plain LIBERO ``OffScreenRenderEnv`` in one process, same cameras and size, a render every step
  (c) adapter, 2 envs in 2 workers: ``step_chunk`` with chunks of H steps (steps of both envs counted)

Needs LIBERO (``make .venv-libero/.installed``). Usage:
  MUJOCO_GL=egl .venv-libero/bin/python bench/libero_throughput.py [--image-size 64] [--chunk 8] [--json]
Env creation and resets are not timed; actions are seeded uniform noise (the arm wanders, nothing succeeds).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time

import numpy as np
import torch

SUITE = "libero_spatial"
CAMERAS = ("agentview", "robot0_eye_in_hand")


def _actions(rng: np.random.Generator, *shape: int) -> np.ndarray:
    a = rng.uniform(-1.0, 1.0, size=(*shape, 7)).astype(np.float32)
    a[..., 6] = np.sign(a[..., 6])
    return a


def bench_adapter(num_envs: int, num_workers: int, image_size: int, quality: str, chunk: int, steps: int
                  ) -> dict:
    """Env steps/s of ``LiberoEnv.step_chunk`` (``chunk`` > 1) or ``LiberoEnv.step`` (``chunk`` == 1)."""
    from reinforge.envs import make_env

    rng = np.random.default_rng(0)
    with make_env("libero", suite=SUITE, num_envs=num_envs, num_workers=num_workers, image_size=image_size,
                  render_quality=quality, cameras=CAMERAS) as env:
        env.reset(list(range(num_envs)), [0] * num_envs)
        env.step_chunk(torch.from_numpy(_actions(rng, num_envs, chunk)))  # warm-up
        executed, t0 = 0, time.perf_counter()
        for _ in range(max(1, steps // chunk)):
            a = torch.from_numpy(_actions(rng, num_envs, chunk))
            if chunk == 1:
                env.step(a[:, 0])
                executed += num_envs
            else:
                executed += int(env.step_chunk(a).valid.sum())
        seconds = time.perf_counter() - t0
    api = "step" if chunk == 1 else f"step_chunk H={chunk}"
    return {"run": f"adapter {num_envs} env / {num_workers} worker(s), {api}", "render_quality": quality,
            "num_envs": num_envs, "workers": num_workers, "chunk": chunk, "image_size": image_size,
            "steps": executed, "seconds": round(seconds, 2), "steps_per_s": round(executed / seconds, 2)}


def _plain_loop(image_size: int, quality: str, steps: int) -> dict:
    os.environ.setdefault("MUJOCO_GL", "egl")
    from reinforge.envs.libero.worker import SETTLE_ACTION, configure_rendering, load_suite, make_libero_env

    if quality == "fast":
        configure_rendering("fast")
    suite = load_suite(SUITE)
    env = make_libero_env(suite, 0, image_size, image_size, CAMERAS, camera_obs=True)
    try:
        env.seed(0)
        env.reset()
        env.set_init_state(suite.get_task_init_states(0)[0])
        env.step(SETTLE_ACTION)  # warm-up
        rng = np.random.default_rng(0)
        actions = _actions(rng, steps).astype(np.float64)
        t0 = time.perf_counter()
        for a in actions:
            env.step(a)
            env.check_success()
        seconds = time.perf_counter() - t0
    finally:
        env.close()
    return {"run": "plain LIBERO loop, 1 env in 1 process", "render_quality": quality, "num_envs": 1, "workers": 0,
            "chunk": 1, "image_size": image_size, "steps": steps, "seconds": round(seconds, 2),
            "steps_per_s": round(steps / seconds, 2)}


def bench_plain(image_size: int, quality: str, steps: int) -> dict:
    """Env steps/s of LIBERO's ``OffScreenRenderEnv`` stepped directly, in a fresh process (its own GL state)."""
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(_plain_loop, (image_size, quality, steps))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--chunk", type=int, default=8, help="H, env steps per step_chunk call")
    p.add_argument("--steps", type=int, default=96, help="env steps per env timed in chunked runs")
    p.add_argument("--render-steps", type=int, default=24, help="env steps timed in per-step-render runs")
    p.add_argument("--quality", nargs="+", default=["default", "fast"], choices=["default", "fast"])
    p.add_argument("--json", action="store_true", help="one JSON object per row instead of the table")
    args = p.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")
    rows = []
    for q in args.quality:
        runs = [(bench_adapter, (1, 1, args.image_size, q, args.chunk, args.steps)),
                (bench_adapter, (1, 1, args.image_size, q, 1, args.render_steps)),
                (bench_plain, (args.image_size, q, args.render_steps)),
                (bench_adapter, (2, 2, args.image_size, q, args.chunk, args.steps))]
        for fn, fn_args in runs:
            row = fn(*fn_args)
            rows.append(row)
            if args.json:
                print(json.dumps(row), flush=True)
    if not args.json:
        print(f"LIBERO {SUITE}, cameras {', '.join(CAMERAS)}, {args.image_size}x{args.image_size}, "
              f"{os.cpu_count()} CPU cores")
        print(f"{'run':<46} {'quality':<8} {'steps':>6} {'s':>7} {'steps/s':>8}")
        for r in rows:
            print(f"{r['run']:<46} {r['render_quality']:<8} {r['steps']:>6} {r['seconds']:>7.2f} "
                  f"{r['steps_per_s']:>8.2f}")


if __name__ == "__main__":
    main()
