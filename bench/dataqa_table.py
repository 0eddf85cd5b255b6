"""DataQA + temporal alignment (Green-VLA, arXiv 2602.00919) on the built-in world: does filtering and aligning
corrupted demonstrations give back the success of clean ones?

1. clean       ``--per-task`` expert demonstrations per task of ``--suite``
2. corrupted   a copy with injected defects on disjoint episodes (``reinforge corrupt``; default 20% jitter, 15%
               blur, 15% idle, 15% recorded at 0.5x speed, 15% at 2x speed)
3. DataQA      the corrupted copy filtered with the shipped thresholds and aligned to one motion speed
               (``reinforge dataqa --out --align``)

An SFT policy (``--policy``, ``--sft-steps``) is trained on each and evaluated greedily in the simulator by its
final evaluation (``reinforge.eval.evaluate``, ``--episodes-per-task`` from the fixed evaluation states). The
table also gives DataQA's precision and recall per defect against the injected ground truth. Every stage is
reused when its output exists, so a killed run resumes.

    python bench/dataqa_table.py --out runs/dataqa                      # the README's table
    python bench/dataqa_table.py --out /tmp/dq --per-task 2 --sft-steps 20 --episodes-per-task 1 --image-size 32 \\
        policy.image_size=[32,32] policy.d_model=32 policy.heads=2 policy.fusion_layers=1 \\
        policy.channels=[16,16] batch_size=8                                # a smoke run

Writes OUT/results.json, OUT/dataqa_report/ (the corrupted copy's report), OUT/dataqa_precision_recall.json and
OUT/table.md; prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from reinforge import fsutil
from reinforge.config import load_config
from reinforge.data import DatasetError, DemoDataset
from reinforge.data.corrupt import DEFECTS, corrupt_dataset
from reinforge.data.dataqa import DataQAReport, dataqa_report, filter_dataset, load_dataqa_config, write_report
from reinforge.data.record import record_demos
from reinforge.envs import EnvConfig
from reinforge.train.logging import read_metrics
from reinforge.train.quickstart import CONFIG_DIR, resolve_config
from reinforge.train.sft import SFTConfig, SFTTrainer

ROWS = {"clean": "SFT on clean demos", "corrupted": "SFT on corrupted demos",
        "dataqa": "SFT on corrupted demos + DataQA filter + alignment"}
# the rules meant to catch each defect (precision / recall of DataQA per defect)
DEFECT_RULES = {"jitter": ("jitter",), "blur": ("sharpness",), "idle": ("idle",), "slow": ("speed", "duration"),
                "fast": ("speed", "duration")}


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def loadable(path: Path) -> bool:
    try:
        DemoDataset.load(path, success_only=False)
        return True
    except (DatasetError, ValueError):
        return False


def datasets(a: argparse.Namespace, out: Path) -> dict[str, Path]:
    """Record, corrupt and filter (or reuse) the three datasets."""
    paths = {row: out / f"demos_{row}" for row in ROWS}
    if not loadable(paths["clean"]):
        say(f"recording {a.per_task} demos per task of {a.suite} -> {paths['clean']}")
        record_demos(EnvConfig(suite=a.suite), paths["clean"], per_task=a.per_task, image_size=a.image_size,
                     seed=a.seed, overwrite=True)
    if not loadable(paths["corrupted"]):
        say(f"corrupting -> {paths['corrupted']}")
        corrupt_dataset(paths["clean"], paths["corrupted"], jitter=a.jitter, blur=a.blur, idle=a.idle, slow=a.slow,
                        fast=a.fast, seed=a.seed, overwrite=True)
    if not loadable(paths["dataqa"]):
        say(f"DataQA filter + alignment -> {paths['dataqa']}")
        res = filter_dataset(paths["corrupted"], paths["dataqa"], load_dataqa_config(resolve_config(a.config)),
                             align=True, overwrite=True)
        write_report(res.report, out / "dataqa_report")
    return paths


def sft_success(a: argparse.Namespace, data: Path, out: Path) -> float:
    """Train (or resume) an SFT policy on ``data`` and return the greedy success rate of its final evaluation
    (``--episodes-per-task`` per task, the 50 fixed evaluation states); a finished run is only read."""
    key = f"eval/{a.suite}/success_rate"
    final = [r for r in read_metrics(out / "metrics.jsonl") if r.get("step") == a.sft_steps and key in r]
    if (out / "policy" / "model.safetensors").is_file() and final:
        return float(final[-1][key])
    overrides = [f"data={data}", f"out={out}", f"steps={a.sft_steps}", f"seed={a.seed}", "eval_every=0",
                 f"eval_episodes_per_task={a.episodes_per_task}", *a.overrides]
    say(f"SFT {a.policy} policy {a.sft_steps} steps on {data.name} -> {out}, then evaluation")
    SFTTrainer(load_config(SFTConfig, CONFIG_DIR / f"tabletop_sft_{a.policy}.yaml", overrides)).run(progress=False)
    return float([r for r in read_metrics(out / "metrics.jsonl") if key in r][-1][key])


def precision_recall(report: DataQAReport) -> dict[str, dict[str, float | int | None]]:
    """Per defect: episodes, recall of its rules and of any rule, precision of its rules; and for clean episodes
    the false-positive rate."""
    rows = report.rows
    out: dict[str, dict[str, float | int | None]] = {}
    for defect in DEFECTS:
        mine = [r for r in rows if r.get("defect") == defect]
        rules = set(DEFECT_RULES[defect])
        targets = {d for d, rs in DEFECT_RULES.items() if rules & set(rs)}  # slow and fast share their rules
        by_rules = [r for r in rows if rules & set(r["flags"])]
        out[defect] = {
            "episodes": len(mine),
            "recall": sum(bool(rules & set(r["flags"])) for r in mine) / len(mine) if mine else None,
            "recall_any_rule": sum(bool(r["flags"]) for r in mine) / len(mine) if mine else None,
            "precision": sum(r.get("defect") in targets for r in by_rules) / len(by_rules) if by_rules else None}
    clean = [r for r in rows if r.get("defect") == "none"]
    out["none"] = {"episodes": len(clean), "false_positive_rate":
                   sum(bool(r["flags"]) for r in clean) / len(clean) if clean else None}
    return out


def table(a: argparse.Namespace, results: dict, pr: dict, counts: dict, paths: dict[str, Path]) -> list[str]:
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.0f}%"

    sizes = {row: DemoDataset.load(p, success_only=False) for row, p in paths.items()}
    lines = [f"Greedy success on `{a.suite}` ({a.episodes_per_task} episodes per task), {a.policy} policy, "
             f"{a.sft_steps} SFT steps, {a.per_task} demos per task, seed {a.seed}", "",
             "| training data | episodes | frames | success |", "|---|---|---|---|"]
    for row, label in ROWS.items():
        ds = sizes[row]
        lines.append(f"| {label} | {ds.num_episodes} | {ds.num_frames} | {pct(results.get(row))} |")
    lines += ["", "DataQA on the corrupted copy (precision / recall of the rules meant for each defect; "
                  "recall by any rule in brackets):", "",
              "| defect | episodes | rules | recall | precision |", "|---|---|---|---|---|"]
    for defect in DEFECTS:
        p = pr[defect]
        lines.append(f"| {defect} | {p['episodes']} | {', '.join(DEFECT_RULES[defect])} | {pct(p['recall'])} "
                     f"({pct(p['recall_any_rule'])}) | {pct(p['precision'])} |")
    lines.append(f"| none (clean) | {pr['none']['episodes']} | - | false positives: "
                 f"{pct(pr['none']['false_positive_rate'])} | - |")
    rec = sizes["dataqa"].info["reinforge"]["dataqa"]
    lines += ["", f"Filter: kept {rec['kept']} of {rec['episodes_in']} episodes ({rec['rescued_by_alignment']} "
                  f"too slow / fast ones repaired by alignment, {rec['resampled']} resampled in all); dropped per "
                  f"rule: {', '.join(f'{k} {v}' for k, v in rec['dropped_per_rule'].items() if v) or 'none'}. "
                  f"Injected: {', '.join(f'{k} {v}' for k, v in counts.items())}."]
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/dataqa")
    p.add_argument("--suite", default="spatial")
    p.add_argument("--per-task", type=int, default=20, help="expert demonstrations per task")
    p.add_argument("--sft-steps", type=int, default=1500)
    p.add_argument("--episodes-per-task", type=int, default=20, help="greedy evaluation episodes per task")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--policy", default="flow", choices=("flow", "token"))
    p.add_argument("--image-size", type=int, default=64, help="of the recorded demos (the policy's must match)")
    p.add_argument("--config", default="dataqa", help="DataQA thresholds (a YAML file or a shipped config name)")
    for name, default in (("jitter", 0.2), ("blur", 0.15), ("idle", 0.15), ("slow", 0.15), ("fast", 0.15)):
        p.add_argument(f"--{name}", type=float, default=default, help=f"fraction of episodes with {name} defects")
    p.add_argument("overrides", nargs="*", help="SFT config overrides, e.g. policy.d_model=32 batch_size=16")
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = datasets(a, out)
    results_file = out / "results.json"
    setup = {"policy": a.policy, "sft_steps": a.sft_steps, "episodes_per_task": a.episodes_per_task,
             "overrides": a.overrides}
    saved = json.loads(results_file.read_text()) if results_file.is_file() else {}
    results = saved.get("success", {}) if saved.get("setup") == setup else {}
    for row in ROWS:
        if row not in results:
            results[row] = sft_success(a, paths[row], out / f"sft_{row}_{a.policy}_{a.sft_steps}")
            fsutil.write_text_atomic(results_file, json.dumps({"setup": setup, "success": results}, indent=1))
    report = dataqa_report(paths["corrupted"], load_dataqa_config(resolve_config(a.config)))
    pr = precision_recall(report)
    counts = DemoDataset.load(paths["corrupted"], success_only=False).info["reinforge"]["corruption"]["counts"]
    lines = table(a, results, pr, counts, paths)
    fsutil.write_text_atomic(out / "table.md", "\n".join(lines) + "\n")
    fsutil.write_text_atomic(out / "dataqa_precision_recall.json", json.dumps(pr, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
