"""RL's lift on every built-in suite, as SimpleVLA-RL's table: one-demo SFT vs + RL, per suite and averaged.

For each suite and seed it runs the quickstart pipeline (one expert demo per task -> flow SFT -> RL with the
chosen algorithm's shipped recipe, by default PPO + Flow-SDE as the quickstart -> greedy evaluation on the 50
fixed evaluation states of every task, 500 episodes per cell), reusing finished stages, and prints mean +- std
over seeds next to SimpleVLA-RL's LIBERO numbers (OpenVLA-OFT, one demo per task; their Table 2).

Usage: python bench/suites_table.py [--suites spatial,object,goal,long] [--seeds 0,1,2] [--iterations 60]
       [--algo ppo|grpo] [--config NAME] [--out runs/suites] [--sft-steps long=1500 object=600 ...]
       [RL overrides, e.g. optim.target_kl=0.01]
(one suite and seed: about the quickstart's 15 minutes on a 2-core CPU; long runs take longer)
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from reinforge.envs import EnvConfig
from reinforge.fsutil import write_text_atomic
from reinforge.train.quickstart import QuickstartOptions, run_quickstart

SUITES = ("spatial", "object", "goal", "long")
# SimpleVLA-RL (arXiv 2509.09674), LIBERO, OpenVLA-OFT from one demo per task: SFT -> + RL (%)
PAPER = {"spatial": (63.6, 98.2), "object": (54.9, 98.7), "goal": (59.6, 98.8), "long": (17.3, 91.7)}


def cell(values: list[float]) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    return f"{mean:.1f}" + (f" +- {statistics.stdev(values):.1f}" if len(values) > 1 else "")


def table(results: dict[str, dict[int, dict[str, float]]], suites: list[str], method: str = "PPO + Flow-SDE"
          ) -> list[str]:
    cols = [s.capitalize() for s in suites] + ["Average"]
    md = ["| | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for label, key in (("SFT (1 demo per task)", "sft1"), (f"+ RL ({method})", "rl")):
        per_suite = [[r[key] for r in results.get(s, {}).values()] for s in suites]
        seeds = sorted({k for s in suites for k in results.get(s, {})})
        avgs = [statistics.fmean(results[s][k][key] for s in suites) for k in seeds
                if all(k in results.get(s, {}) for s in suites)]
        md.append(f"| {label} | " + " | ".join(cell(v) for v in per_suite) + f" | {cell(avgs)} |")
    for label, i in (("SimpleVLA-RL, LIBERO: SFT", 0), ("SimpleVLA-RL, LIBERO: + RL", 1)):
        vals = [PAPER[s][i] for s in suites]
        md.append(f"| {label} | " + " | ".join(f"{v:.1f}" for v in vals) + f" | {statistics.fmean(vals):.1f} |")
    return md


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--suites", default=",".join(SUITES))
    p.add_argument("--seeds", default="0")
    p.add_argument("--iterations", type=int, default=None, help="RL iterations (default: the recipe's)")
    p.add_argument("--algo", default="ppo", choices=("ppo", "grpo"), help="RL algorithm (flow policy, Flow-SDE)")
    p.add_argument("--config", default="", help="RL config (default: the shipped one for the algorithm)")
    # long's demonstrations are twice as long: 600 steps leave its one-demo SFT at 2% (README, SFT calibration)
    p.add_argument("--sft-steps", nargs="*", default=["long=1500"], help="per-suite SFT steps (others: 600)")
    p.add_argument("--episodes-per-task", type=int, default=50)
    p.add_argument("--out", default="runs/suites")
    p.add_argument("overrides", nargs="*", help="RL config overrides for every run")
    a = p.parse_args()
    suites = [s.strip() for s in a.suites.split(",")]
    steps = {k: int(v) for k, v in (x.split("=", 1) for x in a.sft_steps)}
    out = Path(a.out)
    results: dict[str, dict[int, dict[str, float]]] = {}
    for suite in suites:
        for seed in (int(x) for x in a.seeds.split(",")):
            opts = QuickstartOptions(env=EnvConfig.from_mapping({"name": "tabletop", "suite": suite}),
                                     out=str(out / f"{suite}_seed{seed}"), iterations=a.iterations,
                                     algo=a.algo, config=a.config,
                                     sft_steps=steps.get(suite, 600), episodes_per_task=a.episodes_per_task,
                                     seed=seed, overrides=list(a.overrides))
            res = run_quickstart(opts, say=print)
            key = f"eval/{suite}/success_rate"
            row = {"sft1": 100 * res.rows["sft1"][key], "rl": 100 * res.rows["rl"][key],
                   "minutes": res.minutes.get("total", 0.0), "iterations": res.history[-1]["iteration"]}
            held = f"eval/{suite}_heldout/success_rate"
            if held in res.rows["rl"]:
                row.update(heldout_sft1=100 * res.rows["sft1"][held], heldout_rl=100 * res.rows["rl"][held])
            results.setdefault(suite, {})[seed] = row
            print(json.dumps({"suite": suite, "seed": seed, **row}), flush=True)
    shown = [o for o in a.overrides if not o.startswith(("eval.", "num_threads", "checkpoint_every", "device"))]
    extra = f", {' '.join(shown)}" if shown else ""  # the recipe's changes, not the bookkeeping
    md = table(results, suites, f"{a.algo.upper()} + Flow-SDE{extra}")
    write_text_atomic(out / "table.md", "\n".join(md) + "\n")
    write_text_atomic(out / "results.json", json.dumps(results, indent=2))
    print("\n".join(md))


if __name__ == "__main__":
    main()
