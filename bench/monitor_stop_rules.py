"""Stopping rules of a fitted progress head, compared on one policy (the nominal env, ``end_on_success=False``).

    python bench/monitor_stop_rules.py --policy runs/rlco/sft_sim_only/policy --monitors runs/monitor/monitors

Prints success at the episode's end, mean length, stop rate, success at some chunk and undone successes per rule
(``bench/monitor_table.py`` fits the monitors and reports the default rule next to no stopping).
"""

from __future__ import annotations

import argparse
import json
import sys

from reinforge.envs import EnvConfig
from reinforge.monitor import evaluate_monitored, load_monitors
from reinforge.policies import load_pretrained

# (label, progress threshold, end-probability threshold, patience); 1.0 turns a criterion off
RULES = [("progress >= 0.9, 2 calls (default)", 0.9, 0.5, 2), ("end prob >= 0.5, 2 calls", 1.0, 0.5, 2),
         ("end prob >= 0.8, 3 calls", 1.0, 0.8, 3), ("progress >= 0.97, 3 calls", 0.97, 1.0, 3)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", required=True)
    p.add_argument("--monitors", required=True)
    p.add_argument("--suite", default="spatial")
    p.add_argument("--episodes-per-task", type=int, default=10)
    a = p.parse_args()
    policy = load_pretrained(a.policy).eval()
    progress, _ = load_monitors(a.monitors)
    print(f"| stop rule ({a.suite}, {a.episodes_per_task} episodes per task) | success (at the end) | mean length | "
          "stopped | success at some chunk | undone successes |\n|---|---:|---:|---:|---:|---:|")
    out = {}
    for label, thr, end, patience in RULES:
        r = evaluate_monitored(policy, EnvConfig(suite=a.suite), progress=progress, stop_threshold=thr,
                               end_threshold=end, stop_patience=patience, episodes_per_task=a.episodes_per_task)
        out[label] = {k: getattr(r, k) for k in ("success_rate", "mean_length", "stop_rate", "ever_success_rate",
                                                 "undone_success_rate")}
        print(f"| {label} | {r.success_rate:.1%} | {r.mean_length:.1f} | {r.stop_rate:.1%} | "
              f"{r.ever_success_rate:.1%} | {r.undone_success_rate:.1%} |", flush=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
