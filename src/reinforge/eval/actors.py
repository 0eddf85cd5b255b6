"""Things that act in an env during evaluation: the scripted expert, a random policy, checkpoints."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from reinforge.envs import VecEnv
from reinforge.types import OBS_STATE, Actor, Observation, PolicyOutput


class RandomActor:
    """Uniform random actions in [-1, 1] (the gripper command too); a floor for success rates."""

    def __init__(self, action_dim: int, seed: int = 0, horizon: int = 1):
        self.action_dim, self.horizon = action_dim, horizon
        self.gen = torch.Generator().manual_seed(seed)

    def act(self, obs: Observation, *, mode: str = "greedy", temperature: float = 1.0) -> PolicyOutput:
        B = obs[OBS_STATE].shape[0]
        a = torch.rand(B, self.horizon, self.action_dim, generator=self.gen) * 2 - 1
        return PolicyOutput(actions=a)


def load_actor(spec: str, *, seed: int = 0, device: str | torch.device = "cpu") -> Callable[[VecEnv], Actor]:
    """A factory env -> actor for ``spec``: ``expert`` (the env's scripted expert), ``random`` or the path of a
    policy checkpoint (moved to ``device``)."""
    if spec == "expert":
        return lambda env: env.make_expert()
    if spec == "random":
        return lambda env: RandomActor(env.action_dim, seed=seed)
    path = Path(spec)
    if not path.exists():
        raise ValueError(f"--policy {spec!r} is neither 'expert', 'random' nor an existing checkpoint folder")
    if not (path / "config.json").is_file():
        raise ValueError(f"{path} is not a policy checkpoint: config.json is missing (checkpoints are folders "
                         "written by `reinforge sft` / `reinforge train`)")
    try:
        from reinforge.policies import load_pretrained  # the policy module (token / flow VLAs)
    except ImportError as e:
        raise ValueError(f"cannot load policy checkpoint {path}: {e}") from None
    from reinforge.device import resolve_device

    policy = load_pretrained(path).to(resolve_device(device)).eval()

    def bind(env: VecEnv) -> Actor:
        policy.bind_env(env.spec)
        return policy

    bind.policy = policy  # the loaded policy, e.g. to read its image size
    return bind
