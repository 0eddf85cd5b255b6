"""Rollouts: the vectorised env and the policy stepped together into ``RolloutBatch`` es."""

from reinforge.rollout.collector import (
    RolloutCollector,
    RolloutConfig,
    cat_batches,
    rollout_env_kwargs,
    select_obs,
    select_rows,
)

__all__ = ["RolloutCollector", "RolloutConfig", "cat_batches", "rollout_env_kwargs", "select_obs", "select_rows"]
