"""A throughput and cost model of reinforge's Ray layouts, fed with measured per-worker figures.

Inputs (seconds):
  c_env   one env step of one env in one process (simulation + rendering)
  o_call  the extra cost of one call to an env worker (serialisation, object store, scheduling)
  a, b    one policy call on n observations takes a + b * n on one inference engine
  u       the learner's update time per rollout sample (one policy call)

A synchronous on-policy iteration of B envs, K policy calls per env (chunks of H env steps):

  env worker step (B/N envs)        e = (B/N) * H * c_env + o_call
  one call, no pipelining           t = e + p(B/M)                         (p(n) = a + b n, M engines)
  S pipeline stages                 t = max(e + (S-1) * o_call,  S * p(B/(M S)))
                                    (one stage's env steps hide another's inference; the slower side sets the pace)
  rollout                           T_roll = K * t
  update on L learner GPUs          T_upd = B K u / (L * eff^log2(L))
  weight sync                       T_sync = bytes / bandwidth (per update)
  iteration                         T = T_roll + T_upd + T_sync;  env steps/s = B K H / T

The learner is the bottleneck once T_upd >= T_roll: more env workers then cut only T_roll and the iteration
time tends to T_upd (an asynchronous, one-step off-policy learner would give max(T_roll, T_upd) instead).
Workers beyond one node's cores add nodes; cost = T * (N * cpu_price * cpus_per_worker + GPUs * gpu_price).

    python bench/scaling_model.py --measure            # measure c_env, o_call, a, b here, then project
    python bench/scaling_model.py --bench rows.jsonl   # compare the model with `reinforge bench rl --ray --json`
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import dataclass, replace

import torch


@dataclass
class Figures:
    c_env: float = 4.5e-3  # s per env step (built-in world with step_delay_ms=4, 64x64, one process)
    o_call: float = 9e-3  # s per env-worker call (16 envs, 2 views of 64x64)
    a: float = 8e-3  # s per policy call
    b: float = 1.0e-3  # s per observation in a policy call
    u: float = 1.5e-3  # s of update per sample
    H: int = 4  # env steps per policy call (the presets' execute_steps)
    sync_mb: float = 0.6  # MB of weights sent per update (trainable parameters)
    bandwidth_mb_s: float = 1000.0


def step_time(f: Figures, B: int, N: int, M: int = 1, S: int = 1, ray: bool = True) -> float:
    o = f.o_call if ray else 0.0
    e = (B / N) * f.H * f.c_env + o
    if S == 1:
        return e + f.a + f.b * B / M
    return max(e + (S - 1) * o, S * (f.a + f.b * B / (M * S)))


def iteration(f: Figures, B: int, K: int, N: int, M: int = 1, S: int = 1, L: int = 1, eff: float = 0.9,
              ray: bool = True) -> dict[str, float]:
    t_roll = K * step_time(f, B, N, M, S, ray)
    t_env = K * ((B / N) * f.H * f.c_env + (f.o_call if ray else 0.0))  # the env workers' busy time
    t_inf = K * (S * f.a + f.b * B / M)  # the inference engines' busy time
    t_upd = B * K * f.u / (L * eff ** math.log2(L)) if L > 1 else B * K * f.u
    t_sync = f.sync_mb / f.bandwidth_mb_s if ray and M else 0.0
    total = t_roll + t_upd + t_sync
    bottleneck = max((t_env, "env"), (t_inf, "inference"), (t_upd, "learner"))[1]
    return {"rollout_s": t_roll, "update_s": t_upd, "iteration_s": total, "env_steps_per_s": B * K * f.H / total,
            "rollout_env_steps_per_s": B * K * f.H / t_roll, "env_s": t_env, "inference_s": t_inf,
            "bottleneck": bottleneck}


# ------------------------------------------------------------------------------------------------ measuring


def measure(B: int = 16, delay_ms: float = 4.0, num_cpus: int = 4) -> Figures:
    """c_env and o_call from the built-in world in process and in one Ray env worker; a and b from the token
    policy's act() at two batch sizes; u from one GRPO update (one thread, as the benchmark rows)."""
    from reinforge.distributed import RayInitConfig
    from reinforge.distributed.env_worker import EnvWorker
    from reinforge.distributed.remote_env import RemoteVecEnv
    from reinforge.distributed.runtime import init_ray
    from reinforge.envs import EnvConfig, make_env
    from reinforge.policies import PolicyConfig, make_policy

    torch.set_num_threads(1)
    cfg = EnvConfig(name="tabletop", suite="spatial", options={"step_delay_ms": delay_ms})
    kw = {"split": "train", "init_bank": "train", "image_size": (64, 64), "seed": 0, "max_episode_steps": 10_000}
    H, reps = 4, 10
    actions = torch.zeros(B, H, 7)

    def per_call(env) -> float:
        env.reset(torch.zeros(B, dtype=torch.long), torch.arange(B))
        env.step_chunk(actions)
        t0 = time.perf_counter()
        for _ in range(reps):
            env.step_chunk(actions)
        return (time.perf_counter() - t0) / reps

    local = per_call(make_env(cfg, num_envs=B, **kw))
    ray = init_ray(RayInitConfig(num_cpus=num_cpus))
    worker = ray.remote(EnvWorker).options(num_cpus=1).remote(cfg, kw, [B], 0, 1)
    remote_env = RemoteVecEnv([worker], [[B]])
    remote = per_call(remote_env)
    remote_env.close()
    policy = make_policy(PolicyConfig(kind="token", action_dim=7, state_dim=8, num_views=2)).eval()
    spec = make_env(cfg, num_envs=1, **kw).spec
    policy.bind_env(spec)

    def act_time(n: int) -> float:
        env = make_env("tabletop", suite="spatial", num_envs=n, image_size=64)
        obs = env.reset(torch.zeros(n, dtype=torch.long), torch.arange(n))
        with torch.no_grad():
            policy.act(obs, mode="sample")
            t0 = time.perf_counter()
            for _ in range(reps):
                policy.act(obs, mode="sample")
        return (time.perf_counter() - t0) / reps

    n1, n2 = 8, 32
    t1, t2 = act_time(n1), act_time(n2)
    b = max((t2 - t1) / (n2 - n1), 0.0)
    return Figures(c_env=local / (B * H), o_call=max(remote - local, 0.0), a=max(t1 - b * n1, 0.0), b=b, H=H)


# ------------------------------------------------------------------------------------------------ printing


def table(rows: list[dict], cols: list[str]) -> str:
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in cols]
    out = ["  ".join(c.rjust(w) for c, w in zip(cols, widths))]
    out += ["  ".join(str(r[c]).rjust(w) for c, w in zip(cols, widths)) for r in rows]
    return "\n".join(out)


def compare(f: Figures, path: str) -> None:
    """Model vs the rows of `reinforge bench rl --ray --json` (same B, K and H as those runs)."""
    rows = []
    with open(path) as fh:
        lines = fh.read().splitlines()
    for line in lines:
        if not line.startswith("{"):
            continue
        r = json.loads(line)
        lay = r["layout"]
        N = int(lay.split()[1]) if lay.startswith("ray") else 1
        S = int(lay.split(", ")[-1].split()[0]) if "pipeline" in lay else 1
        B, K = r["envs"], round(r["rollout_s"] * r["env_steps_per_s"] / (r["envs"] * f.H))
        m = iteration(f, B, K, N, S=S, ray=lay.startswith("ray"))
        rows.append({"layout": lay, "measured env steps/s": r["env_steps_per_s"],
                     "model env steps/s": round(m["rollout_env_steps_per_s"], 1),
                     "measured rollout s": r["rollout_s"], "model rollout s": round(m["rollout_s"], 2)})
    print(table(rows, list(rows[0])))


def project(f: Figures, B: int, K: int, cores_per_node: int, cpu_price: float, gpu_price: float,
            gpus: tuple[int, ...] = (1, 4), learner_gpus: int = 0) -> None:
    """Throughput and cost per env worker count, with the policy on ``GPUs`` inference engines that are also the
    data-parallel learner (collocated GPUs; ``learner_gpus`` > 0: a separate learner of that many GPUs, the
    disaggregated layout); each engine infers B / GPUs observations per call."""
    rows = []
    for L in gpus:
        for N in (n for n in (1, 2, 4, 8, 16, 32, 64, 128) if n <= B):  # a worker holds at least one env
            for S in (1, 2):
                m = iteration(f, B, K, N, M=L, S=S, L=learner_gpus or L)
                nodes = math.ceil((N + 1) / cores_per_node)
                cost = m["iteration_s"] / 3600 * (N * cpu_price + (L + learner_gpus) * gpu_price)
                rows.append({"inference GPUs": L, "learner GPUs": learner_gpus or L, "env workers": N, "stages": S,
                             "nodes": nodes,
                             "env s": f"{m['env_s']:.1f}", "inference s": f"{m['inference_s']:.1f}",
                             "rollout s": f"{m['rollout_s']:.1f}", "update s": f"{m['update_s']:.1f}",
                             "env steps/s": f"{m['env_steps_per_s']:.0f}",
                             "$ per 1M env steps": f"{cost / (B * K * f.H) * 1e6:.2f}", "bottleneck": m["bottleneck"]})
    print(table(rows, list(rows[0])))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--measure", action="store_true", help="measure c_env, o_call, a, b on this machine first")
    p.add_argument("--delay-ms", type=float, default=4.0, help="--measure: the built-in world's step_delay_ms")
    p.add_argument("--bench", default=None, help="JSON lines of `reinforge bench rl --ray --json` to compare with")
    for name in ("c_env", "o_call", "a", "b", "u"):
        p.add_argument(f"--{name.replace('_', '-')}", type=float, default=None, help=f"figure {name} (seconds)")
    p.add_argument("--envs", type=int, default=256, help="projection: envs per iteration (B)")
    p.add_argument("--calls", type=int, default=40, help="projection: policy calls per env per iteration (K)")
    p.add_argument("--cores-per-node", type=int, default=16)
    p.add_argument("--gpus", default="1,4", help="projection: comma list of GPU counts (inference + learner)")
    p.add_argument("--learner-gpus", type=int, default=0,
                   help="projection: a separate learner with this many GPUs (0: the inference GPUs learn too)")
    p.add_argument("--cpu-price", type=float, default=0.05, help="$ per worker core-hour (assumed)")
    p.add_argument("--gpu-price", type=float, default=2.5, help="$ per GPU-hour (assumed)")
    args = p.parse_args()
    f = measure(delay_ms=args.delay_ms, num_cpus=max(os.cpu_count() or 1, 2)) if args.measure else Figures()
    f = replace(f, **{k: getattr(args, k) for k in ("c_env", "o_call", "a", "b", "u") if getattr(args, k) is not None})
    print("figures:", {k: (f"{v * 1e3:.3f} ms" if k in ("c_env", "o_call", "a", "b", "u") else v)
                       for k, v in vars(f).items()})
    if args.bench:
        print("\nmodel vs measured (the bench rows' envs and calls):")
        compare(f, args.bench)
    print(f"\nprojection: B={args.envs} envs x K={args.calls} calls per iteration, "
          f"{args.cores_per_node} cores per node")
    project(f, args.envs, args.calls, args.cores_per_node, args.cpu_price, args.gpu_price,
            tuple(int(g) for g in args.gpus.split(",")), args.learner_gpus)


if __name__ == "__main__":
    main()
