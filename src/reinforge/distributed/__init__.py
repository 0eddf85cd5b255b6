"""Scale-out on Ray: env workers and rollout workers as actors around the same env, policy and collector classes.

The single-process path never imports Ray: this package's ``__init__`` holds only the config section
(``distributed:``) and a lazy entry point; the Ray code is in its submodules, imported when
``distributed.backend: ray``.

Topology (``DistributedConfig``):

- **env workers** (``env_workers``): Ray actors, each holding a shard of the rollout's envs, built from the same
  ``env`` config section with ``make_env`` (any registered env: the built-in world, LIBERO, MetaWorld, ...). With
  ``rollout.pipeline_stages`` S > 1 a worker holds S envs, one per pipeline stage.
- **inference**: ``rollout_workers: 0`` runs the policy in the learner process (one ``RolloutCollector`` over a
  ``RemoteVecEnv`` of every env worker); ``rollout_workers: M`` runs M actors, each with a copy of the policy and
  its own collector over its share of the envs. ``placement: disaggregated`` puts the envs in env-worker actors
  (CPU bundles) steered by the rollout workers (GPU bundles when ``rollout_worker_gpus`` > 0);
  ``placement: collocated`` steps each rollout worker's envs inside that worker's process.
- **weight sync** after each update: the learner publishes the trained parameters (``weight_sync: trainable``,
  what the optimizer updates: a frozen vision encoder is not sent) or the whole state dict (``full``) once to the
  object store under a version number; every rollout runs on one version, checked by the worker.
- **faults**: a worker that dies (or does not answer within ``worker_timeout_s``) is restarted by Ray (up to
  ``max_restarts`` times each); the episodes it was running come back as failed (truncated, counted in
  ``rollout/failed_episodes``, never trained on; GRPO drops their groups) and the iteration completes with the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from reinforge.config import check

PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


@dataclass
class RayInitConfig:
    """How ``ray.init`` is called: join a running cluster (``address``) or start a local one."""

    address: str = ""  # "" = start a local Ray instance; "auto" or "ray://host:10001" = join that cluster
    num_cpus: int = 0  # local instance: logical CPUs (0 = this machine's); workers reserve *_cpus each
    num_gpus: int = -1  # local instance: GPUs (-1 = detected)
    namespace: str = "reinforge"
    include_dashboard: bool = False  # the dashboard costs memory and a port; reinforge does not need it
    log_to_driver: bool = True  # worker logs (warnings of the envs) appear in the learner's output

    def __post_init__(self) -> None:
        check(self.num_cpus >= 0, "distributed.ray.num_cpus", self.num_cpus, "must be >= 0 (0 = this machine's)")
        check(self.num_gpus >= -1, "distributed.ray.num_gpus", self.num_gpus, "must be >= -1 (-1 = detected)")


@dataclass
class DistributedConfig:
    """The ``distributed`` section of an RL config (see the module docstring)."""

    backend: Literal["none", "ray"] = "none"
    env_workers: int = 2  # actors holding the envs (disaggregated placement)
    rollout_workers: int = 0  # actors running policy inference; 0 = in the learner process
    placement: Literal["disaggregated", "collocated"] = "disaggregated"
    placement_strategy: str = "PACK"  # Ray placement group strategy over the workers' bundles
    env_worker_cpus: float = 1.0
    rollout_worker_cpus: float = 1.0
    rollout_worker_gpus: float = 0.0  # > 0: rollout workers run the policy on CUDA
    worker_threads: int = 1  # torch threads inside each worker
    max_restarts: int = 3  # restarts of each worker before the run stops with an error
    worker_timeout_s: float = 600.0  # a worker silent this long on one call is killed and restarted
    weight_sync: Literal["trainable", "full"] = "trainable"
    ray: RayInitConfig = field(default_factory=RayInitConfig)

    def __post_init__(self) -> None:
        check(self.backend in ("none", "ray"), "distributed.backend", self.backend, "must be 'none' or 'ray'")
        check(self.env_workers >= 1, "distributed.env_workers", self.env_workers, "must be >= 1")
        check(self.rollout_workers >= 0, "distributed.rollout_workers", self.rollout_workers,
              "must be >= 0 (0 = inference in the learner process)")
        check(self.placement in ("disaggregated", "collocated"), "distributed.placement", self.placement,
              "must be 'disaggregated' or 'collocated'")
        check(self.placement_strategy in PLACEMENT_STRATEGIES, "distributed.placement_strategy",
              self.placement_strategy, f"must be one of {list(PLACEMENT_STRATEGIES)}")
        check(self.placement == "disaggregated" or self.rollout_workers >= 1, "distributed.placement",
              self.placement, "'collocated' steps the envs inside rollout workers: set distributed.rollout_workers")
        check(self.placement == "collocated" or self.rollout_workers == 0
              or self.env_workers % self.rollout_workers == 0, "distributed.env_workers", self.env_workers,
              f"must be a multiple of distributed.rollout_workers ({self.rollout_workers}): each rollout worker "
              "steers the same number of env workers")
        check(self.env_worker_cpus >= 0 and self.rollout_worker_cpus >= 0, "distributed.env_worker_cpus",
              (self.env_worker_cpus, self.rollout_worker_cpus), "must be >= 0")
        check(self.rollout_worker_gpus >= 0, "distributed.rollout_worker_gpus", self.rollout_worker_gpus,
              "must be >= 0")
        check(self.worker_threads >= 0, "distributed.worker_threads", self.worker_threads, "must be >= 0")
        check(self.max_restarts >= 0, "distributed.max_restarts", self.max_restarts, "must be >= 0")
        check(self.worker_timeout_s > 0, "distributed.worker_timeout_s", self.worker_timeout_s, "must be > 0")
        check(self.weight_sync in ("trainable", "full"), "distributed.weight_sync", self.weight_sync,
              "must be 'trainable' or 'full'")

    @property
    def enabled(self) -> bool:
        return self.backend == "ray"


def make_distributed_collector(cfg: DistributedConfig, **kwargs: Any):
    """A ``DistributedCollector`` (imports Ray; see ``reinforge.distributed.collector``)."""
    from reinforge.distributed.collector import DistributedCollector

    return DistributedCollector(cfg, **kwargs)


__all__ = ["DistributedConfig", "RayInitConfig", "make_distributed_collector"]
