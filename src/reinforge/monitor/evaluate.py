"""Greedy evaluation with the Green-VLA monitors (arXiv 2602.00919): a progress head that stops the episode and
an OOD detector that scores it.

The env is built with ``end_on_success=False``: reaching the goal does not end an episode, so without a stopping
rule every episode runs to ``max_episode_steps`` and the policy keeps acting after success (it may undo it). The
policy acts chunk by chunk as in ``reinforge.eval.evaluate``; before each call the monitors read the same
observation:

- progress head: an episode STOPS (before acting) once predicted progress >= ``stop_threshold`` or the
  episode-end probability >= ``end_threshold`` on ``stop_patience`` consecutive policy calls;
- OOD detector: the call's Mahalanobis score; an episode's score is the max over its calls (or a quantile),
  and it is flagged when that score is above the detector's threshold.

Success is the goal predicate at the moment the episode ends (stop or time limit). ``ever_success`` is the goal
holding after any executed chunk (the moments the policy, and so a stopping rule, observes); an "undone success"
reached the goal at some chunk but not at the end. Episode ``k`` of a task starts from evaluation initial state
``k`` as in ``reinforge.eval.evaluate``, so runs with and without the head see the same scenes.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch

from reinforge.envs import EnvConfig, VecEnv, make_env
from reinforge.envs.base import env_options_class
from reinforge.eval.evaluate import seeded_stream
from reinforge.monitor.features import policy_features
from reinforge.monitor.ood import OODDetector, auroc, episode_scores
from reinforge.policies import Policy
from reinforge.progress import ProgressBar

log = logging.getLogger(__name__)

# the built-in world's shifts for OOD evaluation: visual / dynamics domains and initial-state perturbations
TABLETOP_SHIFTS: dict[str, dict[str, Any]] = {
    "real": {"domain": "real"}, "real-camera": {"domain": "real-camera"}, "real-colour": {"domain": "real-colour"},
    "real-noise": {"domain": "real-noise"}, "object_major": {"perturb": "object_major"},
    "robot_major": {"perturb": "robot_major"}, "combined_major": {"perturb": "combined_major"},
}


class ProgressMonitor(Protocol):
    """What the stopping rule needs of a progress head (``progress.ProgressHead`` is one)."""

    def predict(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(progress (B,), episode-end probability (B,)) of features (B, D)."""
        ...

    def check_policy(self, policy: Policy) -> None: ...


@dataclass
class StopRule:
    """Stop once progress >= ``threshold`` or end probability >= ``end_threshold`` on ``patience`` consecutive
    policy calls."""

    threshold: float = 0.9
    patience: int = 2
    end_threshold: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0 or not 0.0 < self.end_threshold <= 1.0:
            raise ValueError(f"stop thresholds must be in (0, 1]; got progress {self.threshold}, end "
                             f"{self.end_threshold} (use end_threshold=1.0 to stop on progress alone)")
        if self.patience < 1:
            raise ValueError(f"stop patience must be >= 1 policy call, got {self.patience}")


def stop_streak(streak: torch.Tensor, progress: torch.Tensor, end_prob: torch.Tensor, active: torch.Tensor,
                rule: StopRule) -> tuple[torch.Tensor, torch.Tensor]:
    """One policy call of the stopping rule: the consecutive-call counts (B,) int64 after this call's
    ``progress`` / ``end_prob`` (B,), and which ``active`` (B,) episodes stop now (B,) bool."""
    hit = (progress >= rule.threshold) | (end_prob >= rule.end_threshold)
    streak = torch.where(active & hit, streak + 1, torch.zeros_like(streak))
    return streak, active & (streak >= rule.patience)


@dataclass
class MonitoredResult:
    """Outcome of ``evaluate_monitored``; per-episode lists in (task, episode) order."""

    env: str
    suite: str
    split: str
    variant: dict[str, Any]
    monitors: list[str]
    success_rate: float
    mean_length: float
    stop_rate: float
    ever_success_rate: float
    undone_success_rate: float
    per_task: dict[str, float]
    num_episodes: int
    episodes_per_task: int
    max_episode_steps: int
    wall_s: float
    episode_success: list[bool] = field(default_factory=list)
    episode_length: list[int] = field(default_factory=list)
    episode_stopped: list[bool] = field(default_factory=list)
    episode_ever_success: list[bool] = field(default_factory=list)
    ood_threshold: float | None = None
    ood_scores: list[float] | None = None  # one per episode
    ood_flag_rate: float | None = None  # episodes whose score is above the threshold
    ood_call_flag_rate: float | None = None  # policy calls above the threshold
    failed_episodes: int = 0
    bank: str = "eval"  # the initial-state bank the episodes started from
    seed: int = 0  # the evaluation's random stream

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def monitored_env_config(env: EnvConfig) -> EnvConfig:
    """``env`` with ``end_on_success=False``; an env without that option cannot test a stopping rule."""
    opts = env_options_class(env.name)
    if opts is None or "end_on_success" not in {f.name for f in dataclasses.fields(opts)}:
        raise ValueError(f"env {env.name!r} has no end_on_success option: monitored evaluation needs episodes that "
                         "go on past success, so that the policy must stop itself (use --env tabletop)")
    return EnvConfig(name=env.name, suite=env.suite, device=env.device, image_size=env.image_size,
                     options={**env.options, "end_on_success": False})


def _actions(policy: Policy, obs: dict, env: VecEnv) -> torch.Tensor:
    a = policy.act(obs, mode="greedy").actions.detach().float().cpu()
    if a.dim() != 3 or a.shape[0] != env.num_envs or a.shape[2] != env.action_dim:
        raise ValueError(f"the policy returned actions of shape {tuple(a.shape)}; the env expects "
                         f"({env.num_envs}, H, {env.action_dim}); is the policy trained for this embodiment?")
    return a


def _run_batch(policy: Policy, env: VecEnv, tasks: list[int], inits: list[int], progress: ProgressMonitor | None,
               ood: OODDetector | None, rule: StopRule) -> dict[str, torch.Tensor]:
    """One episode in each of the first ``len(tasks)`` env slots (the rest idle), to its stop or time limit."""
    B, n = env.num_envs, len(tasks)
    obs = env.reset(tasks + tasks[:1] * (B - n), inits + inits[:1] * (B - n))
    done = torch.arange(B) >= n
    zeros = torch.zeros(B, dtype=torch.bool)
    success, ever, stopped, failed = zeros.clone(), zeros.clone(), zeros.clone(), zeros.clone()
    length, streak = torch.zeros(B, dtype=torch.int64), torch.zeros(B, dtype=torch.int64)
    scores: list[torch.Tensor] = []
    called: list[torch.Tensor] = []
    while not bool(done.all()):
        if progress is not None or ood is not None:
            feats = policy_features(policy, obs)
            if ood is not None:
                scores.append(ood.score_features(feats).cpu())
                called.append(~done)
            if progress is not None:
                p, end = progress.predict(feats)
                streak, stop = stop_streak(streak, p.cpu(), end.cpu(), ~done, rule)
                stopped |= stop
                done |= stop
                if bool(done.all()):
                    break
        res = env.step_chunk(_actions(policy, obs, env).to(env.device), active=(~done).to(env.device))
        live = ~done
        length += torch.where(live, res.valid.cpu().sum(1), 0)
        success = torch.where(live, res.success.cpu(), success)
        ever |= success & live
        if "failed" in res.info:
            failed |= res.info["failed"].cpu() & live
        done |= (res.terminated.cpu() | res.truncated.cpu()) & live
        obs = res.obs
    out = {"success": success & ~failed, "ever": ever, "stopped": stopped, "length": length, "failed": failed}
    if ood is not None:
        out["call_scores"], out["called"] = torch.stack(scores, 1), torch.stack(called, 1)
    return {k: v[:n] for k, v in out.items()}


def _summarise(parts: list[dict[str, torch.Tensor]], ood: OODDetector | None, ood_quantile: float | None
               ) -> dict[str, Any]:
    """Per-episode lists and rates from the batches' outputs."""
    cat = {k: torch.cat([p[k] for p in parts]) for k in ("success", "ever", "stopped", "length", "failed")}
    ok, ever = cat["success"], cat["ever"]
    out: dict[str, Any] = {
        "success_rate": float(ok.float().mean()), "mean_length": float(cat["length"].float().mean()),
        "stop_rate": float(cat["stopped"].float().mean()), "ever_success_rate": float(ever.float().mean()),
        "undone_success_rate": float((ever & ~ok).float().mean()), "failed_episodes": int(cat["failed"].sum()),
        "episode_success": ok.tolist(), "episode_length": cat["length"].tolist(),
        "episode_stopped": cat["stopped"].tolist(), "episode_ever_success": ever.tolist()}
    if ood is not None:
        scores = torch.cat([episode_scores(p["call_scores"], p["called"], quantile=ood_quantile) for p in parts])
        flagged = sum(int(((p["call_scores"] > ood.threshold) & p["called"]).sum()) for p in parts)
        calls = sum(int(p["called"].sum()) for p in parts)
        out.update(ood_threshold=ood.threshold, ood_scores=scores.tolist(),
                   ood_flag_rate=float((scores > ood.threshold).float().mean()),
                   ood_call_flag_rate=flagged / max(calls, 1))
    return out


def evaluate_monitored(policy: Policy, env_cfg: EnvConfig, *, progress: ProgressMonitor | None = None,
                       ood: OODDetector | None = None, stop_threshold: float = 0.9, stop_patience: int = 2,
                       end_threshold: float = 0.5, episodes_per_task: int = 10, split: str = "train",
                       max_envs: int = 100, tasks: list[int | str] | None = None,
                       max_episode_steps: int | None = None, ood_quantile: float | None = None,
                       show_progress: bool = False, seed: int = 0, bank: str = "eval") -> MonitoredResult:
    """Greedy episodes of ``policy`` on every task of ``env_cfg``'s suite (or ``tasks``) with the env built with
    ``end_on_success=False``; with ``progress`` the stopping rule ends episodes, with ``ood`` every policy call is
    scored (see the module docstring). ``max_episode_steps`` overrides the suite's time limit. Episodes start
    from ``bank``'s fixed initial states; ``seed`` fixes the evaluation's random stream (a flow policy's initial
    noise), so the same call gives the same numbers, and leaves the caller's stream as it was."""
    if episodes_per_task < 1 or max_envs < 1:
        raise ValueError(f"episodes_per_task and max_envs must be >= 1, got {episodes_per_task} and {max_envs}")
    rule = StopRule(stop_threshold, stop_patience, end_threshold)
    env = monitored_env_config(env_cfg)
    kw: dict[str, Any] = {} if env.image_size else {"image_size": policy.config.image_size}
    if max_episode_steps is not None:
        kw["max_episode_steps"] = max_episode_steps
    probe = make_env(env, num_envs=1, split=split, **kw)
    spec = probe.spec
    probe.close()
    policy.bind_env(spec)  # dims; the embodiment a unified-space policy acts as
    for monitor in (progress, ood):
        if monitor is not None:
            monitor.check_policy(policy)
    bank = spec.bank(bank)
    task_ids = list(range(spec.num_tasks)) if tasks is None else [spec.task_index(t) for t in tasks]
    slots = [(t, k) for t in task_ids for k in range(episodes_per_task)]
    t0, parts = time.perf_counter(), []
    bar = ProgressBar(f"monitored eval {spec.suite}/{split}", len(slots), enabled=show_progress)
    sim = make_env(env, num_envs=min(max_envs, len(slots)), split=split, init_bank=bank, **kw)
    with seeded_stream(seed):
        try:
            for start in range(0, len(slots), sim.num_envs):
                batch = slots[start:start + sim.num_envs]
                parts.append(_run_batch(policy, sim, [t for t, _ in batch], [spec.init_id(k) for _, k in batch],
                                        progress, ood, rule))
                bar.advance(len(batch))
        finally:
            sim.close()
            bar.close()
    summary = _summarise(parts, ood, ood_quantile)
    if summary["failed_episodes"]:
        log.warning("%d of %d episodes were lost to simulator faults; they count as failures",
                    summary["failed_episodes"], len(slots))
    per = torch.tensor(summary["episode_success"], dtype=torch.float).view(len(task_ids), episodes_per_task).mean(1)
    return MonitoredResult(
        env=spec.env, suite=spec.suite, split=split, variant=dict(spec.variant),
        monitors=[name for name, m in (("progress", progress), ("ood", ood)) if m is not None],
        per_task={spec.tasks[t].name: float(v) for t, v in zip(task_ids, per)}, num_episodes=len(slots),
        episodes_per_task=episodes_per_task, max_episode_steps=spec.max_episode_steps,
        wall_s=time.perf_counter() - t0, bank=bank, seed=seed, **summary)


def shifted_env_config(env: EnvConfig, shift: dict[str, Any]) -> EnvConfig:
    """``env`` with a shift applied: env options (e.g. ``{"domain": "real"}``, ``{"perturb": "robot_major"}``)
    and optionally another ``suite`` (e.g. ``{"suite": "goal"}``)."""
    opts = {k: v for k, v in shift.items() if k != "suite"}
    return EnvConfig(name=env.name, suite=shift.get("suite", env.suite), device=env.device,
                     image_size=env.image_size, options={**env.options, **opts})


def shift_aurocs(nominal: MonitoredResult, shifted: dict[str, MonitoredResult]) -> dict[str, float]:
    """AUROC of episode OOD scores, nominal episodes (negatives) vs each shift's episodes (positives)."""
    if nominal.ood_scores is None:
        raise ValueError("the nominal evaluation has no OOD scores: pass ood= to evaluate_monitored")
    neg = torch.tensor(nominal.ood_scores)
    out = {}
    for name, r in shifted.items():
        if r.ood_scores is None:
            raise ValueError(f"the evaluation of shift {name!r} has no OOD scores: pass ood= to evaluate_monitored")
        out[name] = auroc(neg, torch.tensor(r.ood_scores))
    return out
