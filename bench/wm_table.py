"""World-model RL with verified rewards (VLA-RFT) on the built-in world: the paper's two claims, measured with
its own settings.

From one set of expert demonstrations per task (``--demos``):

0. calibration          the short SFT's length: flow SFT for each of ``--calibrate`` step counts (first seed),
                        greedy success on the ``val`` bank; the shortest reaching ``--target`` (VLA-RFT starts
                        from a policy near saturation, ~75-80%) is used for every seed
1. world model          ``reinforge wm train`` on the demonstrations (its held-out metrics go in the notes)
2. Base SFT             flow policy, the calibrated steps
3. Base SFT, longer     the same, ``--long-factor`` times longer (the paper's baseline: SFT trained far longer)
4. + world-model RL     GRPO in the world model from (2) (``configs/tabletop_wm_grpo_flow.yaml``: summed
                        Flow-Noise log-prob, KL-adaptive lr) for up to ``--iterations`` iterations, stopped earlier
                        once the imagined return plateaus (``--plateau-window``); ZERO simulator steps
5. sim PPO (optional)   PPO (Flow-SDE preset) in the simulator from (2), ``--sim-ppo-iterations`` (0 = skipped)

every row evaluated greedily in the simulator on the ``eval`` bank, nominal and under the seven perturbation
conditions (object / goal / robot-initial-state, minor and major, and all three combined at the major level),
with the simulator steps and the wall-clock each row used. Also: the verified reward's agreement with true
success (worldmodel/verify.py). Every stage is reused when its output exists, so a killed run resumes.

    python bench/wm_table.py --out runs/wmrl --seeds 0,1,2

Writes OUT/results.jsonl (one line per row and seed), OUT/calibration.json, OUT/reward_agreement.json and
OUT/table.md; prints the table. Once every row has every seed it writes RESULTS/wm_rl.json (success per condition
and seed, the paper's claims as paired verdicts) and RESULTS/wm_rl_cost.json (iterations run, imagined steps and
minutes per seed); then run ``reinforge results``. The runs must come from one commit of a clean tree.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from reinforge import fsutil
from reinforge.config import load_config
from reinforge.envs import EnvConfig, make_env
from reinforge.eval import evaluate
from reinforge.policies import load_pretrained
from reinforge.provenance import machine_line, runs_provenance
from reinforge.results import command_line, write_result
from reinforge.train.quickstart import CONFIG_DIR, record_or_reuse_demos, resolve_config
from reinforge.train.rl import RLConfig, RLTrainer
from reinforge.train.sft import SFTConfig, SFTTrainer
from reinforge.worldmodel.train import WMTrainConfig, WMTrainer

ROWS = ("sft_short", "sft_long", "wm_rl", "sim_ppo")
LABELS = {"sft_short": "Base SFT ({s} steps)", "sft_long": "Base SFT, {f}x longer ({l} steps)",
          "wm_rl": "+ world-model RL (GRPO, up to {n} iterations)",
          "sim_ppo": "+ PPO in the simulator ({p} iterations)"}
CONDITIONS = ("", "object_minor", "object_major", "goal_minor", "goal_major", "robot_minor", "robot_major",
              "combined_major")


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def timed(out: Path, fn) -> float:
    """Run ``fn`` unless ``out/time.json`` records it done; the seconds it took (measured once, then read)."""
    f = out / "time.json"
    if f.is_file():
        return float(json.loads(f.read_text())["seconds"])
    t0 = time.perf_counter()
    fn()
    s = time.perf_counter() - t0
    f.write_text(json.dumps({"seconds": s}))
    return s


def sft(out: Path, data: Path, seed: int, steps: int) -> float:
    overrides = [f"data={data}", f"out={out}", f"steps={steps}", f"seed={seed}", "policy.num_steps=4",
                 "eval_episodes_per_task=1"]
    say(f"SFT {steps} steps -> {out}")
    return timed(out, lambda: SFTTrainer(load_config(SFTConfig, CONFIG_DIR / "tabletop_sft_flow.yaml",
                                                     overrides)).run(progress=False))


def rl(out: Path, config: str, overrides: list[str]) -> tuple[float, int]:
    """Train (or reuse) an RL run; (seconds, env steps of its rollouts)."""
    base = ["eval.every=0", "eval.final_episodes_per_task=1", "eval.heldout=false", "eval.videos=0"]
    say(f"{config} -> {out}")

    def run() -> None:
        with RLTrainer(load_config(RLConfig, resolve_config(config), base + overrides)) as trainer:
            trainer.run(progress=False)

    timed(out, run)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    steps = max(int(r.get("progress/env_steps", 0)) for r in rows)
    # the trainer's own training clock (kept in its checkpoints, so a resumed run counts every segment)
    return 60 * max(float(r.get("time/train_min", 0.0)) for r in rows), steps


def success(policy_dir: Path, suite: str, perturb: str, episodes: int, bank: str = "eval") -> float:
    env = EnvConfig(suite=suite, options={"perturb": perturb})
    policy = load_pretrained(policy_dir).eval()
    return evaluate(lambda e: policy, env, episodes_per_task=episodes, image_size=policy.config.image_size,
                    bank=bank, seed=0).success_rate


def calibrate(out: Path, data: Path, suite: str, seed: int, candidates: list[int], target: float,
              episodes: int) -> int:
    """The shortest SFT (of ``candidates``) whose greedy success on the ``val`` bank reaches ``target`` (else the
    longest); each measurement kept in OUT/calibration.json."""
    f = out / "calibration.json"
    cal = json.loads(f.read_text()) if f.is_file() else {}
    for steps in sorted(candidates):
        key = f"{steps}@{episodes}"
        if key not in cal:
            sft(out / f"seed{seed}" / f"sft_{steps}", data, seed, steps)
            cal[key] = {"steps": steps, "seed": seed, "bank": "val", "episodes_per_task": episodes,
                        "success_rate": success(out / f"seed{seed}" / f"sft_{steps}" / "policy", suite, "",
                                                episodes, bank="val")}
            fsutil.write_text_atomic(f, json.dumps(cal, indent=1))
        say(f"calibration: SFT {steps} steps -> {100 * cal[key]['success_rate']:.1f}% on the val bank")
        if cal[key]["success_rate"] >= target:
            return steps
    return max(candidates)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", default="spatial")
    p.add_argument("--demos", type=int, default=50, help="expert demonstrations per task (SFT and world model)")
    p.add_argument("--wm-steps", type=int, default=2000)
    p.add_argument("--sft-steps", type=int, default=0, help="the base SFT's steps (0 = calibrated on val)")
    p.add_argument("--calibrate", default="500,1000,1500,2000", help="SFT step counts tried on the val bank")
    p.add_argument("--target", type=float, default=0.75, help="val success the base SFT must reach")
    p.add_argument("--long-factor", type=int, default=5, help="the longer SFT baseline's steps / the base's")
    p.add_argument("--iterations", type=int, default=400, help="world-model GRPO iterations at most (the paper's)")
    p.add_argument("--plateau-window", type=int, default=25,
                   help="stop world-model RL once the mean imagined return of the last N iterations does not "
                        "exceed that of the N before (0 = run every iteration)")
    p.add_argument("--sim-ppo-iterations", type=int, default=0, help="the simulator-PPO reference row (0 = none)")
    p.add_argument("--results", default="results", help="where wm_rl.json and wm_rl_cost.json go")
    p.add_argument("--allow-dirty", action="store_true", help="accept runs made from a tree with local changes")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--episodes-per-task", type=int, default=50, help="greedy episodes per task and condition")
    p.add_argument("--conditions", default=",".join(c or "nominal" for c in CONDITIONS))
    p.add_argument("--wm-config", default="tabletop_wm_grpo_flow", help="the world-model RL config")
    p.add_argument("--agreement-demos", type=int, default=100, help="demonstrations scored for reward agreement")
    p.add_argument("--reevaluate", default="", help="conditions to evaluate again for rows already in results.jsonl "
                                                    "(after a change to the evaluation or the policy's inference)")
    p.add_argument("--out", default="runs/wmrl")
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(x) for x in a.seeds.split(",")]
    conditions = ["" if c == "nominal" else c for c in a.conditions.split(",")]
    t_demos = time.perf_counter()
    data = record_or_reuse_demos(EnvConfig(suite=a.suite), out / f"demos_{a.demos}", a.demos, say)
    t_demos = time.perf_counter() - t_demos
    demo_steps = int(sum(int(e["length"]) for e in
                         (json.loads(x) for x in (data / "meta" / "episodes.jsonl").read_text().splitlines())))
    wm_dir = out / "wm"
    say(f"world model {a.wm_steps} steps -> {wm_dir}")
    if not (wm_dir / "model" / "split.json").is_file():
        WMTrainer(load_config(WMTrainConfig, None, [f"data={data}", f"out={wm_dir}", f"steps={a.wm_steps}"])).run(
            progress=False)
    t_wm = float(json.loads((wm_dir / "model" / "split.json").read_text()).get("train_s", 0.0))
    if not a.sft_steps:
        a.sft_steps = calibrate(out, data, a.suite, seeds[0], [int(x) for x in a.calibrate.split(",")], a.target,
                                a.episodes_per_task)
        say(f"base SFT: {a.sft_steps} steps (calibrated on the val bank, seed {seeds[0]})")
    rows_run = [r for r in ROWS if r != "sim_ppo" or a.sim_ppo_iterations]
    results_file = out / "results.jsonl"
    done = {}
    if results_file.is_file():
        for line in results_file.read_text().splitlines():
            r = json.loads(line)
            if (r.get("episodes_per_task"), r.get("iterations"), r.get("sft_steps")) == (
                    a.episodes_per_task, a.iterations, a.sft_steps):
                done[(r["row"], r["seed"])] = r
    plateau = ["plateau.metric=rollout/return", f"plateau.window={a.plateau_window}"] if a.plateau_window else []
    for seed in seeds:
        run = out / f"seed{seed}"
        run.mkdir(exist_ok=True)
        short_dir, long_dir = run / f"sft_{a.sft_steps}", run / f"sft_{a.long_factor * a.sft_steps}"
        t_short = sft(short_dir, data, seed, a.sft_steps)
        short = short_dir / "policy"
        t_long = sft(long_dir, data, seed, a.long_factor * a.sft_steps)
        wm_run = run / f"wm_rl_from{a.sft_steps}"
        t_wmrl, imagined = rl(wm_run, a.wm_config, [
            f"init={short}", f"out={wm_run}", f"env.model={wm_dir}", f"cotrain.data={data}",
            f"env.suite={a.suite}", f"seed={seed}", f"iterations={a.iterations}", *plateau])
        t_ppo, sim_steps = (0.0, 0) if not a.sim_ppo_iterations else rl(
            run / f"sim_ppo_from{a.sft_steps}", "tabletop_ppo_flow_sde", [
                f"init={short}", f"out={run / f'sim_ppo_from{a.sft_steps}'}", f"env.suite={a.suite}",
                f"seed={seed}", f"iterations={a.sim_ppo_iterations}"])
        f = out / "reward_agreement.json"
        if seed == seeds[0] and (not f.is_file() or "spearman_wm_mae_only_success" not in f.read_text()):
            agreement(out, wm_dir, short, a.agreement_demos)
        cost = {"sft_short": (t_short, 0, 0), "sft_long": (t_long, 0, 0),
                "wm_rl": (t_short + t_wm + t_wmrl, 0, imagined), "sim_ppo": (t_short + t_ppo, sim_steps, 0)}
        policies = {"sft_short": short, "sft_long": long_dir / "policy", "wm_rl": wm_run / "policy",
                    "sim_ppo": run / f"sim_ppo_from{a.sft_steps}" / "policy"}
        for cond in filter(None, a.reevaluate.split(",")):
            for row in rows_run:
                if (row, seed) in done:
                    say(f"re-evaluating {row} seed {seed} under {cond}")
                    done[(row, seed)]["success"][cond] = 100 * success(
                        policies[row], a.suite, "" if cond == "nominal" else cond, a.episodes_per_task)
            fsutil.write_text_atomic(results_file, "".join(json.dumps(r) + "\n" for r in done.values()))
        for row in rows_run:
            if (row, seed) in done:
                continue
            rates = {}
            for cond in conditions:
                say(f"evaluating {row} seed {seed} under {cond or 'nominal'}")
                rates[cond or "nominal"] = 100 * success(policies[row], a.suite, cond, a.episodes_per_task)
            wall, sim, imag = cost[row]
            r = {"row": row, "seed": seed, "success": rates, "train_s": wall, "sim_steps": sim, "imagined_steps": imag,
                 "episodes_per_task": a.episodes_per_task, "iterations": a.iterations, "sft_steps": a.sft_steps,
                 "iterations_run": iterations_run(wm_run) if row == "wm_rl" else None, "policy": str(policies[row])}
            done[(row, seed)] = r
            with results_file.open("a") as f:
                f.write(json.dumps(r) + "\n")
    notes = {"demo_steps": demo_steps, "demos_s": t_demos, "wm_s": t_wm}
    lines = table(done, seeds, conditions, a, out, notes, rows_run)
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if all((row, s) in done for row in rows_run for s in seeds):
        for path in write_results(done, seeds, conditions, a, out, wm_dir, rows_run):
            say(f"wrote {path}")
    return 0


def iterations_run(run: Path) -> int:
    """The RL iterations a run made (fewer than asked where a plateau stopped it)."""
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return max(int(r.get("step", 0)) for r in rows if "rollout/return" in r)


def write_results(done: dict, seeds: list[int], conditions: list[str], a: argparse.Namespace, out: Path,
                  wm_dir: Path, rows_run: list[str]) -> list[Path]:
    runs = [Path(done[(row, s)]["policy"]).parent for row in rows_run for s in seeds] + [wm_dir]
    prov = runs_provenance(runs, allow_dirty=a.allow_dirty)
    labels = {row: LABELS[row].format(s=a.sft_steps, f=a.long_factor, l=a.long_factor * a.sft_steps,
                                      n=a.iterations, p=a.sim_ppo_iterations) for row in rows_run}
    names = [c or "nominal" for c in conditions]
    rows = [{"label": f"{c}: {labels[row]}", "values": [done[(row, s)]["success"][c] / 100 for s in seeds]}
            for c in names for row in rows_run]
    comparisons = []
    for c in names:
        comparisons.append({"claim": f"world-model RL beats the {a.long_factor}x longer SFT ({c})",
                            "better": f"{c}: {labels['wm_rl']}", "worse": f"{c}: {labels['sft_long']}"})
        comparisons.append({"claim": f"world-model RL lifts its start ({c})", "better": f"{c}: {labels['wm_rl']}",
                            "worse": f"{c}: {labels['sft_short']}"})
    cal = json.loads((out / "calibration.json").read_text()) if (out / "calibration.json").is_file() else {}
    picked = [v for v in cal.values() if v["steps"] == a.sft_steps]
    calib = (f" The base SFT's length was chosen on the `val` bank (seed {picked[0]['seed']}, "
             f"{picked[0]['episodes_per_task']} episodes per task): " + ", ".join(
                 f"{v['steps']} steps {100 * v['success_rate']:.1f}%" for v in sorted(cal.values(),
                                                                                      key=lambda v: v["steps"]))
             + f"; the shortest reaching {100 * a.target:.0f}% is used.") if picked else ""
    command = command_line("bench/wm_table.py", sys.argv[1:])
    common = dict(command=command, commit=prov["commit"], date=prov["date"][:10], machine=machine_line(prov),
                  seeds=seeds, tuned_on="val")
    paths = [write_result(
        a.results, "wm_rl", title=f"World-model RL (VLA-RFT) on `{a.suite}`: nominal and perturbed",
        description=(f"{a.demos} expert demonstrations per task train the world model ({a.wm_steps} steps) and the "
                     f"flow policies. From the base SFT, GRPO in the world model with VLA-RFT's settings "
                     f"(`configs/tabletop_wm_grpo_flow.yaml`: 16 starts x 16 samples, Flow-Noise log-prob summed "
                     f"over the denoising steps, KL-adaptive lr, the KL-gated flow-matching anchor) for up to "
                     f"{a.iterations} iterations, stopped once the mean imagined return of {a.plateau_window} "
                     f"iterations no longer exceeds that of the {a.plateau_window} before; zero simulator steps. "
                     f"Every policy evaluated greedily in the simulator on the `eval` bank (evaluation seed 0), "
                     f"nominal and under each perturbation (`env.perturb`).{calib} VLA-RFT's own numbers (LIBERO "
                     f"average): 400 world-model iterations reach 91.1%, its SFT baseline trained for 150K "
                     f"iterations 86.6%; under combined perturbations it gains 3.0 points or more."),
        bank="eval", episodes_per_cell=a.episodes_per_task * 10, unit="percent", rows=rows,
        comparisons=comparisons, order=50, **common)]
    wm_s = float(json.loads((wm_dir / "model" / "split.json").read_text()).get("train_s", 0.0))
    cost_rows = [{"label": "world-model GRPO iterations run", "values": [
                     float(done[("wm_rl", s)]["iterations_run"]) for s in seeds]},
                 {"label": "imagined steps (thousands)", "values": [
                     done[("wm_rl", s)]["imagined_steps"] / 1e3 for s in seeds]},
                 *({"label": f"{labels[row]}: training minutes (incl. what it starts from)",
                    "values": [done[(row, s)]["train_s"] / 60 for s in seeds]} for row in rows_run)]
    paths.append(write_result(
        a.results, "wm_rl_cost", title="World-model RL: iterations, imagined steps and minutes",
        description=(f"What each row of the table above cost, per seed. The world model itself took "
                     f"{wm_s / 60:.1f} minutes to train (shared by every seed; included in the world-model RL "
                     f"row's minutes)."), bank="eval", episodes_per_cell=a.episodes_per_task * 10,
        unit="number", measure="counts and minutes", rows=cost_rows, order=51, **common))
    return paths


def agreement(out: Path, wm_dir: Path, policy_dir: Path, demos: int) -> None:
    from reinforge.worldmodel.verify import reward_agreement

    say("verified reward vs true success")
    wm_env = make_env("worldmodel", suite="", num_envs=64, model=str(wm_dir), start="first")
    res = reward_agreement(load_pretrained(policy_dir).eval(), wm_env, demos=demos, samples=4, horizon=16)
    (out / "reward_agreement.json").write_text(json.dumps(res, indent=1))


def table(done: dict, seeds: list[int], conditions: list[str], a: argparse.Namespace, out: Path,
          notes: dict, rows_run: list[str]) -> list[str]:
    def cell(row: str, cond: str) -> str:
        vals = [done[(row, s)]["success"][cond] for s in seeds if cond in done.get((row, s), {}).get("success", {})]
        if not vals:
            return "-"
        note = "" if len(vals) == len(seeds) else f" ({len(vals)} seed{'s' if len(vals) > 1 else ''})"
        if len(vals) == 1:
            return f"{vals[0]:.1f}{note}"
        return f"{statistics.mean(vals):.1f} +- {statistics.stdev(vals):.1f}{note}"

    def cost(row: str) -> str:
        r = [done[(row, s)] for s in seeds if (row, s) in done]
        if not r:
            return "- | - | -"
        mean = statistics.mean
        return (f"{mean(x['sim_steps'] for x in r) / 1e3:.0f}k | {mean(x['imagined_steps'] for x in r) / 1e3:.0f}k | "
                f"{mean(x['train_s'] for x in r) / 60:.1f}")

    names = [c or "nominal" for c in conditions]
    head = "| row | " + " | ".join(names) + " | sim steps (RL) | imagined steps | train min |"
    spread = (f"{len(seeds)} seeds: mean +- std over training seeds of the SFT and RL stages, the same demonstrations "
              "and world model; a cell with fewer seeds says so" if len(seeds) > 1 else "1 seed")
    lines = [f"Greedy success (%) on `{a.suite}`, {a.episodes_per_task} episodes per task and condition "
             f"({spread}); {a.demos} demos per task "
             f"({notes['demo_steps'] / 1e3:.0f}k simulator steps, shared by every row)", "", head,
             "|" + "---|" * (len(names) + 4)]
    for row in rows_run:
        label = LABELS[row].format(s=a.sft_steps, f=a.long_factor, l=a.long_factor * a.sft_steps, n=a.iterations,
                                   p=a.sim_ppo_iterations)
        lines.append(f"| {label} | " + " | ".join(cell(row, c) for c in names) + f" | {cost(row)} |")
    f = out / "reward_agreement.json"
    if f.is_file():
        r = json.loads(f.read_text())
        lines += ["", f"Verified reward vs true success ({r['rollouts']} sampled rollouts of the short-SFT policy from "
                      f"{r['demos']} demonstrations' initial states, first {r['horizon']} actions; success "
                      f"{100 * r['success_rate']:.1f}%): Spearman world-model reward ~ success "
                      f"{r['spearman_wm_success']:.3f}, oracle (real frames) reward ~ success "
                      f"{r['spearman_oracle_success']:.3f}, world-model ~ oracle {r['spearman_wm_oracle']:.3f} "
                      f"(within a demonstration's group of {r['samples']}: {r['spearman_wm_oracle_within_group']:.3f}; "
                      f"world-model reward ~ success within a group: {r['spearman_wm_success_within_group']:.3f} over "
                      f"the {r['groups_wm_success_within']} groups with mixed outcomes). The reward's parts alone ~ "
                      "success: "
                      f"MAE {r['spearman_wm_mae_only_success']:.3f}, perceptual "
                      f"{r['spearman_wm_perceptual_only_success']:.3f} (oracle MAE alone "
                      f"{r['spearman_oracle_mae_only_success']:.3f})."]
    wm = out / "wm" / "report" / "wm_eval.json"
    if wm.is_file():
        s = json.loads(wm.read_text())["summary"]
        H = int(s["horizon"])
        lines += ["", f"World model ({notes['wm_s'] / 60:.1f} min to train, {a.wm_steps} steps): held-out MAE "
                      f"@1 {s['model/mae@1']:.4f}, @{H} {s[f'model/mae@{H}']:.4f} (nothing-moves baseline "
                      f"{s['copy/mae@1']:.4f}, {s[f'copy/mae@{H}']:.4f}); SSIM @1 {s['model/ssim@1']:.3f}, @{H} "
                      f"{s[f'model/ssim@{H}']:.3f}; perceptual @{H} {s[f'model/perceptual@{H}']:.3f} (baseline "
                      f"{s[f'copy/perceptual@{H}']:.3f})."]
    return lines


if __name__ == "__main__":
    sys.exit(main())
