"""One-demonstration SFT on every built-in suite, over seeds: the starting points of RL, as the quickstart and the
suite table make them, evaluated greedily on the ``eval`` bank (50 episodes per task = 500 per cell).

For each suite and seed it records (or reuses) one expert demo per task and fine-tunes the flow policy
(``configs/tabletop_sft_flow.yaml``) in the quickstart's folder ``runs/quickstart/SUITE_ppo_flow[_seedN]/``, the
very policy ``reinforge quickstart --suite SUITE --seed N`` starts RL from (a finished one is reused, so the spatial
row equals the quickstart's SFT row), with the quickstart's torch threads. Each measurement is kept in
``runs/sft_calibration/measurements.json``, so a re-run with more suites or seeds measures only what is missing.
Writes ``results/sft_calibration.json``.

Usage: python bench/sft_calibration.py [--suites spatial,object,goal,long] [--seeds 0,1,2]
       [--steps long=1500] [--threads 2] [--results results]
then ``reinforge results``. (About 50 minutes for the four suites and three seeds on a 2-core CPU.)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from reinforge.envs import EnvConfig
from reinforge.eval import evaluate
from reinforge.fsutil import write_text_atomic
from reinforge.policies import load_pretrained
from reinforge.provenance import machine_line
from reinforge.results import write_result
from reinforge.train.quickstart import QuickstartOptions, record_or_reuse_demos, sft_or_reuse

SUITES = ("spatial", "object", "goal", "long")
DEFAULT_STEPS = {"long": 1500}  # the suite table's calibration (bench/suites_table.py); others 600


def measure(suite: str, seed: int, steps: int, threads: int, episodes: int) -> dict:
    opts = QuickstartOptions(env=EnvConfig(suite=suite), seed=seed, sft_steps=steps, threads=threads)
    out = opts.out_dir
    demos = record_or_reuse_demos(opts.env, out / "demos_1", 1, print)
    policy_dir = sft_or_reuse(demos, "flow", steps, out / "sft_1demo", "cpu", print, seed, threads)
    policy = load_pretrained(policy_dir).eval()
    # as the RL trainer's evaluation before RL: the run's seed, up to 500 envs at once, the eval bank
    r = evaluate(lambda e: policy, opts.env, episodes_per_task=episodes, image_size=policy.config.image_size,
                 seed=seed, bank="eval", max_envs=500)
    return {"success_rate": r.success_rate, "per_task": r.per_task, "policy": str(policy_dir)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suites", default=",".join(SUITES))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", nargs="*", default=[f"{k}={v}" for k, v in DEFAULT_STEPS.items()],
                    help="per-suite SFT steps, e.g. long=1500 (others: 600)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--episodes-per-task", type=int, default=50)
    ap.add_argument("--results", default="results")
    a = ap.parse_args()
    suites, seeds = a.suites.split(","), [int(s) for s in a.seeds.split(",")]
    steps = {**{s: 600 for s in suites}, **{k: int(v) for k, v in (x.split("=") for x in a.steps)}}
    torch.set_num_threads(a.threads)
    cache_file = Path("runs/sft_calibration/measurements.json")
    cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    runs = {}
    for suite in suites:
        for seed in seeds:
            key = f"{suite}/{seed}/{steps[suite]}/{a.episodes_per_task}/{a.threads}"
            if key not in cache:
                cache[key] = measure(suite, seed, steps[suite], a.threads, a.episodes_per_task)
                cache_file.parent.mkdir(parents=True, exist_ok=True)
                write_text_atomic(cache_file, json.dumps(cache, indent=1))
            runs[(suite, seed)] = cache[key]
    for k, v in runs.items():
        print(json.dumps({"suite": k[0], "seed": k[1], **v}))
    rows = [{"label": f"{s} (1 demo per task, {steps[s]} steps)", "values": [runs[(s, n)]["success_rate"]
                                                                             for n in seeds]} for s in suites]
    rows.append({"label": "average", "values": [sum(runs[(s, n)]["success_rate"] for s in suites) / len(suites)
                                                for n in seeds]})
    # the commit each policy was trained on (a reused quickstart run may predate this script's commit)
    provs = {k: json.loads((Path(v["policy"]).parent / "provenance.json").read_text()) for k, v in runs.items()}
    if any(p["dirty"] for p in provs.values()):
        raise SystemExit("a policy was trained from a tree with local changes: commit and re-run it")
    by_commit: dict[str, list[str]] = {}
    for (suite, _), p in provs.items():
        names = by_commit.setdefault(p["commit"][:10], [])
        if suite not in names:
            names.append(suite)
    commit = next(iter(by_commit)) if len(by_commit) == 1 else ", ".join(
        f"{c} ({' '.join(names)})" for c, names in by_commit.items())
    prov = next(iter(provs.values()))
    note = ""
    if len(by_commit) > 1:  # say whether the code that trains and evaluates these policies differs between them
        import subprocess

        commits = sorted({p["commit"] for p in provs.values()})
        paths = ["src/reinforge/train/sft.py", "src/reinforge/policies", "src/reinforge/data", "src/reinforge/envs",
                 "src/reinforge/eval", "src/reinforge/configs/tabletop_sft_flow.yaml"]
        same = all(subprocess.run(["git", "diff", "--quiet", commits[0], c, "--", *paths]).returncode == 0
                   for c in commits[1:])
        note = (" The policies were trained on the commits named; " + (
            "the SFT, policy, data, env and evaluation code is identical in them." if same else
            "the SFT, policy, data, env or evaluation code DIFFERS between them (`git diff` on those paths)."))
    write_result(
        a.results, "sft_calibration", title="One-demonstration SFT on every suite (the starting points of RL)",
        order=20, bank="eval",
        episodes_per_cell=a.episodes_per_task * 10, unit="percent", seeds=seeds, rows=rows, tuned_on="eval",
        command=f"python bench/sft_calibration.py --suites {a.suites} --seeds {a.seeds}",
        commit=commit, date=max(p["date"] for p in provs.values())[:10],
        machine=machine_line(prov),
        description=(
            "The flow policy fine-tuned on one expert demonstration per task (`configs/tabletop_sft_flow.yaml`, SFT "
            "seed = the column's seed), greedy success on the `eval` bank: the policies the quickstart and the suite "
            "table start RL from (the spatial row is the quickstart's SFT row). The suites' SFT steps and the "
            "`object` / `long` redesigns were calibrated on the `eval` bank before `val` existed." + note))


if __name__ == "__main__":
    main()
