"""Why did the quickstart's seed-0 figure move? The same command, ``make quickstart`` (seed 0), on a fresh clone of
an older commit and of the current one, on one machine: if the older commit re-makes the figure its README
printed, the move is the code's, not the machine's or the thread count's.

Usage: git clone REPO old && (cd old && git checkout OLD && make quickstart); the same for the new commit; then
       python bench/quickstart_drift.py --old old --new new --printed-sft 0.198 --printed-rl 0.790
(the figures the old README printed for that commit). Writes ``results/quickstart_drift.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

from reinforge.fsutil import write_text_atomic
from reinforge.provenance import machine_line, provenance
from reinforge.results import result_record

RUN = Path("runs/quickstart/spatial_ppo_flow")


def summary(clone: Path) -> tuple[str, dict]:
    data = json.loads((clone / RUN / "summary.json").read_text())
    if data.get("provenance", {}).get("commit"):  # the commit the run was made on (recorded since provenance)
        return data["provenance"]["commit"], data
    commit = subprocess.run(["git", "-C", str(clone), "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()
    return commit, data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", required=True, help="a clone at the older commit, with its quickstart run")
    ap.add_argument("--new", required=True, help="a clone at the current commit, with its quickstart run")
    ap.add_argument("--printed-sft", type=float, required=True, help="the SFT figure the old README printed")
    ap.add_argument("--printed-rl", type=float, required=True, help="the + RL figure the old README printed")
    ap.add_argument("--printed-date", default="2026-11-26")
    ap.add_argument("--also", nargs="*", default=[], help="LABEL=RUN_DIR: more runs' SFT row (e.g. other threads)")
    ap.add_argument("--results", default="results")
    a = ap.parse_args()
    (old_c, old), (new_c, new) = summary(Path(a.old)), summary(Path(a.new))
    key = "eval/spatial/success_rate"
    prov = new.get("provenance") or provenance()
    rows = [{"label": f"{old_c[:7]}, as its README printed it ({a.printed_date})", "values": [a.printed_sft]},
            {"label": f"{old_c[:7]}, as its README printed it: + RL", "values": [a.printed_rl]},
            {"label": f"{old_c[:7]}, re-run here: SFT (1 demo)", "values": [old["sft1"][key]]},
            {"label": f"{old_c[:7]}, re-run here: + RL", "values": [old["rl"][key]]},
            {"label": f"{new_c[:7]}, here: SFT (1 demo)", "values": [new["sft1"][key]]},
            {"label": f"{new_c[:7]}, here: + RL", "values": [new["rl"][key]]}]
    rows[0]["label"] += ": SFT (1 demo)"
    for item in a.also:
        label, run = item.rsplit("=", 1)
        extra = json.loads((Path(run) / "summary.json").read_text())
        rows.append({"label": f"{label}: SFT (1 demo)", "values": [extra["sft1"][key]]})
    rec = result_record(
        title="The quickstart's seed 0 on an older and on the current commit", order=12, bank="eval",
        episodes_per_cell=500, unit="percent", seeds=[0], rows=rows,
        command="make quickstart (seed 0) on a fresh clone of each commit",
        commit=f"{old_c[:10]} and {new_c[:10]}", date=prov["date"][:10], machine=machine_line(prov),
        description=("Greedy success on spatial's fixed evaluation states (the `eval` bank; the older commit had "
                     "only that bank and the training one, with the same states) before and after 60 PPO + Flow-SDE "
                     "iterations. Both commits ran with 2 torch threads (the older one's default on this 2-core "
                     "machine, the newer one's pinned `--threads 2`)."))
    Path(a.results).mkdir(parents=True, exist_ok=True)
    write_text_atomic(Path(a.results) / "quickstart_drift.json", json.dumps(rec, indent=2) + "\n")
    print(json.dumps({"old": old.get("rl"), "new": new.get("rl")}, default=str)[:2000])


if __name__ == "__main__":
    main()
