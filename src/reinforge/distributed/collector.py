"""``DistributedCollector``: the learner's side of a Ray run, with the interface of ``RolloutCollector``
(``collect``, ``state_dict`` / ``load_state_dict``, ``task_weights``, ``metrics``, ``on_update``, ``close``).

- ``rollout_workers: 0``: a ``RolloutCollector`` in the learner process over a ``RemoteVecEnv`` of
  ``env_workers`` actors. Same seeds, same draws, same rows: the first iterations equal the in-process run's.
- ``rollout_workers: M``: M ``RolloutWorker`` actors, each with a policy copy and its own collector over its
  share of the envs (in its process: collocated; in env workers it steers: disaggregated). Episodic rollouts:
  the learner draws every group's (task, initial state) and hands each worker whole groups; auto-reset: each
  worker keeps its envs running and draws its own starts. Weights go out versioned after each update.
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import replace
from typing import Any

import torch

from reinforge.distributed import DistributedConfig
from reinforge.distributed.env_worker import EnvWorker
from reinforge.distributed.remote_env import RESTART_TIMEOUT_S, RemoteVecEnv
from reinforge.distributed.rollout_worker import RolloutWorker
from reinforge.distributed.runtime import import_ray, init_ray, placement_group, stop_actors, wait_for_pid
from reinforge.envs import EnvConfig
from reinforge.policies import Policy
from reinforge.rollout import RolloutCollector, RolloutConfig, cat_batches
from reinforge.types import RolloutBatch

log = logging.getLogger(__name__)


def split(n: int, parts: int) -> list[int]:
    """``n`` items in ``parts`` near-equal shares."""
    base, extra = divmod(n, parts)
    return [base + (i < extra) for i in range(parts)]


def worker_error(e: BaseException) -> str:
    """The last ``SomethingError: message`` line of a Ray error (the cause inside the worker), else its first."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    found = [ln for ln in lines if re.match(r"^[\w.]*(Error|Exception): ", ln)]
    return (found[-1] if found else lines[0] if lines else type(e).__name__)[:400]


class _Workers:
    """What the trainer reads from ``collector.env`` when the envs live in rollout workers."""

    def __init__(self, spec: Any, num_envs: int):
        self.spec, self.num_envs = spec, num_envs


class DistributedCollector:
    # the start sampling of the in-process collector (task assignment, adaptive weights) reads only cfg, gen,
    # tasks, task_success and env.spec, which this class has too
    sample_starts = RolloutCollector.sample_starts
    record_outcomes = RolloutCollector.record_outcomes
    slot_offset = 0

    def __init__(self, cfg: DistributedConfig, *, env: EnvConfig, env_kwargs: dict[str, Any], policy: Policy,
                 rollout: RolloutConfig, trained: list[torch.nn.Parameter], seed: int = 0, **collector_kw: Any):
        self.dcfg, self.cfg, self.policy = cfg, rollout, policy
        self.ray = ray = init_ray(cfg.ray)
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        B, S, N, M = rollout.envs, rollout.pipeline_stages, cfg.env_workers, cfg.rollout_workers
        collocated = cfg.placement == "collocated"
        if collocated and S > 1:
            raise ValueError("rollout.pipeline_stages > 1 overlaps env stepping in env workers with inference; with "
                             "distributed.placement=collocated the envs step inside the rollout workers: use "
                             "placement=disaggregated or pipeline_stages=1")
        n_env_actors = 0 if collocated else N
        if M:
            units = rollout.num_groups if rollout.mode == "episodic" else rollout.num_envs
            what = "rollout.num_groups" if rollout.mode == "episodic" else "rollout.num_envs"
            if units % M:
                raise ValueError(f"{what}={units} must be a multiple of distributed.rollout_workers={M}")
        gpus = cfg.rollout_worker_gpus
        bundles = [{"CPU": cfg.env_worker_cpus}] * n_env_actors
        bundles += [{"CPU": cfg.rollout_worker_cpus + (cfg.env_worker_cpus if collocated else 0), "GPU": gpus}] * M
        self.pg = placement_group(ray, bundles, cfg.placement_strategy)

        def options(index: int, cpus: float, num_gpus: float = 0.0) -> dict[str, Any]:
            where = PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=index)
            return {"num_cpus": cpus, "num_gpus": num_gpus, "max_restarts": cfg.max_restarts, "max_task_retries": 0,
                    "scheduling_strategy": where}

        # env workers: shard k of the envs, its stages; shard 0's first stage has the in-process env's seed. With
        # rollout workers, each one's B / M envs are spread over its own env workers.
        if not n_env_actors:
            shard_sizes = []
        elif M:
            shard_sizes = [n for _ in range(M) for n in split(B // M, n_env_actors // M)]
        else:
            shard_sizes = split(B, n_env_actors)
        if any(n < S for n in shard_sizes):
            raise ValueError(f"an env worker would hold fewer envs than rollout.pipeline_stages={S} (shards "
                             f"{shard_sizes}): lower distributed.env_workers or rollout.pipeline_stages")
        stage_sizes = [split(n, S) for n in shard_sizes]
        self.trained = {id(p) for p in trained}
        self.version, self.sync_s, self.sync_mb = 0, 0.0, 0.0
        self.rollout_restarts, self.lost = 0, 0
        self.local: RolloutCollector | None = None
        self.rollout_workers: list[Any] = []
        self.env_workers: list[Any] = []
        try:
            actor = ray.remote(EnvWorker)
            self.env_workers = [actor.options(**options(k, cfg.env_worker_cpus)).remote(
                env, env_kwargs, stage_sizes[k], env_kwargs.get("seed", 0) + 104729 * k, cfg.worker_threads)
                for k in range(n_env_actors)]
            if M == 0:
                remote = RemoteVecEnv(self.env_workers, stage_sizes, max_restarts=cfg.max_restarts,
                                      timeout_s=cfg.worker_timeout_s)
                self.local = RolloutCollector(remote, policy, rollout, seed=seed, **collector_kw)
                self.env = remote
            else:
                self._start_rollout_workers(env, env_kwargs, stage_sizes, collector_kw, seed, options)
        except BaseException:
            self.close()
            raise
        self.tasks = self.local.tasks if self.local else list(rollout.tasks) or list(range(self.env.spec.num_tasks))
        self.gen = torch.Generator().manual_seed(seed)
        self.task_success = torch.zeros(len(self.tasks), dtype=torch.float64)

    def _start_rollout_workers(self, env, env_kwargs, stage_sizes, collector_kw, seed, options) -> None:
        cfg, rollout, ray = self.dcfg, self.cfg, self.ray
        M, collocated = cfg.rollout_workers, cfg.placement == "collocated"
        if rollout.mode == "episodic":
            sub = replace(rollout, num_groups=rollout.num_groups // M)
        else:
            sub = replace(rollout, num_envs=rollout.num_envs // M)
        self.sub_envs = sub.envs
        p = self.policy
        # held here: Ray re-runs a crashed worker's constructor from these arguments in the object store
        self._init_weights = weights = ray.put((p.config, p.normalizer,
                                                {k: v.detach().cpu() for k, v in p.state_dict().items()}))
        device = "cuda" if cfg.rollout_worker_gpus > 0 else "cpu"
        per = len(self.env_workers) // M if self.env_workers else 0
        actor = ray.remote(RolloutWorker)
        n_env = len(self.env_workers)
        for i in range(M):
            if collocated:
                where: tuple = ("local", env, {**env_kwargs, "num_envs": sub.envs,
                                                "seed": env_kwargs.get("seed", 0) + 104729 * i})
            else:
                where = ("remote", self.env_workers[i * per:(i + 1) * per], stage_sizes[i * per:(i + 1) * per],
                         cfg.max_restarts, cfg.worker_timeout_s)
            self.rollout_workers.append(actor.options(**options(n_env + i, cfg.rollout_worker_cpus,
                                                                cfg.rollout_worker_gpus)).remote(
                weights, sub, collector_kw, where, seed=seed + 10007 * (i + 1), threads=cfg.worker_threads,
                device=device, slot_offset=i * sub.envs))
        infos = []
        for i, w in enumerate(self.rollout_workers):
            try:
                infos.append(ray.get(w.info.remote(), timeout=max(cfg.worker_timeout_s, RESTART_TIMEOUT_S)))
            except Exception as e:  # noqa: BLE001 - a worker that cannot start: its own error, one line
                raise RuntimeError(f"rollout worker {i} could not start: {worker_error(e)}") from None
        self.pids = [i["pid"] for i in infos]
        self.worker_version = [0] * M
        if self.env_workers:
            spec = ray.get(self.env_workers[0].info.remote())["spec"]
        else:
            from reinforge.eval.evaluate import env_spec

            spec = env_spec(env, image_size=tuple(env_kwargs["image_size"]))
        self.env = _Workers(spec, rollout.envs)
        self.policy.bind_env(spec)  # the learner's copy acts as the env's embodiment too (unified-space policies)
        # one rollout call covers a whole rollout: worker_timeout_s per policy call of it (plus resets)
        H = self.policy.config.execute_steps
        limit = env_kwargs.get("max_episode_steps") or spec.max_episode_steps
        calls = math.ceil(limit / H) if rollout.mode == "episodic" else rollout.chunks_per_rollout
        self.rollout_timeout_s = cfg.worker_timeout_s * (calls + 2)

    # ------------------------------------------------------------ weights

    def on_update(self) -> None:
        """The learner changed the weights: the next rollout runs a new version."""
        if self.rollout_workers:
            self.version += 1

    def _weights(self) -> dict[str, torch.Tensor]:
        if self.dcfg.weight_sync == "full":
            return {k: v.detach().cpu() for k, v in self.policy.state_dict().items()}
        return {k: p.detach().cpu() for k, p in self.policy.named_parameters() if id(p) in self.trained}

    def _sync(self) -> None:
        stale = [i for i, v in enumerate(self.worker_version) if v != self.version]
        if not stale:
            return
        t0 = time.perf_counter()
        weights = self._weights()
        ref = self.ray.put(weights)
        for i in stale:
            if self._rollout_call(i, lambda w: w.set_weights.remote(self.version, ref)) is not None:
                self.worker_version[i] = self.version
        self.sync_s += time.perf_counter() - t0
        self.sync_mb = sum(v.numel() * v.element_size() for v in weights.values()) / 2**20

    def _rollout_call(self, i: int, fn, timeout_s: float | None = None) -> Any:
        """``fn(worker i)``'s result, or None when the worker died (Ray restarts it; it then needs the weights)."""
        from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

        try:
            return self.ray.get(fn(self.rollout_workers[i]), timeout=timeout_s or self.dcfg.worker_timeout_s)
        except RayTaskError as e:
            raise e.as_instanceof_cause() from None
        except (RayActorError, ActorUnavailableError, self.ray.exceptions.GetTimeoutError) as e:
            if isinstance(e, self.ray.exceptions.GetTimeoutError):
                self.ray.kill(self.rollout_workers[i], no_restart=False)
            self._restarted(i)
            return None

    def _restarted(self, i: int) -> None:
        """Rollout worker ``i`` died or came back without the current weights: count the restart (once per new
        pid) and send it the weights again before its next rollout."""
        try:
            pid = wait_for_pid(self.ray, self.rollout_workers[i], max(self.dcfg.worker_timeout_s, RESTART_TIMEOUT_S))
        except Exception as e:  # noqa: BLE001
            raise RuntimeError(f"rollout worker {i} died and could not be restarted: {worker_error(e)}") from None
        if pid != self.pids[i]:
            self.pids[i] = pid
            self.rollout_restarts += 1
            log.warning("rollout worker %d died; restarted as pid %d; its episodes are dropped", i, pid)
        self.worker_version[i] = -1  # rebuilt from its first weights: send the current ones again

    # ------------------------------------------------------------ rollouts

    def collect(self) -> RolloutBatch:
        if self.local is not None:
            return self.local.collect()
        t0 = time.perf_counter()
        for _ in range(self.dcfg.max_restarts + 2):
            batch = self._collect_workers()
            if batch is not None:
                break
        else:
            raise RuntimeError("every rollout worker failed its rollout several times in a row")
        wall = time.perf_counter() - t0
        busy = sum(batch.timing.values()) or 1.0
        batch.timing = {k: v * wall / busy for k, v in batch.timing.items()}  # workers ran side by side
        if self.cfg.mode == "episodic" and self.cfg.task_assignment == "adaptive":
            self.record_outcomes(batch)
        return batch

    def _collect_workers(self) -> RolloutBatch | None:
        self._sync()
        M = len(self.rollout_workers)
        if self.cfg.mode == "episodic":
            G, n = self.cfg.group_size, self.cfg.num_groups // M
            tasks, inits = self.sample_starts(self.cfg.num_groups)

            def call(i: int):
                return lambda w, v=self.version: w.run_episodes.remote(
                    v, tasks[i * n:(i + 1) * n].repeat_interleave(G), inits[i * n:(i + 1) * n].repeat_interleave(G),
                    torch.arange(n).repeat_interleave(G))
        else:
            def call(i: int):
                return lambda w, v=self.version: w.run_autoreset.remote(v)
        results: list[Any] = [None] * M
        todo, lost = list(range(M)), 0
        for _attempt in range(2):  # a worker restarted before its rollout ("stale") gets the weights and runs again
            refs = {i: call(i)(self.rollout_workers[i]) for i in todo}
            stale = []
            for i, ref in refs.items():
                b = self._rollout_call(i, lambda w, r=ref: r, self.rollout_timeout_s)
                if b is None:
                    lost += self.sub_envs  # it died during the rollout: at least one episode per env was running
                elif isinstance(b, str):
                    self._restarted(i)
                    stale.append(i)
                else:
                    results[i] = b
            if not stale:
                break
            todo = stale
            self._sync()
        self.lost += lost
        batches = [b for b in results if b is not None]
        if not batches:
            return None
        batch = cat_batches(batches)
        batch.lost_episodes += lost
        return batch

    # ------------------------------------------------------------ state

    def metrics(self) -> dict[str, float]:
        m = {"distributed/env_worker_restarts": float(self._env_restarts()),
             "distributed/rollout_worker_restarts": float(self.rollout_restarts)}
        if self.rollout_workers:
            m.update({"distributed/weight_version": float(self.version), "time/weight_sync_s": self.sync_s,
                      "distributed/weight_sync_mb": self.sync_mb})
            self.sync_s = 0.0
        return m

    def _env_restarts(self) -> int:
        if self.local is not None:
            return sum(self.local.env.restarts)
        total = 0
        for i in range(len(self.rollout_workers)):
            info = self._rollout_call(i, lambda w: w.info.remote())
            total += info["env_restarts"] if info else 0
        return total

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.local is not None:
            return self.local.state_dict()
        state = {"gen": self.gen.get_state(), "task_success": self.task_success.clone()}
        for i in range(len(self.rollout_workers)):
            part = self._rollout_call(i, lambda w: w.state_dict.remote())
            if part is None:
                raise RuntimeError(f"rollout worker {i} died while its state was being saved; the previous "
                                   "checkpoint is kept: rerun the command to resume from it")
            state.update({f"worker{i}.{k}": v for k, v in part.items()})
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if self.local is not None:
            return self.local.load_state_dict(state)
        if "policy_gen" in state:
            raise ValueError("the checkpoint was written with the policy in the learner process: resume with the "
                             "same distributed.rollout_workers")
        self.gen.set_state(state["gen"])
        if state["task_success"].shape != self.task_success.shape:
            raise ValueError(f"the checkpoint tracks {state['task_success'].numel()} tasks, this rollout "
                             f"{self.task_success.numel()}")
        self.task_success = state["task_success"].clone()
        for i in range(len(self.rollout_workers)):
            part = {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith(f"worker{i}.")}
            if not part:
                raise ValueError(f"the checkpoint has no state for rollout worker {i}: resume with the same "
                                 "distributed.rollout_workers")
            if self._rollout_call(i, lambda w, p=part: w.load_state_dict.remote(p)) is None:
                raise RuntimeError(f"rollout worker {i} died while its state was being restored; rerun the command")

    def task_weights(self) -> torch.Tensor:
        """Task sampling probabilities under ``adaptive`` assignment: where the starts are drawn (the learner's
        collector, the learner here for episodic rollout workers, the mean over auto-reset rollout workers)."""
        if self.local is not None:
            return self.local.task_weights()
        if self.cfg.mode == "autoreset" and self.rollout_workers:
            ws = [self._rollout_call(i, lambda w: w.task_weights.remote()) for i in range(len(self.rollout_workers))]
            ws = [w for w in ws if w is not None]
            if ws:
                return torch.stack(ws).mean(0)
        return RolloutCollector.task_weights(self)

    def close(self) -> None:
        """Stop the workers (each first closes its envs: simulator processes) and release their placement."""
        import contextlib

        ray = import_ray()
        stop_actors(ray, [*getattr(self, "rollout_workers", []), *getattr(self, "env_workers", [])])
        self.rollout_workers, self.env_workers = [], []
        if getattr(self, "pg", None) is not None:
            from ray.util.placement_group import remove_placement_group

            with contextlib.suppress(Exception):
                remove_placement_group(self.pg)
            self.pg = None
