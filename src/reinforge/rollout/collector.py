"""The rollout collector: a vectorised env and a policy stepped together, one action chunk per policy call.

Two modes:

- ``episodic`` (SimpleVLA-RL): every env is reset to a (task, initial state) of a group and run until its
  episode ends or hits the time limit; G rows of a group share task and initial state. Envs that end
  mid-chunk stop there (the env's ``valid`` mask), and a finished env is never stepped or queried again,
  so the policy only runs on live envs.
- ``autoreset`` (PPO with many envs): ``chunks_per_rollout`` policy calls per env; an env whose episode
  ends is reset at once to a fresh (task, initial state), and the env keeps running across rollouts. The
  rollout's last state and every truncated episode's final state get a value for bootstrapping.

With ``cache_features`` the frozen vision encoder runs once per observation here and the batch stores its
tokens instead of images, so updates skip it. With ``cache_prefix`` (a frozen backbone, a policy with
``cacheable_prefix``) the batch stores the backbone's fused tokens instead, so updates run the action head alone.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Literal

import torch

from reinforge.config import check
from reinforge.device import module_device
from reinforge.envs import VecEnv
from reinforge.policies import Policy
from reinforge.policies.base import LogProb
from reinforge.types import (
    OBS_IMAGE,
    OBS_IMAGE_FEATURES,
    OBS_PREFIX,
    OBS_PREFIX_PAD,
    OBS_STATE,
    OBS_TASK_ID,
    Observation,
    RolloutBatch,
)

log = logging.getLogger(__name__)


@dataclass
class RolloutConfig:
    """How experience is gathered. Episodic: ``num_groups`` x ``group_size`` envs per round; auto-reset:
    ``num_envs`` envs x ``chunks_per_rollout`` policy calls."""

    mode: Literal["episodic", "autoreset"] = "episodic"
    num_groups: int = 16
    group_size: int = 8  # G rollouts of the same task from the same initial state
    num_envs: int = 64  # auto-reset mode
    chunks_per_rollout: int = 16  # auto-reset mode: policy calls per env per rollout
    temperature: float = 1.6  # sampling temperature of the token policy (flow policies ignore it)
    # initial states RL trains on; evaluations use "val" (periodic) and "eval" (reported). "eval" trains on the
    # reported states, as LIBERO's RL papers do (LIBERO has one bank)
    init_bank: Literal["train", "eval"] = "train"
    max_episode_steps: int = 0  # 0 = the suite's limit
    # train episodes end (truncated, bootstrapped from the critic) at this fraction of the suite's time limit: the
    # tail of a failing episode teaches little, and the steps it frees start new episodes; evaluation keeps the
    # suite's limit. Relative, so one recipe fits suites of different lengths (spatial 160 -> 100 at 0.625).
    time_limit_scale: float = 1.0
    tasks: tuple[int, ...] = ()  # train on these task ids only (default: every task of the suite)
    # "random": every new episode (group) draws its task; "per_env": env slot / group i always runs task
    # tasks[i mod n], only the initial state is drawn, so simulators whose scenes are tied to a task (LIBERO
    # rebuilds a slot's env when its task changes, 5-10 s) never switch; "adaptive": tasks are drawn with
    # probability proportional to (1 - s_k) + adaptive_floor, s_k a running success rate of task k's rollouts,
    # so tasks the policy fails at get more attempts (a task at 0% gets up to 1 / floor + 1 times a solved one's)
    task_assignment: Literal["random", "per_env", "adaptive"] = "random"
    adaptive_floor: float = 0.25
    adaptive_rate: float = 0.05  # per finished episode: s_k += rate * (success - s_k)
    # split the envs into this many stages stepped in turn, so that while the env workers step one stage's action
    # chunk the policy runs on the next (RLinf's pipeline_stage_num); needs envs stepping in other processes
    pipeline_stages: int = 1

    def __post_init__(self) -> None:
        self.tasks = tuple(self.tasks)
        check(self.mode in ("episodic", "autoreset"), "rollout.mode", self.mode, "must be 'episodic' or 'autoreset'")
        check(self.num_groups >= 1, "rollout.num_groups", self.num_groups, "must be >= 1")
        check(self.group_size >= 1, "rollout.group_size", self.group_size, "must be >= 1")
        check(self.num_envs >= 1, "rollout.num_envs", self.num_envs, "must be >= 1")
        check(self.chunks_per_rollout >= 1, "rollout.chunks_per_rollout", self.chunks_per_rollout, "must be >= 1")
        check(self.temperature > 0, "rollout.temperature", self.temperature, "must be > 0")
        check(self.init_bank in ("train", "eval"), "rollout.init_bank", self.init_bank, "must be 'train' or 'eval'")
        check(self.max_episode_steps >= 0, "rollout.max_episode_steps", self.max_episode_steps, "must be >= 0")
        check(0 < self.time_limit_scale <= 1, "rollout.time_limit_scale", self.time_limit_scale, "must be in (0, 1]")
        check(not (self.max_episode_steps and self.time_limit_scale < 1), "rollout.time_limit_scale",
              self.time_limit_scale, "cannot be combined with rollout.max_episode_steps (set one of them)")
        check(self.task_assignment in ("random", "per_env", "adaptive"), "rollout.task_assignment",
              self.task_assignment, "must be 'random', 'per_env' or 'adaptive'")
        check(self.adaptive_floor > 0, "rollout.adaptive_floor", self.adaptive_floor, "must be > 0")
        check(0 < self.adaptive_rate <= 1, "rollout.adaptive_rate", self.adaptive_rate, "must be in (0, 1]")
        check(self.pipeline_stages >= 1, "rollout.pipeline_stages", self.pipeline_stages, "must be >= 1")
        check(self.envs % self.pipeline_stages == 0, "rollout.pipeline_stages", self.pipeline_stages,
              f"must divide the number of envs ({self.envs})")

    @property
    def envs(self) -> int:
        return self.num_groups * self.group_size if self.mode == "episodic" else self.num_envs


def select_obs(obs: Observation, rows: torch.Tensor) -> Observation:
    """The observations of env rows ``rows``."""
    idx = rows.tolist()
    return {k: ([v[i] for i in idx] if isinstance(v, list) else v[rows]) for k, v in obs.items()}


class _Buffer:
    """(B, T, ...) tensors filled one policy call at a time (only the rows that acted)."""

    def __init__(self, B: int, T: int):
        self.B, self.T, self.data = B, T, {}

    def put(self, key: str, t: int, rows: torch.Tensor, value: torch.Tensor) -> None:
        value = value.detach().cpu()
        if key not in self.data:
            self.data[key] = torch.zeros((self.B, self.T, *value.shape[1:]), dtype=value.dtype)
        self.data[key][rows, t] = value

    def get(self, key: str, T: int) -> torch.Tensor | None:
        return self.data[key][:, :T] if key in self.data else None


def rollout_env_kwargs(cfg: RolloutConfig, image_size: tuple[int, int], seed: int,
                       suite_limit: int | None = None) -> dict:
    """``make_env`` keywords for the envs a collector with ``cfg`` steps (train split, its init bank).
    ``suite_limit``: the suite's own time limit, needed when ``cfg.time_limit_scale`` < 1."""
    kw = {"num_envs": cfg.envs, "split": "train", "init_bank": cfg.init_bank, "image_size": tuple(image_size),
          "seed": seed}
    if cfg.max_episode_steps:
        kw["max_episode_steps"] = cfg.max_episode_steps
    elif cfg.time_limit_scale < 1:
        if suite_limit is None:
            raise ValueError("rollout.time_limit_scale < 1 needs the suite's time limit (suite_limit=)")
        kw["max_episode_steps"] = max(1, round(suite_limit * cfg.time_limit_scale))
    return kw


class RolloutCollector:
    """Steps ``policy`` in ``env`` (any ``VecEnv`` with ``cfg.envs`` envs, e.g. from ``make_env``) and returns
    ``RolloutBatch`` es. The env may live on another device than the policy (observations are moved)."""

    def __init__(self, env: VecEnv, policy: Policy, cfg: RolloutConfig, *, cache_features: bool = False,
                 cache_prefix: bool = False, need_values: bool = False, seed: int = 0, logprob: LogProb = "chunk",
                 rebuild: Callable[[], VecEnv] | None = None):
        self.cfg, self.policy, self._env = cfg, policy, env
        self._rebuild = rebuild  # builds the envs again after ``release_env``
        policy.check_logprob(logprob)
        self.logprob = logprob  # the level the learner recomputes log-probs at (its ``logprob``)
        if cache_prefix and not policy.cacheable_prefix:
            raise ValueError(f"a {policy.config.kind} policy cannot run from cached backbone tokens (cache_prefix)")
        self.cache_features, self.cache_prefix, self.need_values = cache_features, cache_prefix, need_values
        spec = env.spec
        if env.num_envs != cfg.envs:
            raise ValueError(f"the rollout config asks for {cfg.envs} envs but the env holds {env.num_envs}")
        if cfg.pipeline_stages > 1 and not env.async_steps:
            raise ValueError(f"rollout.pipeline_stages={cfg.pipeline_stages} overlaps env stepping with policy "
                             "inference, which needs envs stepping in other processes (distributed.backend: ray); "
                             "set it to 1")
        policy.bind_env(spec)  # dims must match (a unified-space policy acts as the env's embodiment)
        n = spec.num_tasks
        self.tasks = list(cfg.tasks) or list(range(n))
        bad = [t for t in self.tasks if not 0 <= t < n]
        if bad:
            raise ValueError(f"rollout.tasks {bad} out of range: suite {spec.suite!r} has task ids 0..{n - 1}")
        self.gen = torch.Generator().manual_seed(seed)  # tasks and initial states
        # action sampling, on the policy's device (a CUDA policy samples with a CUDA generator)
        self.policy_gen = torch.Generator(device=module_device(policy)).manual_seed(seed + 1)
        self._obs: Observation | None = None  # auto-reset mode: the envs keep running across rollouts
        self._len = torch.zeros(cfg.envs, dtype=torch.int64)
        self._task = torch.zeros(cfg.envs, dtype=torch.int64)  # task and initial state of each running episode
        self._init = torch.zeros(cfg.envs, dtype=torch.int64)
        self.task_success = torch.zeros(len(self.tasks), dtype=torch.float64)  # "adaptive": running success rates
        self.instructions = spec.instructions
        self.slot_offset = 0  # per_env: the global index of this collector's first env slot (rollout workers)
        self._timing, self._reset_s = (0.0, 0.0), 0.0  # (env s, policy s) of the last pipeline; resets inside it
        self._stage_obs: list[Observation] = []

    # ------------------------------------------------------------ helpers

    def metrics(self) -> dict[str, float]:
        """Collector-level metrics of the last rollout (none in process; workers and weight syncs under Ray)."""
        return {}

    def on_update(self) -> None:
        """The learner changed the policy's weights (the policy here is the learner's own: nothing to do)."""

    @property
    def env(self) -> VecEnv:
        """The envs (built again here when ``release_env`` let them go)."""
        if self._env is None:
            if self._rebuild is None:
                raise RuntimeError("the collector's envs were released and it has no way to rebuild them")
            self._env = self._rebuild()
        return self._env

    def release_env(self) -> bool:
        """Close the envs until the next rollout needs them (to free their memory, e.g. for an evaluation's envs).
        Only in episodic mode, where no episode runs across rollouts, and with a ``rebuild``; False otherwise."""
        if self._rebuild is None or self.cfg.mode != "episodic":
            return False
        if self._env is not None:
            self._env.close()
            self._env = None
        return True

    def close(self) -> None:
        if self._env is not None:
            self._env.close()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Generators, and in auto-reset mode the episodes in flight (env snapshot, their lengths, tasks and
        initial states), so a resumed run continues exactly. Envs that cannot snapshot (``spec.snapshot``
        False, e.g. real simulators) keep only the generators: a resumed auto-reset run drops the episodes that
        were in flight and starts fresh ones, so it does not reproduce the uninterrupted run bit for bit."""
        state = {"gen": self.gen.get_state(), "policy_gen": self.policy_gen.get_state(),
                 "task_success": self.task_success.clone()}
        if self._obs is not None and self.env.spec.snapshot:
            state.update({f"env.{k}": v for k, v in self.env.snapshot().items()})
            state.update({"ep_len": self._len.clone(), "ep_task": self._task.clone(), "ep_init": self._init.clone()})
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.gen.set_state(state["gen"])
        self.policy_gen.set_state(state["policy_gen"])
        if "task_success" in state:  # checkpoints written before adaptive task sampling existed have none
            if state["task_success"].shape != self.task_success.shape:
                raise ValueError(f"the checkpoint tracks {state['task_success'].numel()} tasks, this rollout "
                                 f"{self.task_success.numel()}")
            self.task_success = state["task_success"].clone()
        snap = {k[4:]: v for k, v in state.items() if k.startswith("env.")}
        if snap:
            self._obs = self.env.restore(snap)
            self._len = state["ep_len"].clone()
            if "ep_task" in state:
                self._task, self._init = state["ep_task"].clone(), state["ep_init"].clone()
            else:  # checkpoints written before the collector tracked them: the env snapshot has them
                self._task, self._init = snap["task_id"].clone(), snap["init_id"].clone()
        elif self.cfg.mode == "autoreset" and not self.env.spec.snapshot:
            log.warning("env %r cannot snapshot: the episodes in flight at the checkpoint are dropped and every "
                        "env starts a fresh episode (the resumed run is not bit-identical)", self.env.spec.env)

    def sample_starts(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` (task, initial state) pairs drawn uniformly from the training tasks and the init bank (or, for
        envs with random resets, a fresh reset seed each). With ``task_assignment: per_env`` slot i keeps task
        ``tasks[i mod n]``; with ``adaptive`` tasks are weighted by ``task_weights()``."""
        if self.cfg.task_assignment == "adaptive":
            pick = torch.multinomial(self.task_weights(), n, replacement=True, generator=self.gen)
        else:
            pick = torch.randint(0, len(self.tasks), (n,), generator=self.gen)
        if self.cfg.task_assignment == "per_env":
            pick = (torch.arange(n) + self.slot_offset) % len(self.tasks)
        tasks = torch.tensor(self.tasks)[pick]
        high = self.env.spec.num_init_states or 2**31 - 1
        return tasks, torch.randint(0, high, (n,), generator=self.gen)

    def task_weights(self) -> torch.Tensor:
        """Sampling probabilities (n_tasks,) of the training tasks under ``adaptive`` assignment."""
        w = (1 - self.task_success) + self.cfg.adaptive_floor
        return w / w.sum()

    def record_outcomes(self, batch: RolloutBatch) -> None:
        """Update the running per-task success rates from a rollout's finished episodes (episodes lost to a
        simulator fault do not count)."""
        ok = ~batch.episode_failed if batch.episode_failed is not None else torch.ones_like(batch.episode_success)
        index = {t: i for i, t in enumerate(self.tasks)}
        keep = [index[int(t)] for t in batch.episode_task[ok].tolist()]
        if not keep:
            return
        k = torch.tensor(keep)
        n = torch.bincount(k, minlength=len(self.tasks)).double()
        wins = torch.bincount(k, weights=batch.episode_success[ok].double(), minlength=len(self.tasks))
        # n episodes of one update each, in closed form: s <- (1 - r)^n s + (1 - (1 - r)^n) * (wins / n)
        decay = (1 - self.cfg.adaptive_rate) ** n
        mean = torch.where(n > 0, wins / n.clamp(min=1), self.task_success)
        self.task_success = decay * self.task_success + (1 - decay) * mean

    def _policy_input(self, obs: Observation, rows: torch.Tensor) -> Observation:
        sub = select_obs(obs, rows.to(obs[OBS_TASK_ID].device))
        if self.cache_prefix:
            sub[OBS_PREFIX], sub[OBS_PREFIX_PAD] = self.policy.encode_prefix(sub)
            sub.pop(OBS_IMAGE)
        elif self.cache_features:
            sub[OBS_IMAGE_FEATURES] = self.policy.encode_images(sub.pop(OBS_IMAGE))
        return sub

    def _act(self, buf: _Buffer, obs: Observation, rows: torch.Tensor, t: int):
        sub = self._policy_input(obs, rows)
        out = self.policy.act(sub, mode="sample", temperature=self.cfg.temperature, generator=self.policy_gen,
                              logprob=self.logprob)
        if not bool(torch.isfinite(out.actions).all()):
            raise FloatingPointError("the policy produced NaN/inf actions during the rollout; the weights have "
                                     "diverged (lower the learning rate or resume from an earlier checkpoint)")
        visual = (OBS_PREFIX, OBS_PREFIX_PAD) if self.cache_prefix else (
            (OBS_IMAGE_FEATURES,) if self.cache_features else (OBS_IMAGE,))
        for key in visual:
            buf.put(key, t, rows, sub[key])
        buf.put(OBS_STATE, t, rows, sub[OBS_STATE])
        buf.put(OBS_TASK_ID, t, rows, sub[OBS_TASK_ID])
        for k, v in out.replay.items():
            buf.put("replay." + k, t, rows, v)
        buf.put("log_prob", t, rows, out.log_prob)
        if out.value is not None:
            buf.put("value", t, rows, out.value.float())
        actions = torch.zeros(self.env.num_envs, *out.actions.shape[1:])
        actions[rows] = out.actions.float().cpu()
        return actions

    def _bootstrap(self, obs: Observation, rows: torch.Tensor) -> torch.Tensor | None:
        if not self.need_values or rows.numel() == 0:
            return None
        value = self.policy.predict_value(self._policy_input(obs, rows))
        return None if value is None else value.float().cpu()

    @torch.no_grad()
    def collect(self) -> RolloutBatch:
        """One rollout: ``num_groups`` groups (episodic) or ``chunks_per_rollout`` steps of every env."""
        self.policy.eval()
        if self.cfg.mode == "episodic":
            tasks, inits = self.sample_starts(self.cfg.num_groups)
            G = self.cfg.group_size
            batch = self.run_episodes(tasks.repeat_interleave(G), inits.repeat_interleave(G),
                                      torch.arange(self.cfg.num_groups).repeat_interleave(G))
        else:
            batch = self.run_autoreset()
        if self.cfg.task_assignment == "adaptive":
            self.record_outcomes(batch)
        return batch

    # ------------------------------------------------------------ pipelining

    def _stages(self) -> list[torch.Tensor]:
        """The env rows of each pipeline stage (``rollout.pipeline_stages``): one stage, or the env's own
        row sets that can be stepped while another set is (its ``pipeline_stages``)."""
        S = self.cfg.pipeline_stages
        if S == 1:
            return [torch.arange(self.env.num_envs)]
        return [r.cpu() for r in self.env.pipeline_stages(S)]

    def _pipeline(self, stages: list[torch.Tensor], obs: Observation, T: int, act, record) -> int:
        """Run ``T`` policy calls per stage, round-robin over the stages: while the env steps one stage's chunk
        (``step_chunk_async``), the policy acts on the next stage. ``act(stage_obs, stage_rows, t)`` returns
        (actions (B, H, D), the rows that acted) or None when the stage is finished; ``record(result,
        stage_rows, t)`` books a step and returns the stage's next observation. Returns the policy calls used
        by the busiest stage. With one stage this is the plain act -> step -> record loop."""
        S, env = len(stages), self.env
        stage_obs, pending, step = [obs] * S, [None] * S, [0] * S
        t_env = t_policy = 0.0
        while True:
            busy = False
            for s, rows in enumerate(stages):
                if pending[s] is not None:
                    t0 = time.perf_counter()
                    res = pending[s].result()
                    pending[s] = None
                    t_env += time.perf_counter() - t0
                    stage_obs[s] = record(res, rows, step[s])
                    t_env += self._reset_s  # resets inside record count as env time
                    self._reset_s = 0.0
                    step[s] += 1
                if step[s] >= T:
                    continue
                t0 = time.perf_counter()
                acted = act(stage_obs[s], rows, step[s])
                t_policy += time.perf_counter() - t0
                if acted is None:
                    continue
                actions, live = acted
                active = None
                if S > 1 or live.numel() < env.num_envs:
                    active = torch.zeros(env.num_envs, dtype=torch.bool)
                    active[live] = True
                    active = active.to(env.device)
                t0 = time.perf_counter()
                pending[s] = env.step_chunk_async(actions.to(env.device), active=active)
                t_env += time.perf_counter() - t0
                busy = True
            if not busy:
                break
        self._timing = (t_env, t_policy)
        self._stage_obs = stage_obs
        return max(step)

    # ------------------------------------------------------------ episodic

    @torch.no_grad()
    def run_episodes(self, tasks: torch.Tensor, inits: torch.Tensor, group: torch.Tensor | None = None
                     ) -> RolloutBatch:
        """Run one episode per env from ``tasks`` / ``inits`` (B,) to its end."""
        env, B = self.env, self.env.num_envs
        H = self.policy.config.execute_steps
        T = math.ceil(env.max_episode_steps / H)
        buf = _Buffer(B, T)
        reward, env_steps = torch.zeros(B, T), torch.zeros(B, T, dtype=torch.int64)
        valid, term, trunc = (torch.zeros(B, T, dtype=torch.bool) for _ in range(3))
        next_value = torch.zeros(B, T)
        done, success = torch.zeros(B, dtype=torch.bool), torch.zeros(B, dtype=torch.bool)
        failed = torch.zeros(B, dtype=torch.bool)  # episodes lost to a simulator fault (crashed worker)
        length = torch.zeros(B, dtype=torch.int64)
        t0 = time.perf_counter()
        obs = env.reset(tasks, inits)
        t_reset = time.perf_counter() - t0
        self._reset_s = 0.0

        def act(obs: Observation, rows: torch.Tensor, t: int):
            live = rows[~done[rows]]
            if live.numel() == 0:
                return None
            valid[live, t] = True
            return self._act(buf, obs, live, t), live

        def record(res, rows: torch.Tensor, t: int) -> Observation:
            mine = torch.zeros(B, dtype=torch.bool)
            mine[rows] = True
            live = mine & ~done
            reward[rows, t] = res.reward.cpu().sum(1)[rows]
            env_steps[rows, t] = res.valid.cpu().sum(1)[rows]
            te, tr = res.terminated.cpu() & live, res.truncated.cpu() & live
            term[rows, t], trunc[rows, t] = te[rows], tr[rows]
            length[rows] += env_steps[rows, t]
            success[:] |= te & res.success.cpu()
            lost = res.info["failed"].cpu() & live if "failed" in res.info else torch.zeros(B, dtype=torch.bool)
            if bool(lost.any()):  # the chunk never ran (or its results are gone): counted, not trained on
                failed[:] |= lost
                valid[lost, t] = False
                tr = tr & ~lost
            tr_rows = tr.nonzero().flatten()
            v = self._bootstrap(res.obs, tr_rows)
            if v is not None:
                next_value[tr_rows, t] = v
            done[:] |= te | res.truncated.cpu() & live
            return res.obs

        used = self._pipeline(self._stages(), obs, T, act, record)
        t_env, t_policy = self._timing
        batch = self._finish(buf, used, reward, valid, term, trunc, env_steps, next_value,
                             success, length, tasks, inits, group, t_env + t_reset, t_policy)
        batch.episode_failed = failed
        return batch

    def _finish(self, buf, T, reward, valid, term, trunc, env_steps, next_value, success, length, tasks, inits,
                group, t_env, t_policy) -> RolloutBatch:
        value = buf.get("value", T)
        nv = None
        if value is not None and self.need_values:
            nv = next_value[:, :T].clone()
            ended = term[:, :T] | trunc[:, :T]
            cont = ~ended & valid[:, :T]
            cont[:, -1] = False  # the rollout's last step keeps its bootstrap value V(s_T)
            nxt = torch.cat([value[:, 1:], torch.zeros_like(value[:, :1])], 1)
            nv = torch.where(cont, nxt, nv)
        obs = {k: buf.get(k, T) for k in (OBS_IMAGE, OBS_IMAGE_FEATURES, OBS_PREFIX, OBS_PREFIX_PAD, OBS_STATE,
                                          OBS_TASK_ID) if k in buf.data}
        replay = {k.split(".", 1)[1]: v[:, :T] for k, v in buf.data.items() if k.startswith("replay.")}
        return RolloutBatch(
            obs=obs, instructions=self.instructions, replay=replay, log_prob=buf.get("log_prob", T), value=value,
            next_value=nv, reward=reward[:, :T], valid=valid[:, :T], terminated=term[:, :T],
            truncated=trunc[:, :T], env_steps=env_steps[:, :T], episode_success=success, episode_length=length,
            episode_task=tasks.cpu(), episode_init=inits.cpu(), group=group,
            timing={"time/env_s": t_env, "time/policy_s": t_policy})

    # ------------------------------------------------------------ auto-reset

    @torch.no_grad()
    def run_autoreset(self) -> RolloutBatch:
        env, B, T = self.env, self.env.num_envs, self.cfg.chunks_per_rollout
        buf = _Buffer(B, T)
        reward, env_steps = torch.zeros(B, T), torch.zeros(B, T, dtype=torch.int64)
        term, trunc = torch.zeros(B, T, dtype=torch.bool), torch.zeros(B, T, dtype=torch.bool)
        valid = torch.ones(B, T, dtype=torch.bool)
        next_value = torch.zeros(B, T)
        ep_success, ep_len, ep_task, ep_init, ep_failed = [], [], [], [], []
        t_reset = 0.0
        if self._obs is None:
            t0 = time.perf_counter()
            tasks, inits = self.sample_starts(B)
            self._obs = env.reset(tasks, inits)
            self._len.zero_()
            self._task, self._init = tasks.clone(), inits.clone()
            t_reset = time.perf_counter() - t0
        self._reset_s = 0.0

        def act(obs: Observation, rows: torch.Tensor, t: int):
            return self._act(buf, obs, rows, t), rows

        def record(res, rows: torch.Tensor, t: int) -> Observation:
            mine = torch.zeros(B, dtype=torch.bool)
            mine[rows] = True
            reward[rows, t] = res.reward.cpu().sum(1)[rows]
            env_steps[rows, t] = res.valid.cpu().sum(1)[rows]
            term[rows, t], trunc[rows, t] = res.terminated.cpu()[rows], res.truncated.cpu()[rows]
            self._len[rows] += env_steps[rows, t]
            ended = (term[:, t] | trunc[:, t]) & mine
            lost = res.info["failed"].cpu() & mine if "failed" in res.info else torch.zeros(B, dtype=torch.bool)
            valid[lost, t] = False  # the chunk never ran (or its results are gone): counted, not trained on
            tr_rows = (trunc[:, t] & mine & ~lost).nonzero().flatten()
            v = self._bootstrap(res.obs, tr_rows)
            if v is not None:
                next_value[tr_rows, t] = v
            obs = res.obs
            if bool(ended.any()):
                idx = ended.nonzero().flatten()
                ep_success.append(term[idx, t] & res.success.cpu()[idx])
                ep_failed.append(lost[idx])
                ep_len.append(self._len[idx].clone())
                ep_task.append(self._task[idx].clone())
                ep_init.append(self._init[idx].clone())
                self._len[idx] = 0
                tasks, inits = self.sample_starts(B)
                self._task = torch.where(ended, tasks, self._task)
                self._init = torch.where(ended, inits, self._init)
                t2 = time.perf_counter()
                obs = env.reset(tasks, inits, mask=ended.to(env.device))
                self._reset_s += time.perf_counter() - t2
            return obs

        stages = self._stages()
        self._pipeline(stages, self._obs, T, act, record)
        t_env, t_policy = self._timing
        obs = self._obs = merge_obs(self._stage_obs, stages)
        rows = torch.arange(B)
        last = self._bootstrap(obs, rows)
        if last is not None:
            cont = ~(term[:, -1] | trunc[:, -1])
            next_value[:, -1] = torch.where(cont, last, next_value[:, -1])

        def cat(xs, dtype):
            return torch.cat(xs) if xs else torch.zeros(0, dtype=dtype)

        batch = self._finish(buf, T, reward, valid, term, trunc, env_steps, next_value,
                             cat(ep_success, torch.bool), cat(ep_len, torch.int64), cat(ep_task, torch.int64),
                             cat(ep_init, torch.int64), None, t_env + t_reset, t_policy)
        batch.episode_failed = cat(ep_failed, torch.bool)
        return batch


def merge_obs(stage_obs: list[Observation], stages: list[torch.Tensor]) -> Observation:
    """One observation of every env from per-stage observations (each current on its own stage's rows)."""
    if len(stage_obs) == 1:
        return stage_obs[0]
    out: Observation = {}
    for k, v in stage_obs[0].items():
        if isinstance(v, list):
            merged = list(v)
            for o, rows in zip(stage_obs, stages):
                for i in rows.tolist():
                    merged[i] = o[k][i]
            out[k] = merged
        else:
            merged = v.clone()
            for o, rows in zip(stage_obs, stages):
                idx = rows.to(v.device)
                merged[idx] = o[k][idx]
            out[k] = merged
    return out


_PER_EPISODE = ("episode_success", "episode_length", "episode_task", "episode_init", "episode_failed")


def cat_batches(batches: list[RolloutBatch]) -> RolloutBatch:
    """Stack the rows of several episodic batches (padding the time axis); group ids stay distinct."""
    if len(batches) == 1:
        return batches[0]
    T = max(b.valid.shape[1] for b in batches)

    def pad(x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == T:
            return x
        return torch.cat([x, torch.zeros(x.shape[0], T - x.shape[1], *x.shape[2:], dtype=x.dtype)], 1)

    def stack(xs: list, per_row: bool) -> torch.Tensor | None:
        if xs[0] is None:
            return None
        return torch.cat([pad(x) for x in xs] if per_row else xs)

    groups, offset = [], 0
    for b in batches:
        if b.group is not None:
            groups.append(b.group + offset)
            offset += int(b.group.max()) + 1 if b.group.numel() else 0
    out = {}
    for f in fields(RolloutBatch):
        xs = [getattr(b, f.name) for b in batches]
        if f.name in ("obs", "replay"):
            out[f.name] = {k: stack([x[k] for x in xs], True) for k in xs[0]}
        elif f.name == "instructions":
            out[f.name] = xs[0]
        elif f.name == "group":
            out[f.name] = torch.cat(groups) if groups else None
        elif f.name == "timing":
            out[f.name] = {k: sum(x.get(k, 0.0) for x in xs) for k in xs[0]}
        elif f.name == "lost_episodes":
            out[f.name] = sum(xs)
        else:
            out[f.name] = stack(xs, f.name not in _PER_EPISODE)
    return RolloutBatch(**out)


def select_rows(batch: RolloutBatch, keep: torch.Tensor) -> RolloutBatch:
    """The episodic batch (one episode per row) restricted to rows ``keep`` (bool (B,))."""
    idx = keep.nonzero().flatten()
    out = {}
    for f in fields(RolloutBatch):
        x = getattr(batch, f.name)
        if f.name in ("obs", "replay"):
            out[f.name] = {k: v[idx] for k, v in x.items()}
        elif f.name == "instructions":
            out[f.name] = x
        elif f.name == "timing":
            out[f.name] = dict(x)
        elif f.name == "lost_episodes":
            out[f.name] = x
        else:
            out[f.name] = None if x is None else x[idx]
    return RolloutBatch(**out)


__all__ = ["RolloutCollector", "RolloutConfig", "cat_batches", "merge_obs", "rollout_env_kwargs", "select_obs",
           "select_rows"]
