"""World-model RL with verified rewards (VLA-RFT, METHODS.md section 6) on the built-in world: the paper's two
claims, measured.

From one set of expert demonstrations per task (``--demos``):

1. world model          ``reinforge wm train`` on the demonstrations (its held-out metrics go in the table notes)
2. Base SFT (short)     flow policy, ``--sft-steps`` steps
3. Base SFT (5x)        the same, five times longer
4. + world-model RL     GRPO in the world model from (2), ``--iterations`` iterations, ZERO simulator steps
5. sim PPO (reference)  PPO (Flow-SDE preset) in the real simulator from (2), the same number of iterations

every row evaluated greedily in the simulator, nominal and under the seven perturbation conditions
(object / goal / robot-initial-state, minor and major, and all three combined at the major level), with the
simulator steps and the wall-clock each row used. Also: the verified reward's agreement with true success
(worldmodel/verify.py). Every stage is reused when its output exists, so a killed run resumes.

    python bench/wm_table.py --out runs/wmrl          # the README's table (seed 0)
    python bench/wm_table.py --out runs/wmrl --seeds 0,1,2

Writes OUT/results.jsonl (one line per row, seed), OUT/reward_agreement.json and OUT/table.md; prints the table.
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
from reinforge.train.quickstart import CONFIG_DIR, record_or_reuse_demos, resolve_config
from reinforge.train.rl import RLConfig, RLTrainer
from reinforge.train.sft import SFTConfig, SFTTrainer
from reinforge.worldmodel.train import WMTrainConfig, WMTrainer

ROWS = ("sft_short", "sft_long", "wm_rl", "sim_ppo")
LABELS = {"sft_short": "Base SFT ({s} steps)", "sft_long": "Base SFT, 5x longer ({l} steps)",
          "wm_rl": "+ world-model RL ({n} GRPO iterations)", "sim_ppo": "+ PPO in the simulator ({n} iterations)"}
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

    seconds = timed(out, run)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    steps = max(int(r.get("progress/env_steps", 0)) for r in rows)
    return seconds, steps


def success(policy_dir: Path, suite: str, perturb: str, episodes: int) -> float:
    env = EnvConfig(suite=suite, options={"perturb": perturb})
    policy = load_pretrained(policy_dir).eval()
    return evaluate(lambda e: policy, env, episodes_per_task=episodes, image_size=policy.config.image_size).success_rate


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", default="spatial")
    p.add_argument("--demos", type=int, default=50, help="expert demonstrations per task (SFT and world model)")
    p.add_argument("--wm-steps", type=int, default=2000)
    p.add_argument("--sft-steps", type=int, default=300, help="the short SFT; the long one is 5x")
    p.add_argument("--iterations", type=int, default=30, help="RL iterations of both RL rows")
    p.add_argument("--seeds", default="0")
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
    results_file = out / "results.jsonl"
    done = {}
    if results_file.is_file():
        for line in results_file.read_text().splitlines():
            r = json.loads(line)
            if r.get("episodes_per_task") == a.episodes_per_task and r.get("iterations") == a.iterations:
                done[(r["row"], r["seed"])] = r
    for seed in seeds:
        run = out / f"seed{seed}"
        run.mkdir(exist_ok=True)
        t_short = sft(run / "sft_short", data, seed, a.sft_steps)
        short = run / "sft_short" / "policy"
        t_long = sft(run / "sft_long", data, seed, 5 * a.sft_steps)
        t_wmrl, imagined = rl(run / "wm_rl", a.wm_config, [
            f"init={short}", f"out={run / 'wm_rl'}", f"env.model={wm_dir}", f"cotrain.data={data}",
            f"env.suite={a.suite}", f"seed={seed}", f"iterations={a.iterations}"])
        t_ppo, sim_steps = rl(run / "sim_ppo", "tabletop_ppo_flow_sde", [
            f"init={short}", f"out={run / 'sim_ppo'}", f"env.suite={a.suite}", f"seed={seed}",
            f"iterations={a.iterations}"])
        f = out / "reward_agreement.json"
        if seed == seeds[0] and (not f.is_file() or "spearman_wm_mae_only_success" not in f.read_text()):
            agreement(out, wm_dir, short, a.agreement_demos)
        cost = {"sft_short": (t_short, 0, 0), "sft_long": (t_long, 0, 0),
                "wm_rl": (t_short + t_wm + t_wmrl, 0, imagined), "sim_ppo": (t_short + t_ppo, sim_steps, 0)}
        policies = {"sft_short": short, "sft_long": run / "sft_long" / "policy", "wm_rl": run / "wm_rl" / "policy",
                    "sim_ppo": run / "sim_ppo" / "policy"}
        for cond in filter(None, a.reevaluate.split(",")):
            for row in ROWS:
                if (row, seed) in done:
                    say(f"re-evaluating {row} seed {seed} under {cond}")
                    done[(row, seed)]["success"][cond] = 100 * success(
                        policies[row], a.suite, "" if cond == "nominal" else cond, a.episodes_per_task)
            fsutil.write_text_atomic(results_file, "".join(json.dumps(r) + "\n" for r in done.values()))
        for row in ROWS:
            if (row, seed) in done:
                continue
            rates = {}
            for cond in conditions:
                say(f"evaluating {row} seed {seed} under {cond or 'nominal'}")
                rates[cond or "nominal"] = 100 * success(policies[row], a.suite, cond, a.episodes_per_task)
            wall, sim, imag = cost[row]
            r = {"row": row, "seed": seed, "success": rates, "train_s": wall, "sim_steps": sim, "imagined_steps": imag,
                 "episodes_per_task": a.episodes_per_task, "iterations": a.iterations}
            done[(row, seed)] = r
            with results_file.open("a") as f:
                f.write(json.dumps(r) + "\n")
    notes = {"demo_steps": demo_steps, "demos_s": t_demos, "wm_s": t_wm}
    lines = table(done, seeds, conditions, a, out, notes)
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def agreement(out: Path, wm_dir: Path, policy_dir: Path, demos: int) -> None:
    from reinforge.worldmodel.verify import reward_agreement

    say("verified reward vs true success")
    wm_env = make_env("worldmodel", suite="", num_envs=64, model=str(wm_dir), start="first")
    res = reward_agreement(load_pretrained(policy_dir).eval(), wm_env, demos=demos, samples=4, horizon=16)
    (out / "reward_agreement.json").write_text(json.dumps(res, indent=1))


def table(done: dict, seeds: list[int], conditions: list[str], a: argparse.Namespace, out: Path,
          notes: dict) -> list[str]:
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
    for row in ROWS:
        label = LABELS[row].format(s=a.sft_steps, l=5 * a.sft_steps, n=a.iterations)
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
