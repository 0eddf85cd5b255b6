"""The report folder of an RL run: success curves (PNG), a Markdown summary table and summary.json."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from reinforge.fsutil import write_text_atomic
from reinforge.train.logging import read_metrics

log = logging.getLogger(__name__)


def _curve(history: list[dict[str, float]], key: str) -> tuple[list[float], list[float]]:
    pts = [(h["iteration"], h[key]) for h in history if key in h]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_curves(out: Path, history: list[dict[str, float]], suite: str, title: str, bank: str = "eval",
                curve_bank: str = "eval") -> Path | None:
    """success_curve.png: greedy evaluation success (train tasks and held-out) on ``curve_bank`` (the periodic
    evaluations), the before / after points on ``bank``, and rollout success."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed; no plots (pip install matplotlib)")
        return None
    rows = read_metrics(out / "metrics.jsonl")
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    banks = [curve_bank] + ([bank] if bank != curve_bank else [])
    for b in banks:
        for key, label in ((f"{b}/{suite}/success_rate", f"{suite} (greedy, {b} bank)"),
                           (f"{b}/{suite}_heldout/success_rate", f"{suite} held-out (greedy, {b} bank)")):
            x, y = _curve(history, key)
            if x:
                ax[0].plot(x, [100 * v for v in y], marker="o", label=label, linestyle="-" if b == curve_bank else "")
    r = [(m["step"], m["rollout/success_rate"]) for m in rows if "rollout/success_rate" in m]
    if r:
        ax[0].plot([a for a, _ in r], [100 * b for _, b in r], alpha=0.5, label="rollouts (sampled)")
    ax[0].set(xlabel="RL iteration", ylabel="success %", ylim=(0, 100), title=title)
    ax[0].grid(alpha=0.3)
    ax[0].legend()
    x, y = _curve(history, f"{curve_bank}/{suite}/success_rate")
    minutes = [h["train_min"] for h in history if f"{curve_bank}/{suite}/success_rate" in h]
    ax[1].plot(minutes, [100 * v for v in y], marker="o")
    ax[1].set(xlabel="training wall-clock minutes (rollouts + updates)", ylabel="success %", ylim=(0, 100),
              title=f"success vs time ({curve_bank} bank)")
    ax[1].grid(alpha=0.3)
    fig.tight_layout()
    path = out / "report" / "success_curve.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def time_to(history: list[dict[str, float]], key: str, target: float) -> float | None:
    """Training minutes until the greedy success ``key`` first reached ``target`` (None if never)."""
    for h in history:
        if h.get(key, -1.0) >= target:
            return h["train_min"]
    return None


def write_report(out: str | Path, history: list[dict[str, float]], *, suite: str, algo: str,
                 policy_kind: str, bank: str = "eval", curve_bank: str = "eval") -> Path:
    """Write report/summary.md, report/summary.json and report/success_curve.png; returns the folder. The
    before / after table reads ``bank``'s metrics, the curve and the times to a success level ``curve_bank``'s."""
    out = Path(out)
    folder = out / "report"
    folder.mkdir(parents=True, exist_ok=True)
    first, last = history[0], history[-1]
    title = f"{algo.upper()} on the {policy_kind} policy, {suite}"
    plot_curves(out, history, suite, title, bank, curve_bank)
    lines = [f"# {title}", "",
             f"{int(last['iteration'])} iterations, {int(last['env_steps'])} env steps, "
             f"{last['train_min']:.1f} training minutes. Greedy success on the fixed initial states of the "
             f"`{bank}` bank ({int(first['episodes_per_task'])} / {int(last['episodes_per_task'])} episodes per task "
             "before / after).", "", "| split | before RL | after RL |", "|---|---|---|"]
    summary = {"suite": suite, "algo": algo, "policy": policy_kind, "iterations": int(last["iteration"]),
               "env_steps": int(last["env_steps"]), "train_min": last["train_min"], "bank": bank,
               "curve_bank": curve_bank}
    for split, key in (("train tasks", f"{bank}/{suite}"), ("held-out", f"{bank}/{suite}_heldout")):
        if f"{key}/success_rate" in last:
            b, a = first[f"{key}/success_rate"], last[f"{key}/success_rate"]
            lines.append(f"| {split} | {100 * b:.1f}% | {100 * a:.1f}% |")
            summary[f"{split.split()[0].replace('-', '')}_before"] = b
            summary[f"{split.split()[0].replace('-', '')}_after"] = a
    reached = []
    for pct in (50, 75, 90):
        t = time_to(history, f"{curve_bank}/{suite}/success_rate", pct / 100)
        summary[f"minutes_to_{pct}"] = t
        reached.append(f"{pct}%: {'not reached' if t is None else f'{t:.1f} min'}")
    lines += ["", f"Training minutes to greedy success ({curve_bank} bank) " + ", ".join(reached) + ".", "",
              "| task | before | after |", "|---|---|---|"]
    prefix = f"{bank}/{suite}/"
    tasks = [k for k in last if k.startswith(prefix) and k[len(prefix):] not in ("success_rate", "mean_length")]
    for k in tasks:  # in the evaluation's task order
        lines.append(f"| {k[len(prefix):]} | {100 * first.get(k, 0.0):.0f}% | {100 * last[k]:.0f}% |")
    lines += ["", "![success curve](success_curve.png)", ""]
    videos = sorted((folder / "videos").glob("*.mp4")) if (folder / "videos").is_dir() else []
    if videos:
        lines += ["Videos of the final policy: " + ", ".join(f"[{v.name}](videos/{v.name})" for v in videos), ""]
    write_text_atomic(folder / "summary.md", "\n".join(lines))
    write_text_atomic(folder / "summary.json", json.dumps({**summary, "history": history}, indent=2))
    return folder
