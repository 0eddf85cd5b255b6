"""Hand-built tabletop scenes for physics and predicate tests."""

from __future__ import annotations

import torch

from reinforge.envs.tabletop.catalog import CATEGORY_INDEX, color
from reinforge.envs.tabletop.world import Scene, WorldState


def make_scene(objects: list[tuple[str, tuple[float, float, float]]], grip=(0.0, -0.15, 0.2), support=None):
    """A one-env scene from (category, (x, y, z_bottom)) pairs."""
    n = len(objects)
    cat = torch.tensor([[CATEGORY_INDEX[c] for c, _ in objects]])
    rgb = torch.tensor([[color("red") for _ in objects]], dtype=torch.uint8)
    scene = Scene.from_categories(cat, rgb, torch.ones(1, n, dtype=torch.bool))
    pos = torch.tensor([[p for _, p in objects]], dtype=torch.float32)
    state = WorldState(
        pos=pos, support=torch.tensor([support or [-1] * n]), inside=torch.zeros(1, n, dtype=torch.bool),
        anchor_y=pos[..., 1].clone(), grip_pos=torch.tensor([grip], dtype=torch.float32),
        grip_yaw=torch.zeros(1), grip_open=torch.ones(1), held=torch.tensor([-1]), held_offset=torch.zeros(1, 3))
    return scene, state


def action(dx=0.0, dy=0.0, dz=0.0, close=False, dyaw=0.0) -> torch.Tensor:
    return torch.tensor([[dx, dy, dz, 0.0, 0.0, dyaw, 1.0 if close else -1.0]])


def move_to(scene, state, target, close, step_fn, max_steps=60):
    """Drive the gripper to ``target`` (x, y, z) with saturated proportional actions."""
    from reinforge.envs.tabletop.world import MAX_STEP

    for _ in range(max_steps):
        err = torch.tensor(target) - state.grip_pos[0]
        if err.abs().max() < 1e-4:
            break
        a = (err / MAX_STEP).clamp(-1, 1)
        state = step_fn(scene, state, action(*a.tolist(), close=close))
    return state


def two_rl_iterations(init, out, algo: str, *extra: str):
    """Two RLTrainer iterations of a tiny GRPO (episodic) or PPO (auto-reset) run from policy folder ``init``:
    (metrics rows, state dict before, state dict after, names of the vision parameters)."""
    from reinforge.config import load_config
    from reinforge.train.rl import RLConfig, RLTrainer

    ppo = ["algo=ppo", "rollout.mode=autoreset", "rollout.num_envs=4", "rollout.chunks_per_rollout=3",
           "ppo.minibatch_size=4", "ppo.epochs=1"] if algo == "ppo" else []
    cfg = load_config(RLConfig, None, [
        f"init={init}", f"out={out}", "rollout.num_groups=2", "rollout.group_size=2", "rollout.max_episode_steps=6",
        "grpo.dynamic_sampling=false", "grpo.minibatch_size=8", "eval.every=0", "eval.final_episodes_per_task=1",
        "eval.tasks=[0]", "eval.heldout=false", "eval.videos=0", "iterations=2", "optim.lr=1e-3", *ppo, *extra])
    with RLTrainer(cfg) as trainer:
        before = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
        rows = [trainer.train_iteration() for _ in range(2)]
        after = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
        ids = {id(p) for p in trainer.policy.vision_parameters()}
        vision = [k for k, p in trainer.policy.named_parameters() if id(p) in ids]
    return rows, before, after, vision
