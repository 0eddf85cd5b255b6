"""How much one RL update moves a policy, and whether the damage comes from the signal or from the step.

From a fine-tuned policy it collects ONE GRPO batch (the shipped flow recipe unless --config), evaluates the
greedy policy, then, each time from the same weights, optimizer state and batch:
- one update at each learning rate of --lrs (approx-KL to the rollout policy, clip fraction, greedy success);
- one update at the first lr with the batch's episode outcomes shuffled across rows, i.e. advantages carrying
  no information (if this hurts as much as the real update, the step size, not the signal, does the damage);
- random perturbations of every trainable (non-vision) weight by +-m for each m of --perturb (how sensitive
  the greedy policy is to moves of that size in random directions rather than along the gradient).

Usage: python bench/step_probe.py --init runs/suites/long_seed0/sft_1demo/policy --suite long
       [--lrs 2e-4,2e-5] [--perturb 2e-4,5e-4,1e-3,2e-3] [--episodes-per-task 10] [RL overrides ...]
(one core: ~10 minutes on `long`, 100 greedy episodes per evaluation)
"""

from __future__ import annotations

import argparse
import copy
import tempfile

import torch

from reinforge.algos.base import actor_critic_parameters, set_actor_lr
from reinforge.config import load_config
from reinforge.envs import EnvConfig
from reinforge.eval import evaluate
from reinforge.train.quickstart import resolve_config
from reinforge.train.rl import RLConfig, RLTrainer


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--init", required=True, help="the fine-tuned policy folder")
    p.add_argument("--suite", default="spatial")
    p.add_argument("--config", default="tabletop_grpo_flow_sde", help="a GRPO config")
    p.add_argument("--lrs", default="2e-4,2e-5")
    p.add_argument("--perturb", default="2e-4,5e-4,1e-3,2e-3")
    p.add_argument("--episodes-per-task", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("overrides", nargs="*")
    a = p.parse_args()
    lrs = [float(x) for x in a.lrs.split(",") if x]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(RLConfig, resolve_config(a.config, "rl"),
                          [f"init={a.init}", f"out={tmp}", f"env.suite={a.suite}", "resume=false", f"seed={a.seed}",
                           *a.overrides])
        if cfg.algo != "grpo":
            raise SystemExit(f"--config {a.config} is for {cfg.algo}; this probe shuffles GRPO's episode outcomes")
        with RLTrainer(cfg) as tr:
            tr.algo.adaptive_lr = None  # each row is one update at a fixed lr, whatever the config's target_kl
            run_probe(tr, cfg, a, lrs)


def run_probe(tr: RLTrainer, cfg: RLConfig, a: argparse.Namespace, lrs: list[float]) -> None:
    policy, env = tr.policy, EnvConfig.from_mapping({"name": cfg.env.name, "suite": a.suite})
    torch.manual_seed(a.seed)
    batch, m = tr.collect()
    print(f"batch: {int(m['rollout/episodes'])} episodes in {int(m['rollout/rounds'])} rounds, sampled success "
          f"{100 * m['rollout/success_rate']:.1f}%, {batch.num_samples} policy calls", flush=True)

    def greedy() -> float:
        policy.eval()
        r = evaluate(lambda e: policy, env, episodes_per_task=a.episodes_per_task, seed=a.seed,
                     image_size=policy.config.image_size)
        return 100 * r.success_rate

    weights, opt_state = copy.deepcopy(policy.state_dict()), copy.deepcopy(tr.optimizer.state_dict())
    gen_state = tr.algo.gen.get_state()

    def restore() -> None:
        policy.load_state_dict(weights)
        tr.optimizer.load_state_dict(opt_state)
        tr.algo.gen.set_state(gen_state)  # the same minibatches every time

    rows = [("SFT policy (no update)", "-", "-", f"{greedy():.0f}%")]
    print(rows[-1], flush=True)
    variants = [(f"one update, lr {lr:g}", lr, batch) for lr in lrs]
    shuffled = copy.copy(batch)
    perm = torch.randperm(batch.num_rows, generator=torch.Generator().manual_seed(a.seed + 1))
    shuffled.episode_success = batch.episode_success[perm]
    variants.append((f"one update, lr {lrs[0]:g}, outcomes shuffled (no signal)", lrs[0], shuffled))
    for name, lr, b in variants:
        restore()
        set_actor_lr(tr.optimizer, lr)
        out = tr.algo.update(b)
        rows.append((name, f"{out['train/approx_kl']:.3f}", f"{out['train/clip_frac']:.2f}", f"{greedy():.0f}%"))
        print(rows[-1], flush=True)
    actor, _ = actor_critic_parameters(policy, freeze_vision=cfg.freeze_vision)
    for mag in (float(x) for x in a.perturb.split(",") if x):
        restore()
        g = torch.Generator().manual_seed(a.seed + 2)
        with torch.no_grad():
            for prm in actor:
                prm.add_(mag * torch.sign(torch.randn(prm.shape, generator=g)))
        rows.append((f"random +-{mag:g} on every trainable weight", "-", "-", f"{greedy():.0f}%"))
        print(rows[-1], flush=True)
    print(f"\n{a.suite}, from {a.init} ({a.episodes_per_task} greedy episodes per task per evaluation)\n")
    print("| change | approx-KL | clip fraction | greedy success |\n|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
