"""Sim-real co-training (RL-Co, METHODS.md section 5) on the built-in world: the paper's table, on our domains.

For each number of REAL demonstrations per task (columns) and seed, with a fixed budget of SIM demonstrations:

1. real-only SFT              SFT on the real demos alone
2. SFT co-training            SFT on sim + real demos, half of every batch each (``data_weights``)
3. sim RL, beta = 0           PPO in sim from (2), no SFT term (--sampler: noise = Flow-Noise with the
                              reference's settings, sde = the Flow-SDE preset)
4. RL-Co, beta = 0.2          the same PPO with ``beta * L_SFT`` on a fresh real batch in every gradient step

every row evaluated greedily in the REAL domain (and in sim for reference) on the fixed evaluation states.
Real demonstrations come from the scripted expert in the real domain (they stand for teleoperation); the real
domain is never used for RL rollouts. Every stage is reused when its output exists, so a killed run resumes.

    python bench/rlco_table.py --real-demos 1,5,20 --seeds 0,1,2 --main 5 --sampler sde \
        --episodes-per-task 50 --sim-episodes-per-task 20 --out runs/rlco          # the README's table
    python bench/rlco_table.py --real-demos 5 --seeds 0 --main 5 --sampler noise \
        --episodes-per-task 50 --sim-episodes-per-task 20 --out runs/rlco          # + the Flow-Noise rows

Writes OUT/results.jsonl (one line per row, count and seed) and OUT/table.md; prints the table. With the main
count run on its seeds it also writes RESULTS/rlco.json (the real domain: every row per seed, with the paper's
claims as paired verdicts) and RESULTS/rlco_sim.json (the same policies in sim); then run ``reinforge results``.
All the runs behind them must come from one commit of a clean tree (``--allow-dirty`` to accept local changes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from reinforge.config import load_config
from reinforge.envs import EnvConfig
from reinforge.eval import evaluate
from reinforge.policies import load_pretrained
from reinforge.provenance import machine_line, runs_provenance
from reinforge.results import command_line, write_result
from reinforge.train.quickstart import CONFIG_DIR, record_or_reuse_demos, resolve_config
from reinforge.train.rl import RLConfig, RLTrainer
from reinforge.train.sft import SFTConfig, SFTTrainer

ROWS = ("real_only_sft", "cotrain_sft", "sim_rl_beta0", "rl_co")
LABELS = {"real_only_sft": "real-only SFT", "cotrain_sft": "SFT co-training (real + sim)",
          "sim_rl_beta0": "sim RL from co-trained SFT, beta = 0", "rl_co": "RL-Co (beta = {beta})"}


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sft(out: Path, data: list[Path], seed: int, steps: int) -> Path:
    if (out / "policy" / "config.json").is_file():
        return out / "policy"
    overrides = [f"data={json.dumps([str(d) for d in data])}", f"out={out}", f"steps={steps}", f"seed={seed}",
                 "policy.num_steps=4", "eval_episodes_per_task=1"]
    if len(data) > 1:
        overrides.append("data_weights=[0.5,0.5]")
    say(f"SFT on {', '.join(d.name for d in data)} ({steps} steps) -> {out}")
    SFTTrainer(load_config(SFTConfig, CONFIG_DIR / "tabletop_sft_flow.yaml", overrides)).run(progress=False)
    return out / "policy"


def rl(out: Path, init: Path, suite: str, seed: int, iterations: int, real: Path | None, beta: float,
       sampler: str = "noise") -> Path:
    if (out / "policy" / "config.json").is_file():
        return out / "policy"
    overrides = [f"init={init}", f"out={out}", f"env.suite={suite}", f"seed={seed}", f"iterations={iterations}",
                 "eval.every=0", "eval.final_episodes_per_task=1", "eval.heldout=false", "eval.videos=0"]
    overrides += ["ppo.epochs=2"] if sampler == "noise" else []  # the reference's; the SDE preset keeps its own
    if real is not None:
        overrides += [f"cotrain.data={real}", f"cotrain.beta={beta}", "cotrain.batch_size=16",
                      "cotrain.evaluate=false"]
    say(f"PPO (Flow-{sampler}) {iterations} iterations, {'beta=' + str(beta) if real else 'no SFT term'} -> {out}")
    with RLTrainer(load_config(RLConfig, resolve_config(f"tabletop_ppo_flow_{sampler}"), overrides)) as trainer:
        trainer.run(progress=False)
    return out / "policy"


def train_row(row: str, run: Path, seed: int, sim_data: Path, real_data: Path, a: argparse.Namespace) -> Path:
    """The policy of ``row`` (training what it needs, reusing what exists)."""
    if row == "real_only_sft":
        return sft(run / "sft_real", [real_data], seed, a.sft_steps)
    cotrained = sft(run / "sft_cotrain", [sim_data, real_data], seed, a.sft_steps)
    if row == "cotrain_sft":
        return cotrained
    tag = "" if a.sampler == "noise" else f"_{a.sampler}"
    if row.startswith("sim_rl_beta0"):
        return rl(run / f"rl_beta0{tag}", cotrained, a.suite, seed, a.iterations, None, 0.0, a.sampler)
    return rl(run / f"rl_co{tag}", cotrained, a.suite, seed, a.iterations, real_data, a.beta, a.sampler)


def success(policy_dir: Path | None, suite: str, domain: str, episodes: int) -> float:
    """Greedy success in ``domain`` of a policy folder (None: the scripted expert)."""
    env = EnvConfig(suite=suite, options={"domain": domain})
    if policy_dir is None:
        return evaluate(lambda e: e.make_expert(), env, episodes_per_task=episodes).success_rate
    policy = load_pretrained(policy_dir).eval()
    return evaluate(lambda e: policy, env, episodes_per_task=episodes, image_size=policy.config.image_size).success_rate


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", default="spatial")
    p.add_argument("--real-demos", default="1,5,20", help="real demonstrations per task (the columns)")
    p.add_argument("--sim-demos", type=int, default=50, help="sim demonstrations per task (fixed budget)")
    p.add_argument("--seeds", default="0,1,2", help="seeds at the main count (--main); the others use the first")
    p.add_argument("--main", type=int, default=None, help="the real-demo count that gets every seed "
                                                          "(default: the middle one)")
    p.add_argument("--beta", type=float, default=0.2)
    p.add_argument("--sft-steps", type=int, default=1500)
    p.add_argument("--iterations", type=int, default=30, help="PPO iterations of rows 3 and 4")
    p.add_argument("--sampler", default="noise", choices=("noise", "sde"),
                   help="PPO's flow likelihood: noise (Flow-Noise, the reference's settings) or sde (the Flow-SDE "
                        "preset); the RL rows of each are kept apart")
    p.add_argument("--episodes-per-task", type=int, default=50, help="greedy episodes per task in the real domain")
    p.add_argument("--sim-episodes-per-task", type=int, default=None,
                   help="greedy episodes per task in sim, the reference column (default: --episodes-per-task)")
    p.add_argument("--out", default="runs/rlco")
    p.add_argument("--results", default="results", help="where rlco.json and rlco_sim.json go")
    p.add_argument("--allow-dirty", action="store_true", help="accept runs made from a tree with local changes")
    p.add_argument("--ablate", action="store_true", help="also evaluate the sim-only SFT policy under each "
                                                         "component of the real shift alone")
    a = p.parse_args()
    if a.sim_episodes_per_task is None:
        a.sim_episodes_per_task = a.episodes_per_task
    out = Path(a.out)
    counts = [int(x) for x in a.real_demos.split(",")]
    seeds = [int(x) for x in a.seeds.split(",")]
    main_count = a.main if a.main is not None else counts[len(counts) // 2]
    results_file = out / "results.jsonl"
    done = {}
    if results_file.is_file():
        for line in results_file.read_text().splitlines():
            r = json.loads(line)
            # a row evaluated on another number of episodes is evaluated again (its trained policy is reused)
            if (r.get("episodes_per_task"), r.get("sim_episodes_per_task", r.get("episodes_per_task"))) == (
                    a.episodes_per_task, a.sim_episodes_per_task):
                done[(r["row"], r["real_demos"], r["seed"])] = r
    out.mkdir(parents=True, exist_ok=True)
    sim_env, real_env = EnvConfig(suite=a.suite), EnvConfig(suite=a.suite, options={"domain": "real"})
    t0 = time.perf_counter()
    sim_data = record_or_reuse_demos(sim_env, out / f"demos_sim_{a.sim_demos}", a.sim_demos, say)
    # calibration of the real domain: the scripted expert and the sim-only SFT policy in both domains
    for row in ("expert", "sim_only_sft"):
        if (row, 0, seeds[0]) not in done:
            folder = None if row == "expert" else sft(out / "sft_sim_only", [sim_data], seeds[0], a.sft_steps)
            r = {"row": row, "real_demos": 0, "seed": seeds[0], "sim_demos": a.sim_demos,
                 "episodes_per_task": a.episodes_per_task,
                 "sim_episodes_per_task": a.sim_episodes_per_task,
                 "real": success(folder, a.suite, "real", a.episodes_per_task),
                 "sim": success(folder, a.suite, "sim", a.sim_episodes_per_task), "policy": str(folder)}
            say(f"{row}: real {100 * r['real']:.1f}%, sim {100 * r['sim']:.1f}%")
            done[(row, 0, seeds[0])] = r
            with results_file.open("a") as f:
                f.write(json.dumps(r) + "\n")
    if a.ablate:
        from reinforge.envs.tabletop.domain import COMPONENTS

        for comp in COMPONENTS:
            row = f"ablate_{comp}"
            if (row, 0, seeds[0]) not in done:
                folder = sft(out / "sft_sim_only", [sim_data], seeds[0], a.sft_steps)
                r = {"row": row, "real_demos": 0, "seed": seeds[0], "sim_demos": a.sim_demos,
                     "episodes_per_task": a.episodes_per_task, "sim_episodes_per_task": a.sim_episodes_per_task,
                     "real": success(folder, a.suite, f"real-{comp}", a.episodes_per_task), "policy": str(folder)}
                say(f"sim-only SFT under real-{comp} alone: {100 * r['real']:.1f}%")
                done[(row, 0, seeds[0])] = r
                with results_file.open("a") as f:
                    f.write(json.dumps(r) + "\n")
    for n in [main_count] + [c for c in counts if c != main_count]:  # the main count's seeds first
        real_data = record_or_reuse_demos(real_env, out / f"demos_real_{n}", n, say)
        for seed in (seeds if n == main_count else seeds[:1]):
            run = out / f"real{n}_seed{seed}"
            for row in ROWS:
                if row in ("sim_rl_beta0", "rl_co") and a.sampler != "noise":
                    row = f"{row}_{a.sampler}"
                if (row, n, seed) in done:
                    continue
                folder = train_row(row, run, seed, sim_data, real_data, a)
                r = {"row": row, "real_demos": n, "seed": seed, "sim_demos": a.sim_demos,
                     "episodes_per_task": a.episodes_per_task, "sim_episodes_per_task": a.sim_episodes_per_task,
                     "real": success(folder, a.suite, "real", a.episodes_per_task),
                     "sim": success(folder, a.suite, "sim", a.sim_episodes_per_task), "policy": str(folder)}
                say(f"{row} real={n} seed={seed}: real {100 * r['real']:.1f}%, sim {100 * r['sim']:.1f}%")
                done[(row, n, seed)] = r
                with results_file.open("a") as f:
                    f.write(json.dumps(r) + "\n")
    lines = table(done, counts, a)
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    for path in write_results(done, main_count, seeds, a):
        say(f"wrote {path}")
    say(f"done in {(time.perf_counter() - t0) / 60:.1f} min (stages reused from earlier runs are not timed)")
    return 0


def write_results(done: dict, n: int, seeds: list[int], a: argparse.Namespace) -> list[Path]:
    """RESULTS/rlco.json (real domain) and rlco_sim.json (sim) for the main count ``n`` over ``seeds``."""
    rl_rows = [r if a.sampler == "noise" else f"{r}_{a.sampler}" for r in ROWS[2:]]
    rows = [*ROWS[:2], *rl_rows]
    runs = [Path(done[(r, n, s)]["policy"]).parent for r in rows for s in seeds if (r, n, s) in done]
    calib = [k for k in (("expert", 0, seeds[0]), ("sim_only_sft", 0, seeds[0])) if k in done]
    if len(runs) < len(rows) * len(seeds):
        return []  # not every row on every seed yet
    runs += [Path(done[k]["policy"]).parent for k in calib if k[0] != "expert"]
    prov = runs_provenance(runs, allow_dirty=a.allow_dirty)
    sampler = "Flow-SDE" if a.sampler == "sde" else "Flow-Noise"
    labels = {"real_only_sft": f"real-only SFT ({n} real demos/task)",
              "cotrain_sft": f"SFT co-training ({a.sim_demos} sim + {n} real demos/task)",
              rl_rows[0]: f"sim PPO ({sampler}, {a.iterations} its) from co-trained SFT, beta = 0",
              rl_rows[1]: f"RL-Co: the same PPO + beta * L_SFT on real demos, beta = {a.beta}"}
    extra = {"expert": "scripted expert (seed 0 only)",
             "sim_only_sft": f"SFT on {a.sim_demos} sim demos/task only (seed 0 only)"}
    command = command_line("bench/rlco_table.py", sys.argv[1:])
    paths = []
    for key, name, eps in (("real", "rlco", a.episodes_per_task), ("sim", "rlco_sim", a.sim_episodes_per_task)):
        rec_rows = [{"label": extra[k[0]], "values": [done[k][key], *[None] * (len(seeds) - 1)]} for k in calib]
        rec_rows += [{"label": labels[r], "values": [done[(r, n, s)][key] for s in seeds]} for r in rows]
        comparisons = [
            {"claim": "RL-Co beats SFT co-training", "better": labels[rl_rows[1]], "worse": labels["cotrain_sft"]},
            {"claim": "SFT co-training beats real-only SFT", "better": labels["cotrain_sft"],
             "worse": labels["real_only_sft"]},
            {"claim": "the SFT term helps: RL-Co beats sim RL with beta = 0", "better": labels[rl_rows[1]],
             "worse": labels[rl_rows[0]]},
            {"claim": "sim RL with beta = 0 still beats SFT co-training", "better": labels[rl_rows[0]],
             "worse": labels["cotrain_sft"]}]
        where = "the real domain (`domain: real`, never used for RL)" if key == "real" else "sim (reference)"
        paths.append(write_result(
            a.results, name, title=f"Sim-real co-training (RL-Co) on `{a.suite}`, evaluated in {key}",
            description=(f"RLinf-Co's recipe on the built-in world: {a.sim_demos} sim demonstrations per task and {n} "
                         f"'real' ones (the scripted expert in the shifted real domain), {a.sft_steps} SFT steps "
                         f"(co-training: half of every batch sim), then {a.iterations} PPO iterations in sim from "
                         f"the co-trained policy. Greedy success in {where}, {eps} episodes per task on the `eval` "
                         f"bank (evaluation seed 0); the run seed changes the SFT and RL runs. The PPO preset was "
                         f"tuned on the quickstart's `eval` bank before `val` existed."),
            command=command, commit=prov["commit"], date=prov["date"][:10], machine=machine_line(prov),
            bank="eval", episodes_per_cell=eps * 10, seeds=seeds, unit="percent", rows=rec_rows,
            comparisons=comparisons, tuned_on="eval", order=35 if key == "real" else 36))
    return paths


def table(done: dict, counts: list[int], a: argparse.Namespace) -> list[str]:
    def cell(row: str, n: int, key: str) -> str:
        vals = [100 * r[key] for (rw, c, _), r in sorted(done.items()) if rw == row and c == n]
        if not vals:
            return "-"
        if len(vals) == 1:
            return f"{vals[0]:.1f}"
        return f"{statistics.mean(vals):.1f} +- {statistics.stdev(vals):.1f} ({len(vals)} seeds)"

    head = "| row | " + " | ".join(f"{n} real/task: real | {n} real/task: sim" for n in counts) + " |"
    lines = [f"Greedy success (%) on `{a.suite}`, {a.episodes_per_task} episodes per task in the real domain, "
             f"{a.sim_episodes_per_task} in sim; {a.sim_demos} sim demos per task, {a.sft_steps} SFT steps, "
             f"{a.iterations} PPO iterations", ""]
    for row, label in (("expert", "scripted expert"), ("sim_only_sft", f"SFT on {a.sim_demos} sim demos/task")):
        if (row, 0) in {(k[0], k[1]) for k in done}:
            lines.append(f"- {label}: real {cell(row, 0, 'real')}, sim {cell(row, 0, 'sim')}")
    ablations = [k[0] for k in sorted(done) if k[0].startswith("ablate_")]
    if ablations:
        lines.append("- the same sim-only SFT policy under one component of the real shift at a time: " + ", ".join(
            f"{row[len('ablate_'):]} {cell(row, 0, 'real')}" for row in ablations))
    lines += ["", head, "|---|" + "---|---|" * len(counts)]
    for row in [r for r in ROWS] + [f"{r}_sde" for r in ROWS[2:]]:
        if not any(k[0] == row for k in done):
            continue
        label = LABELS[row.removesuffix("_sde")].format(beta=a.beta) + (
            " (PPO Flow-SDE)" if row.endswith("_sde") else " (PPO Flow-Noise)" if row in ROWS[2:] else "")
        lines.append(f"| {label} | " + " | ".join(f"{cell(row, n, 'real')} | {cell(row, n, 'sim')}"
                                                  for n in counts) + " |")
    return lines


if __name__ == "__main__":
    sys.exit(main())
