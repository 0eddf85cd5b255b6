"""The quickstart over several seeds, written as a results file (``results/quickstart.json``; with
``--time-seeds`` also ``results/quickstart_time.json``) from which the README's quickstart table is generated.

Each seed runs the user's own command, ``reinforge quickstart --seed N`` (in a child process, exactly as typed),
or reuses a finished run of it, then reads its ``summary.json`` (success per bank, wall-clock minutes and the
run's provenance: commit, threads, versions). Refuses to write results from runs of different commits, or of a
tree with local changes, unless ``--allow-dirty``.

Usage: python bench/quickstart_seeds.py [--seeds 0,1,2] [--results results] [quickstart flags, e.g. --suite goal]
then ``reinforge results`` to regenerate the docs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from reinforge.provenance import machine_line
from reinforge.results import result_record, write_result


def run_dir(suite: str, seed: int) -> Path:
    return Path(f"runs/quickstart/{suite}_ppo_flow" + (f"_seed{seed}" if seed else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--suite", default="spatial")
    ap.add_argument("--results", default="results", help="folder for the results files")
    ap.add_argument("--allow-dirty", action="store_true", help="accept runs made from a tree with local changes")
    ap.add_argument("--reuse-only", action="store_true", help="do not run missing seeds, only collect")
    ap.add_argument("--time-seeds", default="", help="seeds whose wall clock to report in results/quickstart_time.json "
                                                     "(default: none); name only runs that had the machine to "
                                                     "themselves")
    a, extra = ap.parse_known_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    summaries = {}
    for seed in seeds:
        path = run_dir(a.suite, seed) / "summary.json"
        if not path.is_file() and not a.reuse_only:
            cmd = ["reinforge", "quickstart", "--suite", a.suite, "--seed", str(seed), *extra]
            print("running:", " ".join(cmd), flush=True)
            subprocess.run([Path(sys.executable).parent / "reinforge", *cmd[1:]], check=True)
        summaries[seed] = json.loads(path.read_text())
    prov = {s: m["provenance"] for s, m in summaries.items()}
    commits = {p["commit"] for p in prov.values()}
    if len(commits) != 1:
        sys.exit(f"the runs come from different commits {sorted(commits)}: re-run them on one commit")
    if any(p["dirty"] for p in prov.values()) and not a.allow_dirty:
        sys.exit("a run was made from a tree with local changes: commit, re-run, or pass --allow-dirty")
    first = prov[seeds[0]]
    s0 = summaries[seeds[0]]
    eps, iters = s0["episodes_per_task"], s0["iterations"]
    suite = a.suite
    cells = {"sft1": "SFT (1 demo)", "rl": f"+ RL (PPO + Flow-SDE, {iters} iterations)"}
    rows, comparisons = [], []
    for split, tag in (("", suite), ("_heldout", f"{suite} held-out")):
        key = f"eval/{suite}{split}/success_rate"
        if key not in s0["rl"]:
            continue
        for run, label in cells.items():
            rows.append({"label": f"{tag}: {label}", "values": [summaries[s][run][key] for s in seeds]})
        comparisons.append({"claim": f"RL lifts one-demo SFT ({tag})", "better": f"{tag}: {cells['rl']}",
                            "worse": f"{tag}: {cells['sft1']}"})
    extra_flags = " ".join(extra)
    common = dict(
        command=f"reinforge quickstart --suite {suite} --seed {{seed}}" + (f" {extra_flags}" if extra_flags else ""),
        commit=first["commit"], date=first["date"][:10], machine=machine_line(first), seeds=seeds)
    main_rec = result_record(
        title=f"Quickstart: PPO + Flow-SDE from one-demo SFT ({suite})", order=10, bank=s0["bank"],
        episodes_per_cell=eps * 10, unit="percent", rows=rows, comparisons=comparisons, tuned_on="eval",
        description=("`make quickstart` (= `reinforge quickstart`, seed 0) and seeds 1 and 2: one expert demo per "
                     "task, flow SFT, PPO + Flow-SDE (`configs/tabletop_ppo_flow_sde.yaml`), greedy success before "
                     "and after RL on the `eval` bank. The preset's settings were chosen on the `eval` bank before "
                     "the `val` bank existed; they are re-tuned on `val` in the RL-everywhere work."), **common)
    phases = (("total", "total (minutes)"), ("sft", "SFT"), ("eval_before", "evaluation before RL"),
              ("rl_rollouts", "RL rollouts"), ("rl_updates", "RL updates"), ("eval_periodic", "periodic evaluations"),
              ("eval_after", "evaluation after RL"))
    timed = [int(s) for s in a.time_seeds.split(",")] if a.time_seeds else []
    time_rec = None if not timed else result_record(
        title="Quickstart: where the wall clock goes (minutes)", order=11, bank=s0["bank"],
        episodes_per_cell=eps * 10, unit="number",
        rows=[{"label": label, "values": [summaries[s]["minutes"].get(k) for s in timed]} for k, label in phases],
        description=("Wall-clock minutes of each phase of the runs above, as the quickstart prints them (installs "
                     "not included), for the runs that had the machine to themselves. Timings depend on the machine."),
        **{**common, "seeds": timed})
    path = write_result(a.results, "quickstart", **main_rec)
    if time_rec is not None:
        write_result(a.results, "quickstart_time", **time_rec)
    print(f"wrote {path}" + (" and quickstart_time.json" if time_rec else "") + "; run `reinforge results` next")


if __name__ == "__main__":
    main()
