"""Tabletop env throughput: env steps/s with both cameras rendered and without rendering.

Usage: python bench/env_throughput.py [--num-envs 256] [--image-size 64]
Prints one JSON line per configuration (same figures as `reinforge bench env --json`).
"""

from __future__ import annotations

import argparse
import json

from reinforge.bench import bench_env

if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--num-envs", type=int, nargs="+", default=[64, 256, 1024])
    p.add_argument("--image-size", type=int, nargs="+", default=[64, 128])
    p.add_argument("--steps", type=int, default=40)
    args = p.parse_args()
    for n in args.num_envs:
        for size in args.image_size:
            print(json.dumps(bench_env(num_envs=n, image_size=size, steps=args.steps)), flush=True)
