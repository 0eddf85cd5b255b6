"""Green-VLA safety monitors (arXiv 2602.00919) of one SFT'd policy on the built-in world, as two tables.

1. Fit (or reuse) the policy's OOD detector and progress head on its demonstrations (``--data``) into
   OUT/monitors (``reinforge monitor fit``).
2. (a) OOD: greedy episodes with ``end_on_success=False`` and no stopping rule (every episode lasts the time
   limit, so nominal and shifted episodes make as many policy calls) in the nominal env and under each shift:
   the visual / dynamics domains real, real-camera, real-colour, real-noise, the major initial-state
   perturbations of objects, robot and both, and optionally other suites (``--other-suites goal``). Per shift:
   the AUROC of episode scores (max over calls), nominal vs shifted, the flag rate of shifted episodes and
   calls; and the nominal episodes' own flag rates.
   (b) Stop: in the nominal env, success / mean length / stop rate / "undone" successes (reached the goal at
   some chunk, not at the end) without the progress head (episodes run to the limit) and with its stop.
Every evaluation is stored in OUT/results.jsonl and reused when the same policy, monitors and settings come
again, so a killed run resumes.

    python bench/monitor_table.py --policy runs/sft/policy --data runs/demos_spatial --suite spatial \\
        --episodes-per-task 10 --out runs/monitor

Writes OUT/results.jsonl, OUT/table.md and OUT/summary.json; prints the tables and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from reinforge.data import DemoDataset
from reinforge.envs import EnvConfig
from reinforge.monitor import (
    TABLETOP_SHIFTS,
    MonitoredResult,
    ProgressConfig,
    auroc,
    evaluate_monitored,
    fit_monitors,
    load_monitors,
    shifted_env_config,
)
from reinforge.monitor.features import policy_fingerprint
from reinforge.policies import load_pretrained


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def monitors_for(policy, a: argparse.Namespace, out: Path):
    """The policy's monitors under OUT/monitors: reused when fitted on these weights, else fitted now."""
    folder = out / "monitors"
    fp = policy_fingerprint(policy)
    try:
        progress, ood = load_monitors(folder)
        if progress is not None and ood is not None and ood.meta.get("policy_fingerprint") == fp \
                and progress.meta.get("policy_fingerprint") == fp:
            say(f"reusing the monitors in {folder}")
            return progress, ood
    except ValueError:
        pass
    say(f"fitting the OOD detector and the progress head on {a.data} -> {folder}")
    ds = DemoDataset.load(a.data, expect_image_size=policy.config.image_size)
    summary = fit_monitors(policy, ds, folder, progress_config=ProgressConfig(steps=a.progress_steps))
    say(f"fitted: {json.dumps(summary)}")
    return load_monitors(folder)


class Results:
    """OUT/results.jsonl: one evaluation per line, keyed by its name and every setting it depends on."""

    def __init__(self, path: Path):
        self.path, self.rows = path, {}
        if path.is_file():
            for line in path.read_text().splitlines():
                if line.strip():
                    r = json.loads(line)
                    self.rows[r["key"]] = r

    def get_or_run(self, key: str, run) -> dict[str, Any]:
        if key not in self.rows:
            row = {"key": key, **run().to_dict()}
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            self.rows[key] = row
        return self.rows[key]


def run_all(policy, progress, ood, a: argparse.Namespace, results: Results) -> dict[str, dict[str, Any]]:
    """Every evaluation of the tables: nominal without / with the stop, and each shift without it."""
    base = EnvConfig(suite=a.suite)
    shifts: dict[str, dict[str, Any]] = {k: v for k, v in TABLETOP_SHIFTS.items() if k in a.shifts.split(",")}
    shifts.update({f"suite:{s}": {"suite": s} for s in a.other_suites.split(",") if s})
    tag = (f"{policy_fingerprint(policy)}:{ood.threshold:.6f}:{progress.meta['train_loss']:.6f}:"
           f"{a.episodes_per_task}:{a.max_steps}")
    common = dict(episodes_per_task=a.episodes_per_task, max_envs=a.max_envs, max_episode_steps=a.max_steps)
    out = {}
    for name, shift, stop in [("nominal", {}, False), ("nominal+stop", {}, True),
                              *[(n, s, False) for n, s in shifts.items()]]:
        key = f"{name}|{tag}" + (f"|{a.stop_threshold}:{a.stop_patience}" if stop else "")
        env = shifted_env_config(base, shift)

        def run(env=env, stop=stop, name=name) -> MonitoredResult:
            say(f"evaluating {name} ({a.episodes_per_task} episodes per task)")
            return evaluate_monitored(policy, env, progress=progress if stop else None, ood=ood,
                                      stop_threshold=a.stop_threshold, stop_patience=a.stop_patience, **common)

        out[name] = results.get_or_run(key, run)
    return out


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def ood_table(rows: dict[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    nominal = rows["nominal"]
    lines = ["| condition | AUROC vs nominal | flagged episodes | flagged calls | median episode score |",
             "|---|---:|---:|---:|---:|"]
    summary: dict[str, Any] = {}
    for name, r in rows.items():
        if name == "nominal+stop":
            continue
        scores = sorted(r["ood_scores"])
        a = None if name == "nominal" else auroc(torch.tensor(nominal["ood_scores"]), torch.tensor(r["ood_scores"]))
        summary[name] = {"auroc": a, "flag_rate": r["ood_flag_rate"], "call_flag_rate": r["ood_call_flag_rate"]}
        lines.append(f"| {name} | {'-' if a is None else f'{a:.3f}'} | {pct(r['ood_flag_rate'])} | "
                     f"{pct(r['ood_call_flag_rate'])} | {scores[len(scores) // 2]:.2f} |")
    return "\n".join(lines), summary


def stop_table(rows: dict[str, dict[str, Any]], a: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    lines = ["| nominal env, end_on_success=False | success (at the end) | mean length | stopped | success at "
             "some chunk | undone successes |", "|---|---:|---:|---:|---:|---:|"]
    summary = {}
    for name, label in (("nominal", "no stop (runs to the time limit)"),
                        ("nominal+stop", f"progress-head stop (>= {a.stop_threshold}, {a.stop_patience} calls)")):
        r = rows[name]
        summary[name] = {k: r[k] for k in ("success_rate", "mean_length", "stop_rate", "ever_success_rate",
                                           "undone_success_rate")}
        lines.append(f"| {label} | {pct(r['success_rate'])} | {r['mean_length']:.1f} | {pct(r['stop_rate'])} | "
                     f"{pct(r['ever_success_rate'])} | {pct(r['undone_success_rate'])} |")
    return "\n".join(lines), summary


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", required=True, help="an SFT'd policy folder")
    p.add_argument("--data", required=True, help="the demonstrations it was trained on")
    p.add_argument("--suite", default="spatial")
    p.add_argument("--episodes-per-task", type=int, default=10)
    p.add_argument("--shifts", default=",".join(TABLETOP_SHIFTS), help="comma list of " + ", ".join(TABLETOP_SHIFTS))
    p.add_argument("--other-suites", default="", help="comma list of suites as extra shifts, e.g. goal")
    p.add_argument("--max-steps", type=int, default=None, help="episode time limit (default: the suite's)")
    p.add_argument("--max-envs", type=int, default=100)
    p.add_argument("--progress-steps", type=int, default=400)
    p.add_argument("--stop-threshold", type=float, default=0.9)
    p.add_argument("--stop-patience", type=int, default=2)
    p.add_argument("--out", default="runs/monitor")
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    policy = load_pretrained(a.policy).eval()
    progress, ood = monitors_for(policy, a, out)
    rows = run_all(policy, progress, ood, a, Results(out / "results.jsonl"))
    t_ood, s_ood = ood_table(rows)
    t_stop, s_stop = stop_table(rows, a)
    fit = {"ood": {"threshold": ood.threshold, **{k: ood.meta.get(k) for k in ("heldout_flag_rate", "shrinkage")}},
           "progress": {k: progress.meta.get(k) for k in ("val_mse", "baseline_mse", "val_end_accuracy")}}
    md = (f"## OOD detection ({a.suite}, {a.episodes_per_task} episodes per task; threshold {ood.threshold:.2f} = "
          f"{ood.meta.get('quantile', 0.99)} quantile of held-out demo frames)\n\n{t_ood}\n\n"
          f"## Stopping with the progress head (held-out MSE {progress.meta['val_mse']:.4f}, predict-the-mean "
          f"{progress.meta['baseline_mse']:.4f})\n\n{t_stop}\n")
    (out / "table.md").write_text(md)
    summary = {"suite": a.suite, "episodes_per_task": a.episodes_per_task, "ood": s_ood, "stop": s_stop, "fit": fit}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(md)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
