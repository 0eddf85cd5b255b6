"""Green-VLA's staged training on the built-in world: the table of the README.

    python bench/greenvla_table.py --out runs/greenvla --seeds 0,1,2

Runs ``reinforge stages`` (configs/tabletop_stages_flow.yaml: target widowx, R0 on franka + scara + widowx
demonstrations in the unified space, R1 on the widowx's, R2 = PPO with Flow-SDE) for every seed, sharing one set of
demonstrations, and the zero-padded ablation (R0 -> R1 with ``policy.unified_mask=false``) for every seed; then
prints success rates (greedy, ``episodes_per_task`` per task on the target) as mean +- std over seeds. Every run is
resumable: rerunning skips finished stages. Extra ``key=value`` arguments override the stages config.
Writes OUT/table.md, OUT/table.json and RESULTS/greenvla.json (every stage per seed, Green-VLA's claims as paired
verdicts); then run ``reinforge results``. The runs must come from one commit of a clean tree (``--allow-dirty``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from reinforge.config import load_config
from reinforge.provenance import machine_line, runs_provenance
from reinforge.results import command_line, write_result
from reinforge.train.quickstart import resolve_config
from reinforge.train.stages import STAGE_LABELS, STAGES, StagedPipeline, StagesConfig


def say(msg: str) -> None:
    print(msg, flush=True)


def run(out: Path, seed: int, overrides: list[str]) -> dict:
    cfg = load_config(StagesConfig, resolve_config("tabletop_stages_flow"),
                      [f"out={out}", f"seed={seed}", f"demos_dir={out.parent / 'demos'}", *overrides])
    return StagedPipeline(cfg, say=say).run()


def cell(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1%}"
    return f"{statistics.mean(values):.1%} +- {statistics.stdev(values):.1%} ({', '.join(f'{v:.1%}' for v in values)})"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/greenvla")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--no-ablation", action="store_true", help="skip the zero-padded unified space run")
    p.add_argument("--results", default="results", help="where greenvla.json goes")
    p.add_argument("--allow-dirty", action="store_true", help="accept runs made from a tree with local changes")
    p.add_argument("overrides", nargs="*", help="stages config overrides, e.g. r0_steps=1000")
    a = p.parse_args()
    out = Path(a.out)
    seeds = [int(s) for s in a.seeds.split(",")]
    results = {s: run(out / f"seed{s}", s, a.overrides) for s in seeds}
    ablation = [*a.overrides, "stages=[r0,r1]", "sft_overrides=[policy.unified_mask=false]"]
    padded = {} if a.no_ablation else {s: run(out / f"padded_seed{s}", s, ablation) for s in seeds}
    cfg = load_config(StagesConfig, resolve_config("tabletop_stages_flow"), a.overrides)
    rows = [f"| stage ({cfg.target}, {cfg.suite}; {cfg.episodes_per_task} greedy episodes per task) | success, "
            f"seeds {a.seeds} | mean length |", "|---|---|---|"]
    for k in STAGES:
        vals = [results[s][k]["success_rate"] for s in seeds if k in results[s]]
        lens = [results[s][k]["mean_length"] for s in seeds if k in results[s]]
        rows.append(f"| {STAGE_LABELS[k]} | {cell(vals)} | {statistics.mean(lens):.1f} |" if vals else
                    f"| {STAGE_LABELS[k]} | - | - |")
    if padded:
        for k in ("r0", "r1"):
            vals = [padded[s][k]["success_rate"] for s in seeds]
            lens = [padded[s][k]["mean_length"] for s in seeds]
            rows.append(f"| {STAGE_LABELS[k]}, zero-padded unified space (no mask) | {cell(vals)} | "
                        f"{statistics.mean(lens):.1f} |")
    table = "\n".join(rows)
    print(table)
    (out / "table.md").write_text(table + "\n")
    (out / "table.json").write_text(json.dumps({"seeds": {str(s): results[s] for s in seeds},
                                                "padded": {str(s): r for s, r in padded.items()}}, indent=2))
    path = write_results(out, results, padded, seeds, cfg, a)
    print(f"wrote {path}; run `reinforge results` next")
    return 0


def write_results(out: Path, results: dict, padded: dict, seeds: list[int], cfg: StagesConfig,
                  a: argparse.Namespace) -> Path:
    runs = [out / f"seed{s}" / k for s in seeds for k in results[s] if k in STAGES]
    runs += [out / f"padded_seed{s}" / k for s in padded for k in ("r0", "r1")]
    prov = runs_provenance(runs, allow_dirty=a.allow_dirty)
    labels = {"baseline": f"R1 alone: native-layout SFT on the {cfg.target}'s demos (no R0)",
              "r0": "R0 zero-shot: unified-space SFT on all three robots, acting as the target",
              "r1": "R0 -> R1: R0 fine-tuned on the target's demos",
              "r2": "R0 -> R1 -> R2: + PPO (Flow-SDE) in the target's env"}
    rows = [{"label": labels[k], "values": [results[s].get(k, {}).get("success_rate") for s in seeds]}
            for k in STAGES]
    if padded:
        rows += [{"label": f"{labels[k].split(':')[0]}, zero-padded unified space (no mask)",
                  "values": [padded.get(s, {}).get(k, {}).get("success_rate") for s in seeds]} for k in ("r0", "r1")]
    comparisons = [{"claim": "R0 -> R1 beats R1 alone (same gradient steps)", "better": labels["r1"],
                    "worse": labels["baseline"]},
                   {"claim": "R2 (RL alignment) lifts R0 -> R1", "better": labels["r2"], "worse": labels["r1"]}]
    if padded:
        comparisons += [{"claim": "the mask matters: masked R0 -> R1 beats zero-padded", "better": labels["r1"],
                         "worse": rows[-1]["label"]},
                        {"claim": "the mask matters at R0 (zero-shot)", "better": labels["r0"],
                         "worse": rows[-2]["label"]}]
    episodes = {results[s][k]["episodes"] for s in seeds for k in results[s] if k in STAGES}
    demos = ", ".join(f"{n} {robot}" for robot, n in cfg.demos.items())
    return write_result(
        a.results, "greenvla", title=f"Green-VLA stages on `{cfg.suite}`, target {cfg.target}",
        description=(f"`reinforge stages tabletop_stages_flow`: demonstrations per task {demos}; R0 {cfg.r0_steps} "
                     f"SFT steps in the 64-slot unified space on all robots' demos, R1 {cfg.r1_steps} steps on the "
                     f"target's, R2 PPO + Flow-SDE (`{' '.join(cfg.rl_overrides)}`); the baseline trains "
                     f"{cfg.baseline_steps or cfg.r0_steps + cfg.r1_steps} steps on the target's demos alone. Greedy "
                     f"success of each stage on the target, `eval` bank (evaluation seed 0); the run seed changes "
                     f"every training run, the demonstrations are shared. The PPO preset was tuned on the "
                     f"quickstart's `eval` bank (franka) before `val` existed."),
        command=command_line("bench/greenvla_table.py", sys.argv[1:]),
        commit=prov["commit"], date=prov["date"][:10], machine=machine_line(prov), bank="eval",
        episodes_per_cell=max(episodes), seeds=seeds, unit="percent", rows=rows, comparisons=comparisons,
        tuned_on="eval", order=40)


if __name__ == "__main__":
    sys.exit(main())
