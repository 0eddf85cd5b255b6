"""DataQA's defect detection on defects it was not tuned on: per seed, fresh expert demonstrations and fresh
injected defects (``reinforge corrupt`` with that seed), scored by the shipped thresholds (``configs/dataqa.yaml``,
set on the seed-0 defects of ``bench/dataqa_table.py``). Writes ``results/dataqa_detection.json`` (recall and
precision of the rules meant for each defect, false positives on clean episodes, per seed).

Usage: python bench/dataqa_detection.py [--seeds 1,2,3] [--per-task 20] [--out runs/dataqa_detection]
then ``reinforge results`` to regenerate the docs. (About a minute per seed on a 2-core CPU.)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from reinforge.data import DemoDataset
from reinforge.data.corrupt import DEFECTS, corrupt_dataset
from reinforge.data.dataqa import dataqa_report, load_dataqa_config
from reinforge.data.record import record_demos
from reinforge.envs import EnvConfig
from reinforge.provenance import machine_line, provenance
from reinforge.results import write_result
from reinforge.train.quickstart import resolve_config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dataqa_table import DEFECT_RULES, precision_recall  # noqa: E402  (the same scoring as the table)

FRACTIONS = {"jitter": 0.2, "blur": 0.15, "idle": 0.15, "slow": 0.15, "fast": 0.15}


def measure(seed: int, a: argparse.Namespace) -> dict:
    out = Path(a.out) / f"seed{seed}"
    clean, bad = out / "clean", out / "corrupted"
    if not (bad / "meta" / "info.json").is_file():
        record_demos(EnvConfig(suite=a.suite), clean, per_task=a.per_task, seed=seed, overwrite=True)
        corrupt_dataset(clean, bad, seed=seed, overwrite=True, **FRACTIONS)
    report = dataqa_report(bad, load_dataqa_config(resolve_config(a.config)))
    counts = DemoDataset.load(bad, success_only=False).info["reinforge"]["corruption"]["counts"]
    return {"pr": precision_recall(report), "counts": counts}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="1,2,3", help="demo and defect seeds (the thresholds were set on seed 0)")
    ap.add_argument("--suite", default="spatial")
    ap.add_argument("--per-task", type=int, default=20)
    ap.add_argument("--config", default="dataqa")
    ap.add_argument("--out", default="runs/dataqa_detection")
    ap.add_argument("--results", default="results")
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    runs = {s: measure(s, a) for s in seeds}
    rows = []
    for d in DEFECTS:
        rules = ", ".join(DEFECT_RULES[d])
        rows.append({"label": f"{d}: recall ({rules})", "values": [runs[s]["pr"][d]["recall"] for s in seeds]})
        rows.append({"label": f"{d}: precision", "values": [runs[s]["pr"][d]["precision"] for s in seeds]})
    rows.append({"label": "clean episodes flagged (false positives)",
                 "values": [runs[s]["pr"]["none"]["false_positive_rate"] for s in seeds]})
    prov = provenance()
    injected = ", ".join(f"{d} {int(100 * f)}%" for d, f in FRACTIONS.items())
    write_result(
        a.results, "dataqa_detection", title="DataQA: defect detection on held-out defects", order=45, bank="train",
        episodes_per_cell=a.per_task * 10, unit="percent", measure="% of episodes", seeds=seeds, rows=rows,
        command=f"python bench/dataqa_detection.py --seeds {a.seeds} --per-task {a.per_task}",
        commit=prov["commit"] + ("-dirty" if prov["dirty"] else ""), date=prov["date"][:10],
        machine=machine_line(prov),
        description=(f"Per seed: {a.per_task} expert demonstrations per task of `{a.suite}` (recorded on the `train` "
                     f"bank with that seed's action noise) and injected defects on disjoint episodes ({injected}; "
                     "`reinforge corrupt --seed N`), scored by the shipped thresholds (`configs/dataqa.yaml`), which "
                     "were set on the seed-0 defects: these seeds are defects the thresholds never saw. Recall: "
                     "the share of a defect's episodes flagged by the rules meant for it; precision: the share of "
                     "episodes those rules flag that carry that defect (slow and fast share their rules). Cells "
                     "are over the episodes of one dataset (its size in the cell count)."))
    print(json.dumps({s: r["pr"] for s, r in runs.items()}))


if __name__ == "__main__":
    main()
