"""World-model throughput: imagined env steps per second of ``WorldModelEnv`` (two imagined rollouts + the verified
reward per step) at several batch sizes, and the world model's training step time, on one device.

    python bench/wm_throughput.py --device cpu --envs 64,256
    python bench/wm_throughput.py --device cuda --envs 256,1024,4096 --batch 16,64

Records a small demonstration dataset (2 per task, 64x64) and uses the default world-model architecture with
its initial weights (throughput does not depend on what it learned). Prints one JSON line per figure.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from reinforge.config import load_config
from reinforge.data import DemoDataset
from reinforge.data.record import record_demos
from reinforge.envs import make_env
from reinforge.worldmodel.train import WMTrainConfig, WMTrainer, sample_sequences, wm_loss


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--envs", default="64,256")
    p.add_argument("--batch", default="16", help="training batch sizes (sequences of unroll=4)")
    p.add_argument("--steps", type=int, default=16, help="timed imagined steps per env batch")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = record_demos("spatial", Path(tmp) / "demos", per_task=2, image_size=64)
        cfg = load_config(WMTrainConfig, None, [f"data={data}", f"out={tmp}/wm", "steps=0", f"device={a.device}",
                                                "videos=0", "eval_horizon=4", "eval_every=32"])
        trainer = WMTrainer(cfg)
        trainer.run(progress=False)
        ds: DemoDataset = trainer.ds
        model = trainer.model
        opt = torch.optim.AdamW(model.parameters(), 1e-4)
        gen = torch.Generator().manual_seed(0)
        for b in (int(x) for x in a.batch.split(",")):
            times = []
            for i in range(6):
                imgs, st, act = sample_sequences(ds, torch.arange(ds.num_episodes), b, 4, gen)
                sync(a.device)
                t0 = time.perf_counter()
                loss, _ = wm_loss(model, imgs.to(a.device), st.to(a.device), act.to(a.device), latent_weight=0.5,
                                  state_weight=1.0)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sync(a.device)
                if i >= 2:  # warm-up
                    times.append(time.perf_counter() - t0)
            print(json.dumps({"bench": "wm_train_step", "device": a.device, "batch": b, "unroll": 4,
                              "step_s": round(sum(times) / len(times), 4)}), flush=True)
        for n in (int(x) for x in a.envs.split(",")):
            env = make_env("worldmodel", suite="spatial", num_envs=n, model=f"{tmp}/wm", device=a.device,
                           max_episode_steps=10_000, start="first")
            env.reset(torch.arange(n) % env.spec.num_tasks, torch.arange(n))
            actions = torch.zeros(n, 4, env.action_dim)
            env.step_chunk(actions)  # warm-up
            sync(a.device)
            t0 = time.perf_counter()
            for _ in range(a.steps // 4):
                env.step_chunk(actions)
            sync(a.device)
            dt = time.perf_counter() - t0
            print(json.dumps({"bench": "wm_env", "device": a.device, "num_envs": n,
                              "imagined_steps_per_s": round(n * 4 * (a.steps // 4) / dt, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
