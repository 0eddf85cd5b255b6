"""SFT calibration on a built-in suite: 1 demo per task vs 50 demos per task, token and flow policies.

Records the demonstrations, trains each policy as `reinforge sft` does and evaluates greedily on the 50
fixed initial states of every task. Prints one JSON line per run and a final summary line.

Usage: python bench/sft_calibration.py [--suite spatial] [--out runs/sft_calibration] [--steps-1 600]
       [--steps-50 4000] [--only 1|50]
(--suite: a current suite, or an earlier version such as object_v1 / long_v1)
(spatial, both dataset sizes: about 25 minutes on a 2-core CPU)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from reinforge.config import load_config
from reinforge.data.record import record_demos
from reinforge.envs.tabletop.tasks import LEGACY_SUITES, SUITE_NAMES
from reinforge.train.logging import read_metrics
from reinforge.train.sft import SFTConfig, SFTTrainer


def run(data: Path, kind: str, steps: int, out: Path, episodes: int, suite: str) -> dict:
    t0 = time.perf_counter()
    cfg = load_config(SFTConfig, None, [f"data={data}", f"policy.kind={kind}", f"steps={steps}", f"out={out}",
                                        f"eval_episodes_per_task={episodes}", "resume=false"])
    SFTTrainer(cfg).run(progress=False)
    final = read_metrics(out / "metrics.jsonl")[-1]
    return {"suite": suite, "policy": kind, "data": data.name, "steps": steps,
            "success_rate": final[f"eval/{suite}/success_rate"], "mean_length": final[f"eval/{suite}/mean_length"],
            "wall_min": round((time.perf_counter() - t0) / 60, 2)}


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--suite", default="spatial", choices=SUITE_NAMES + LEGACY_SUITES)
    p.add_argument("--out", default="runs/sft_calibration")
    p.add_argument("--steps-1", type=int, default=600)
    p.add_argument("--steps-50", type=int, default=4000)
    p.add_argument("--episodes-per-task", type=int, default=50)
    p.add_argument("--only", choices=("1", "50"), default=None)
    args = p.parse_args()
    out = Path(args.out) / args.suite
    results = []
    for per_task, steps in ((1, args.steps_1), (50, args.steps_50)):
        if args.only and str(per_task) != args.only:
            continue
        data = record_demos(args.suite, out / f"demos_{per_task}", per_task=per_task, overwrite=True)
        for kind in ("token", "flow"):
            r = run(data, kind, steps, out / f"sft_{kind}_{per_task}demo", args.episodes_per_task, args.suite)
            print(json.dumps(r), flush=True)
            results.append(r)
    print(json.dumps({"summary": {f"{r['policy']}_{r['data']}": r["success_rate"] for r in results}}))
