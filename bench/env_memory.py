"""What an env costs in memory: the figures behind ``VecEnv.memory_estimate`` (docs/workstation.md).

    MUJOCO_GL=egl .venv-libero/bin/python bench/env_memory.py --env libero --envs 1,2,4,8 [--image-size 64]
    python bench/env_memory.py --env metaworld --suite mt10 --envs 1,10,40
    python bench/env_memory.py --env tabletop --suite spatial --envs 1,100,500

LIBERO: the PSS of one worker process holding N envs (each reset to its own task and stepped one chunk);
in-process envs (MetaWorld, the built-in world): the growth of this process's PSS. Prints one JSON row per N and
the least-squares fit ``fixed + per_env * N``.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch

from reinforge.envs import EnvConfig, make_env
from reinforge.resources import process_pss_mb


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="libero")
    p.add_argument("--suite", default="")
    p.add_argument("--envs", default="1,2,4,8")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--render-quality", default="")
    a = p.parse_args()
    suite = a.suite or {"libero": "libero_spatial", "metaworld": "mt10"}.get(a.env, "spatial")
    opts = {"render_quality": a.render_quality} if a.render_quality else {}
    if a.env == "libero":
        opts["num_workers"] = 1
    rows, held = [], []
    for n in [int(x) for x in a.envs.split(",")]:
        before = process_pss_mb(os.getpid())
        env = make_env(EnvConfig(name=a.env, suite=suite, options=opts), num_envs=n, image_size=a.image_size)
        env.reset(torch.arange(n) % env.spec.num_tasks)
        env.step_chunk(torch.zeros(n, 4, env.spec.action_dim))
        if a.env == "libero":
            mb = process_pss_mb(env.worker_pids[0])
            env.close()
        else:
            mb = process_pss_mb(os.getpid()) - before
            held.append(env)  # kept, so the next measurement starts from the same process
        rows.append({"env": a.env, "suite": suite, "num_envs": n, "image_size": a.image_size, "mb": round(mb, 1)})
        print(json.dumps(rows[-1]), flush=True)
    if len(rows) > 1:
        n = np.array([r["num_envs"] for r in rows], float)
        per, fixed = np.polyfit(n, np.array([r["mb"] for r in rows]), 1)
        print(json.dumps({"fit": {"fixed_mb": round(float(fixed), 1), "per_env_mb": round(float(per), 1)}}))


if __name__ == "__main__":
    main()
