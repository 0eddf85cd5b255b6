"""Green-VLA's staged training on the built-in world: the table of the README.

    python bench/greenvla_table.py --out runs/greenvla --seeds 0,1,2

Runs ``reinforge stages`` (configs/tabletop_stages_flow.yaml: target widowx, R0 on franka + scara + widowx
demonstrations in the unified space, R1 on the widowx's, R2 = PPO with Flow-SDE) for every seed, sharing one set of
demonstrations, and the zero-padded ablation (R0 -> R1 with ``policy.unified_mask=false``) for every seed; then
prints success rates (greedy, ``episodes_per_task`` per task on the target) as mean +- std over seeds. Every run is
resumable: rerunning skips finished stages. Extra ``key=value`` arguments override the stages config.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from reinforge.config import load_config
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
    (out / "table.json").write_text(json.dumps({"seeds": {str(s): results[s] for s in seeds}, "padded": {str(s): r for s, r in padded.items()}},
                                               indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
