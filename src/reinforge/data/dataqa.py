"""DataQA: score, filter and temporally align demonstration datasets (Green-VLA, arXiv 2602.00919).

Green-VLA scores every demonstration on jitter, image sharpness, diversity and state variance, drops the
episodes that fail, and temporally aligns the rest so that one motion speed holds across datasets. This module
does the same for reinforge datasets (``dataset.py``), with these deliberate deviations:

- **Speed proxy.** Green-VLA estimates motion speed from optical flow. We use the upper quartile of the per-step
  displacement of the state's position dims (``eef_x/y/z``; all state dims standardised when no dim is named like a
  position), over the frames that are not idle: proprioception is exact and free in simulation, while optical
  flow of 64x64 renders is noisy and costs a flow model. The proxy ignores rotation-only motion.
- **Jitter** is measured on the training targets (``expert_action`` when the dataset has it, else ``action``):
  the executed actions of DART-style demonstrations are noisy by design.
- **Thresholds are unit-free**: jitter in units of the dataset's action scale, idle tolerances in units of the
  dataset's per-step scales, sharpness / state spread / speed relative to the dataset median, duration as a
  robust z-score within a task. One config therefore fits datasets of other image sizes and embodiments.
- **Alignment repairs instead of dropping.** With ``align``, episodes flagged only by the tempo rules
  (``speed``, ``duration``) are resampled to the common speed and kept; content defects are dropped.
- Two rules Green-VLA has no need for: ``duplicate`` (a start state nearly equal to an earlier one of the same
  task) and ``failed`` (recorded with ``success=false``; SFT ignores those episodes anyway).
"""

from __future__ import annotations

import json
import logging
import math
import re
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from reinforge import fsutil
from reinforge.config import check, load_config, to_dict
from reinforge.data.dataset import ACTION_KEY, IMAGE_PREFIX, STATE_KEY, DemoDataset, EpisodeWriter

log = logging.getLogger(__name__)

Rule = Literal["jitter", "sharpness", "idle", "duration", "state_variance", "duplicate", "speed", "failed"]
RULES: tuple[Rule, ...] = typing.get_args(Rule)
ALIGNABLE: tuple[Rule, ...] = ("speed", "duration")  # tempo defects that resampling repairs
EPS = 1e-8


@dataclass
class DataQAConfig:
    """Thresholds of the DataQA rules (see ``configs/dataqa.yaml``); an episode fails a rule when its score is
    past the threshold."""

    rules: tuple[Rule, ...] = RULES  # the rules applied (the others are scored but flag nothing)
    max_jitter: float = 0.25  # mean squared 2nd difference of the delta actions, in action-scale units
    min_sharpness_ratio: float = 0.5  # Laplacian variance below this fraction of the dataset median
    min_sharpness: float = 0.0  # and an absolute floor (grayscale in [0, 1]); 0 = off
    idle_state_tol: float = 0.05  # a step is still when every state dim moves < this x its per-step std ...
    idle_action_tol: float = 0.05  # ... and every delta action is < this x the action scale
    idle_min_frames: int = 5  # still runs at least this long count as idle
    max_idle_fraction: float = 0.15  # flag when more of the episode than this is idle
    max_idle_run: int = 12  # or when one idle run is longer than this (frames)
    max_duration_z: float = 3.5  # |robust z| of the length within its task (median / MAD)
    min_mad_fraction: float = 0.05  # MAD floor, as a fraction of the task's median length
    min_task_episodes: int = 3  # tasks with fewer episodes get no duration z-score (0)
    min_state_spread_ratio: float = 0.2  # state spread below this fraction of the dataset median
    min_start_distance: float = 0.01  # standardised distance to an earlier start of the same task
    max_speed_ratio: float = 1.3  # speed / dataset median outside [1 / x, x]
    align_tolerance: float = 0.1  # alignment leaves episodes within 10% of the target speed as they are

    def __post_init__(self) -> None:
        check(all(r in RULES for r in self.rules) and len(set(self.rules)) == len(self.rules), "rules", self.rules,
              f"must be a list of distinct rules out of {list(RULES)}")
        for name in ("max_jitter", "min_sharpness", "idle_state_tol", "idle_action_tol", "min_start_distance",
                     "align_tolerance"):
            check(getattr(self, name) >= 0, name, getattr(self, name), "must be >= 0")
        check(0 <= self.min_sharpness_ratio < 1, "min_sharpness_ratio", self.min_sharpness_ratio, "must be in [0, 1)")
        check(0 <= self.min_state_spread_ratio < 1, "min_state_spread_ratio", self.min_state_spread_ratio,
              "must be in [0, 1)")
        check(self.idle_min_frames >= 2, "idle_min_frames", self.idle_min_frames, "must be >= 2")
        check(0 < self.max_idle_fraction <= 1, "max_idle_fraction", self.max_idle_fraction, "must be in (0, 1]")
        check(self.max_idle_run >= self.idle_min_frames, "max_idle_run", self.max_idle_run,
              f"must be >= idle_min_frames ({self.idle_min_frames})")
        check(self.max_duration_z > 0, "max_duration_z", self.max_duration_z, "must be > 0")
        check(0 < self.min_mad_fraction < 1, "min_mad_fraction", self.min_mad_fraction, "must be in (0, 1)")
        check(self.min_task_episodes >= 2, "min_task_episodes", self.min_task_episodes, "must be >= 2")
        check(self.max_speed_ratio > 1, "max_speed_ratio", self.max_speed_ratio, "must be > 1")


def load_dataqa_config(path: str | Path | None = None, overrides: list[str] | None = None) -> DataQAConfig:
    """The config from a YAML file (default: the defaults) with ``key=value`` overrides."""
    return load_config(DataQAConfig, path, overrides)


# ---------------------------------------------------------------------------------------------- episodes


@dataclass
class Episode:
    """One episode as numpy arrays: ``images`` uint8 (T, V, 3, H, W), ``states`` (T, S), executed ``actions``
    (T, D), ``labels`` (T, D) the expert's noise-free actions, and its meta record (task_id, success, ...)."""

    images: np.ndarray
    states: np.ndarray
    actions: np.ndarray
    labels: np.ndarray
    instruction: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def length(self) -> int:
        return int(len(self.actions))


def episode(ds: DemoDataset, i: int) -> Episode:
    """Episode ``i`` (an index into ``ds.episodes``) of a loaded dataset."""
    start, n = int(ds.episode_start[i]), int(ds.episodes[i]["length"])
    sl = slice(start, start + n)
    meta = {k: v for k, v in ds.episodes[i].items() if k not in ("episode_index", "tasks", "length")}
    return Episode(images=ds.images[sl].numpy(), states=ds.states[sl].numpy(), actions=ds.actions[sl].numpy(),
                   labels=ds.labels[sl].numpy(), instruction=ds.instruction(start), meta=meta)


@dataclass(frozen=True)
class DataLayout:
    """Which dims are which, from the names in ``meta/info.json``: action dims whose name starts with ``d``
    (``dx`` ... ``dyaw``, ``dq_elbow``) are deltas, the rest (``gripper``) absolute (every dim is a delta when
    no name starts with ``d``, e.g. unnamed ``action_0`` ...); state dims named like a position
    (``eef_x``, ``pos_y``, not ``eef_axis_angle_x``) are the position."""

    action_names: tuple[str, ...]
    state_names: tuple[str, ...]

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> DataLayout:
        feats, rec = info.get("features", {}), info.get("reinforge", {})
        names = [feats.get(k, {}).get("names") or rec.get(f"{n}_names") or
                 [f"{n}_{i}" for i in range(feats[k]["shape"][0])]
                 for k, n in ((ACTION_KEY, "action"), (STATE_KEY, "state"))]
        return cls(tuple(names[0]), tuple(names[1]))

    @property
    def delta_dims(self) -> list[int]:
        d = [i for i, n in enumerate(self.action_names) if n.lower().startswith("d")]
        return d or list(range(len(self.action_names)))

    @property
    def absolute_dims(self) -> list[int]:
        return [i for i in range(len(self.action_names)) if i not in self.delta_dims]

    @property
    def position_dims(self) -> list[int]:
        """Position dims of the state, or [] (then speed uses every state dim, standardised)."""
        rot = re.compile(r"angle|axis|rot|quat|euler|roll|pitch|yaw")
        pos = re.compile(r"(^|_)(pos(ition)?_?)?[xyz]$")
        return [i for i, n in enumerate(self.state_names) if pos.search(n.lower()) and not rot.search(n.lower())]


# ---------------------------------------------------------------------------------------------- scores


def jitter_score(actions: np.ndarray, scale: np.ndarray) -> float:
    """Energy of the second differences of (T, D) actions: mean over steps and dims of
    ``((a[t+1] - 2 a[t] + a[t-1]) / scale)^2`` with ``scale`` (D,) the dataset's action scale. 0 when T < 3."""
    if len(actions) < 3:
        return 0.0
    d2 = np.diff(actions / np.maximum(scale, EPS), n=2, axis=0)
    return float(np.mean(d2 ** 2))


def sharpness_score(frames: np.ndarray) -> float:
    """Mean over frames of the variance of the 4-neighbour Laplacian of the grayscale image (in [0, 1]) of
    uint8 frames (T, 3, H, W); low = blurred. The border pixels are left out."""
    f = frames.astype(np.float32) / 255.0
    gray = 0.299 * f[:, 0] + 0.587 * f[:, 1] + 0.114 * f[:, 2]  # (T, H, W)
    lap = (gray[:, :-2, 1:-1] + gray[:, 2:, 1:-1] + gray[:, 1:-1, :-2] + gray[:, 1:-1, 2:]
           - 4 * gray[:, 1:-1, 1:-1])
    return float(lap.reshape(len(f), -1).var(axis=1).mean())


def still_frames(states: np.ndarray, actions: np.ndarray, *, state_scale: np.ndarray, action_scale: np.ndarray,
                 state_tol: float, action_tol: float) -> np.ndarray:
    """(T,) bool: frame t is still when the step t -> t+1 moves every state dim of (T, S) ``states`` by less than
    ``state_tol * state_scale`` (S,) and every dim of (T, D) ``actions`` is below ``action_tol * action_scale``
    (D,). Dims with a zero scale are ignored; the last frame copies the step before it."""
    if len(states) < 2:
        return np.zeros(len(states), bool)
    use = state_scale > EPS
    step = np.abs(np.diff(states[:, use], axis=0)) / state_scale[use]
    still = (step < state_tol).all(axis=1)
    still = np.append(still, still[-1])
    act = action_scale > EPS
    return still & (np.abs(actions[:, act]) < action_tol * action_scale[act]).all(axis=1)


def idle_runs(still: np.ndarray, min_frames: int) -> np.ndarray:
    """(T,) bool mask of the frames in runs of at least ``min_frames`` consecutive True in ``still`` (T,)."""
    mask = np.zeros(len(still), bool)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], still.astype(np.int8), [0]])))
    for s, e in zip(edges[::2], edges[1::2]):
        if e - s >= min_frames:
            mask[s:e] = True
    return mask


def idle_score(idle: np.ndarray) -> tuple[float, int]:
    """(fraction of idle frames, longest idle run in frames) of an idle mask (T,)."""
    if not idle.any():
        return 0.0, 0
    edges = np.flatnonzero(np.diff(np.concatenate([[0], idle.astype(np.int8), [0]])))
    return float(idle.mean()), int((edges[1::2] - edges[::2]).max())


def duration_zscores(lengths: np.ndarray, groups: np.ndarray, *, min_mad_fraction: float = 0.05,
                     min_group: int = 3) -> np.ndarray:
    """Robust z-score (E,) of episode lengths (E,) within their group (task) (E,):
    ``(L - median) / (1.4826 * max(MAD, min_mad_fraction * median))``; 0 in groups smaller than ``min_group``."""
    z = np.zeros(len(lengths))
    for g in np.unique(groups):
        idx = groups == g
        if idx.sum() < min_group:
            continue
        med = np.median(lengths[idx])
        mad = max(np.median(np.abs(lengths[idx] - med)), min_mad_fraction * med, EPS)
        z[idx] = (lengths[idx] - med) / (1.4826 * mad)
    return z


def state_spread(states: np.ndarray, scale: np.ndarray) -> float:
    """How much the state of an episode changes: RMS over dims of the std over time of (T, S) ``states``
    divided by the dataset's per-dim ``scale`` (S,); dims with a zero scale are ignored."""
    use = scale > EPS
    if not use.any():
        return 0.0
    return float(np.sqrt(np.mean((states[:, use] / scale[use]).var(axis=0))))


def start_distances(starts: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For (E, S) standardised start states and their groups (E,): the distance (E,) of each start to the
    nearest other start of its group, and to the nearest *earlier* one (inf where there is none)."""
    d = np.linalg.norm(starts[:, None] - starts[None], axis=-1)
    d[groups[:, None] != groups[None]] = np.inf
    np.fill_diagonal(d, np.inf)
    earlier = np.where(np.tri(len(d), k=-1, dtype=bool), d, np.inf)
    return d.min(axis=1, initial=np.inf), earlier.min(axis=1, initial=np.inf)


def motion_speed(states: np.ndarray, idle: np.ndarray, scale: np.ndarray | None = None, *,
                 quantile: float = 0.75) -> float:
    """The cruise speed of an episode: the ``quantile`` (default the upper quartile) of the per-step
    displacement ``||s[t+1] - s[t]||`` of (T, S) position states over the steps whose frame is not idle (T,)
    (all steps when every frame is idle); ``scale`` (S,) divides each dim first.

    This is reinforge's motion-speed proxy (Green-VLA uses optical flow): proprioception is exact in simulation
    and needs no flow model. The upper quartile, not the median, because the share of slow approach phases
    differs between tasks; the cruise speed does not (on clean tabletop demos it stays within +-10% of the
    dataset median, the median within +-35%)."""
    if len(states) < 2:
        return 0.0
    x = states if scale is None else states / np.maximum(scale, EPS)
    step = np.linalg.norm(np.diff(x, axis=0), axis=1)
    moving = ~idle[:-1]
    return float(np.quantile(step[moving] if moving.any() else step, quantile))


# ---------------------------------------------------------------------------------------------- the report

# score column -> the rule it feeds (histogram panels, in order)
COLUMNS: dict[str, Rule] = {"jitter": "jitter", "sharpness": "sharpness", "idle_fraction": "idle",
                            "idle_run": "idle", "duration_z": "duration", "state_spread": "state_variance",
                            "start_distance": "duplicate", "speed_ratio": "speed"}


@dataclass(frozen=True)
class DatasetScales:
    """Per-dimension scales that make the scores unit-free: ``action`` (D,) half the q01..q99 range of the
    training targets (0 = constant dim), ``state_step`` (S,) the std of per-step state changes, ``state`` (S,)
    the std of the states and ``start`` (S,) the std of the episodes' first states."""

    action: np.ndarray
    state_step: np.ndarray
    state: np.ndarray
    start: np.ndarray

    @classmethod
    def of(cls, ds: DemoDataset) -> DatasetScales:
        labels, states = ds.labels.double().numpy(), ds.states.double().numpy()
        q01, q99 = np.quantile(labels, [0.01, 0.99], axis=0)
        inner = ds.frame_index.numpy()[1:] > 0  # steps within an episode
        steps = np.diff(states, axis=0)[inner]
        starts = states[ds.episode_start.numpy()]
        return cls(action=(q99 - q01) / 2, state_step=steps.std(axis=0) if len(steps) else np.zeros(ds.state_dim),
                   state=states.std(axis=0), start=starts.std(axis=0))


@dataclass
class DataQAReport:
    """DataQA of one dataset: ``rows`` one dict per episode (scores and the ``flags`` it fails), ``summary``
    (counts per rule, medians, per-task diversity, the alignment target speed) and ``thresholds`` (score column ->
    [low, high] in the column's units, None = no bound)."""

    root: str
    config: DataQAConfig
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    thresholds: dict[str, list[float | None]]

    def flagged(self, rule: Rule | None = None) -> list[int]:
        """Episodes (indices into the dataset's episodes) that fail ``rule`` (any rule when None)."""
        return [r["episode"] for r in self.rows if (rule in r["flags"] if rule else r["flags"])]

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.root, "config": to_dict(self.config), "summary": self.summary,
                "thresholds": self.thresholds, "episodes": self.rows}


def _idle_and_speed(ep: Episode, layout: DataLayout, cfg: DataQAConfig, scales: DatasetScales
                    ) -> tuple[np.ndarray, float]:
    """The idle mask (T,) and the motion speed of one episode (``still_frames``, ``idle_runs``,
    ``motion_speed`` on the position dims, or on every state dim standardised when none is named so)."""
    delta, pos = layout.delta_dims, layout.position_dims
    still = still_frames(ep.states, ep.labels[:, delta], state_scale=scales.state_step,
                         action_scale=scales.action[delta], state_tol=cfg.idle_state_tol,
                         action_tol=cfg.idle_action_tol)
    idle = idle_runs(still, cfg.idle_min_frames)
    speed = motion_speed(ep.states[:, pos], idle) if pos else motion_speed(ep.states, idle, scales.state)
    return idle, speed


def _score_episodes(ds: DemoDataset, cfg: DataQAConfig, scales: DatasetScales) -> list[dict[str, Any]]:
    """The per-episode scores that need no other episode (see the score functions)."""
    layout = DataLayout.from_info(ds.info)
    delta = layout.delta_dims
    moving = scales.action[delta] > EPS  # constant action dims carry no jitter
    cams = [k[len(IMAGE_PREFIX):] for k in ds.info["features"] if k.startswith(IMAGE_PREFIX)]
    view = cams.index("agentview") if "agentview" in cams else 0
    rows = []
    for i in range(ds.num_episodes):
        ep = episode(ds, i)
        idle, speed = _idle_and_speed(ep, layout, cfg, scales)
        fraction, run = idle_score(idle)
        rows.append({
            "episode": i, "episode_index": int(ds.episodes[i]["episode_index"]),
            "task": int(ds.task_index[int(ds.episode_start[i])]), "length": ep.length,
            "success": bool(ep.meta.get("success", True)),
            "jitter": jitter_score(ep.labels[:, delta][:, moving], scales.action[delta][moving]),
            "sharpness": sharpness_score(ep.images[:, view]), "idle_fraction": fraction, "idle_run": run,
            "state_spread": state_spread(ep.states, scales.state), "speed": speed,
            **({"defect": ep.meta["defect"]} if "defect" in ep.meta else {})})
    return rows


def _add_relative_scores(rows: list[dict[str, Any]], ds: DemoDataset, cfg: DataQAConfig,
                         scales: DatasetScales) -> None:
    """The scores that compare an episode with the others: duration z, start distances, speed ratio."""
    groups = np.array([r["task"] for r in rows])
    z = duration_zscores(np.array([r["length"] for r in rows], float), groups,
                         min_mad_fraction=cfg.min_mad_fraction, min_group=cfg.min_task_episodes)
    use = scales.start > EPS
    starts = ds.states.double().numpy()[ds.episode_start.numpy()][:, use] / scales.start[use]
    nearest, earlier = start_distances(starts, groups)
    median_speed = float(np.median([r["speed"] for r in rows]))
    for r, zi, n, e in zip(rows, z, nearest, earlier):
        r["duration_z"] = float(zi)
        r["start_distance"] = float(n) if math.isfinite(n) else None
        r["_earlier_start"] = float(e)
        r["speed_ratio"] = r["speed"] / median_speed if median_speed > EPS else 1.0


def _thresholds(rows: list[dict[str, Any]], cfg: DataQAConfig) -> dict[str, list[float | None]]:
    """[low, high] bounds per score column, in the column's units (relative rules use the dataset median)."""
    sharp = float(np.median([r["sharpness"] for r in rows]))
    spread = float(np.median([r["state_spread"] for r in rows]))
    return {"jitter": [None, cfg.max_jitter],
            "sharpness": [max(cfg.min_sharpness, cfg.min_sharpness_ratio * sharp), None],
            "idle_fraction": [None, cfg.max_idle_fraction], "idle_run": [None, float(cfg.max_idle_run)],
            "duration_z": [-cfg.max_duration_z, cfg.max_duration_z],
            "state_spread": [cfg.min_state_spread_ratio * spread, None],
            "start_distance": [cfg.min_start_distance, None],
            "speed_ratio": [1 / cfg.max_speed_ratio, cfg.max_speed_ratio]}


def _flags(r: dict[str, Any], th: dict[str, list[float | None]], rules: tuple[Rule, ...]) -> list[str]:
    """The rules that row ``r`` fails."""

    def out(col: str, value: float) -> bool:
        lo, hi = th[col]
        return (lo is not None and value < lo) or (hi is not None and value > hi)

    fails = {"jitter": out("jitter", r["jitter"]), "sharpness": out("sharpness", r["sharpness"]),
             "idle": out("idle_fraction", r["idle_fraction"]) or out("idle_run", r["idle_run"]),
             "duration": out("duration_z", r["duration_z"]), "state_variance": out("state_spread", r["state_spread"]),
             "duplicate": r["_earlier_start"] < (th["start_distance"][0] or 0.0),
             "speed": out("speed_ratio", r["speed_ratio"]),
             "failed": not r["success"]}
    return [rule for rule in RULES if rule in rules and fails[rule]]



def _diversity(rows: list[dict[str, Any]], ds: DemoDataset, scales: DatasetScales) -> dict[str, dict[str, Any]]:
    """Per task: episodes, the spread of the start states (RMS std over dims, in units of the dataset's start
    std) and the mean distance of a start to its nearest other start of the task."""
    use = scales.start > EPS
    starts = ds.states.double().numpy()[ds.episode_start.numpy()][:, use] / scales.start[use]
    out = {}
    for t in sorted({r["task"] for r in rows}):
        idx = [r["episode"] for r in rows if r["task"] == t]
        near = [r["start_distance"] for r in rows if r["task"] == t and r["start_distance"] is not None]
        spread = float(np.sqrt(starts[idx].var(axis=0).mean())) if starts.shape[1] else 0.0
        out[ds.tasks[t]] = {"task": t, "episodes": len(idx), "start_spread": spread,
                            "mean_nearest_start": float(np.mean(near)) if near else None}
    return out


def dataqa_report(dataset: DemoDataset | str | Path, config: DataQAConfig | None = None) -> DataQAReport:
    """Score every episode of ``dataset`` (a folder is loaded with its failed episodes) and flag the ones that
    fail the rules of ``config`` (default: ``DataQAConfig()``)."""
    cfg = config or DataQAConfig()
    ds = dataset if isinstance(dataset, DemoDataset) else DemoDataset.load(dataset, success_only=False)
    scales = DatasetScales.of(ds)
    rows = _score_episodes(ds, cfg, scales)
    _add_relative_scores(rows, ds, cfg, scales)
    th = _thresholds(rows, cfg)
    for r in rows:
        r["flags"] = _flags(r, th, cfg.rules)
        del r["_earlier_start"]
    in_tempo = [r["speed"] for r in rows if "speed" not in r["flags"] and "failed" not in r["flags"]]
    summary = {
        "episodes": len(rows), "frames": ds.num_frames, "tasks": len({r["task"] for r in rows}),
        "flagged": sum(bool(r["flags"]) for r in rows), "clean": sum(not r["flags"] for r in rows),
        "per_rule": {rule: sum(rule in r["flags"] for r in rows) for rule in RULES},
        "medians": {c: float(np.median([r[c] for r in rows])) for c in ("jitter", "sharpness", "state_spread",
                                                                         "speed", "length")},
        "target_speed": float(np.median(in_tempo)) if in_tempo else float(np.median([r["speed"] for r in rows])),
        "diversity": _diversity(rows, ds, scales)}
    log.info("DataQA of %s: %d of %d episodes flagged %s", ds.root, summary["flagged"], len(rows),
             {k: v for k, v in summary["per_rule"].items() if v})
    return DataQAReport(root=str(ds.root), config=cfg, rows=rows, summary=summary, thresholds=th)


TABLE_COLUMNS = ("episode", "task", "length", "jitter", "sharpness", "idle_fraction", "idle_run", "duration_z",
                 "state_spread", "start_distance", "speed_ratio", "flags")


def format_cell(value: Any) -> str:
    """A report cell as text: floats with 3 significant digits, lists comma-joined, None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list | tuple):
        return ", ".join(map(str, value)) or "-"
    return str(value)


def rule_summary(report: DataQAReport) -> list[tuple[str, str, int]]:
    """(rule, what passing it takes, episodes flagged) per rule, in ``RULES`` order."""
    th, per_rule = report.thresholds, report.summary["per_rule"]

    def bounds(col: str) -> list[str]:
        lo, hi = th[col]
        return ([f"{col} >= {lo:.3g}"] if lo is not None else []) + ([f"{col} <= {hi:.3g}"] if hi is not None else [])

    text = {rule: " and ".join(bounds(col)) for col, rule in COLUMNS.items() if col != "idle_run"}
    text["idle"] += f" and idle_run <= {th['idle_run'][1]:.0f}"
    text["duplicate"] = f"distance to an earlier start of its task >= {th['start_distance'][0]:.3g}"
    text["failed"] = "success = true"
    return [(rule, text[rule] + ("" if rule in report.config.rules else " (off)"), per_rule[rule]) for rule in RULES]


def report_markdown(report: DataQAReport, *, flagged_only: bool = False) -> str:
    """The report as markdown: a rule summary, then one row per episode (only the flagged ones if asked)."""
    s = report.summary
    lines = [f"# DataQA: {report.root}", "",
             f"{s['episodes']} episodes ({s['frames']} frames, {s['tasks']} tasks): {s['flagged']} flagged, "
             f"{s['clean']} clean. Alignment target speed {s['target_speed']:.4g}.", "",
             "| rule | passes when | flagged |", "|---|---|---|"]
    lines += [f"| {rule} | {text} | {n} |" for rule, text, n in rule_summary(report)]
    cols = TABLE_COLUMNS + (("defect",) if any("defect" in r for r in report.rows) else ())  # injected truth
    lines += ["", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in report.rows:
        if r["flags"] or not flagged_only:
            lines.append("| " + " | ".join(format_cell(r.get(c)) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def plot_histograms(report: DataQAReport, path: str | Path) -> Path:
    """One histogram per score column with its threshold lines (dashed red), saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(16, 6.5))
    for ax, col in zip(axes.flat, COLUMNS):
        values = [r[col] for r in report.rows if r[col] is not None]
        ax.hist(values, bins=min(30, max(5, len(values) // 2)), color="tab:blue", alpha=0.8)
        for bound in report.thresholds[col]:
            if bound is not None:
                ax.axvline(bound, color="tab:red", linestyle="--")
        ax.set_title(f"{col} ({report.summary['per_rule'][COLUMNS[col]]} flagged by {COLUMNS[col]})", fontsize=9)
    fig.suptitle(f"DataQA: {report.root}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def write_report(report: DataQAReport, folder: str | Path) -> dict[str, Path]:
    """Write ``dataqa.json``, ``dataqa.md`` and ``dataqa_hist.png`` into ``folder``; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "dataqa.json", "markdown": folder / "dataqa.md", "histograms": folder / "dataqa_hist.png"}
    fsutil.write_text_atomic(paths["json"], json.dumps(report.to_dict(), indent=1))
    fsutil.write_text_atomic(paths["markdown"], report_markdown(report))
    plot_histograms(report, paths["histograms"])
    return paths


# ---------------------------------------------------------------------------------------------- alignment


def resample_times(length: int, rate: float) -> np.ndarray:
    """New frame times (T',) in old-frame units for an episode of ``length`` frames resampled with ``rate`` new
    frames per old frame (2.0 = twice the frames, i.e. half the speed): evenly spaced from 0 to ``length - 1``,
    so that the first and last frames are kept exactly; ``T' = round((length - 1) * rate) + 1`` (at least 2)."""
    if not rate > 0:
        raise ValueError(f"resampling rate must be > 0, got {rate}")
    if length < 2:
        return np.zeros(length)
    return np.linspace(0.0, length - 1, max(2, round((length - 1) * rate) + 1))


def integrate_deltas(deltas: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Delta actions (T', D) at new frame ``times`` (T',) from old per-step deltas (T, D): the new action at
    ``t_k`` is the old actions summed (or split) over ``[t_k, t_k + dt)``, ``dt`` the new step, taking old
    action ``a_j`` to act uniformly over ``[j, j + 1)`` (the last one continues past the end)."""
    T = len(deltas)
    dt = float(times[1] - times[0]) if len(times) > 1 else 1.0
    cum = np.concatenate([np.zeros((1, deltas.shape[1])), np.cumsum(deltas, axis=0, dtype=np.float64)])

    def position(t: np.ndarray) -> np.ndarray:  # integral of the actions from 0 to t, (T', D)
        j = np.clip(np.floor(t).astype(np.int64), 0, T - 1)
        return cum[j] + (t - j)[:, None] * deltas[j]

    return position(times + dt) - position(times)


def resample_episode(ep: Episode, rate: float, *, delta_dims: Sequence[int]) -> Episode:
    """``ep`` resampled with ``rate`` new frames per old frame (see ``resample_times``): states linearly
    interpolated, images and absolute action dims from the nearest old frame, the ``delta_dims`` of actions and
    labels re-integrated (``integrate_deltas``) and clipped to [-1, 1]. The first and last states are kept
    exactly; the meta is copied."""
    T = ep.length
    times = resample_times(T, rate)
    if T < 2:
        return Episode(ep.images, ep.states, ep.actions, ep.labels, ep.instruction, dict(ep.meta))
    j0 = np.clip(np.floor(times).astype(np.int64), 0, T - 2)
    w = (times - j0)[:, None]
    states = ep.states[j0] * (1 - w) + ep.states[j0 + 1] * w
    nearest = np.clip(np.floor(times + 0.5).astype(np.int64), 0, T - 1)
    delta = list(delta_dims)

    def actions(a: np.ndarray) -> np.ndarray:
        out = a[nearest].astype(np.float64)
        out[:, delta] = np.clip(integrate_deltas(a[:, delta].astype(np.float64), times), -1.0, 1.0)
        return out.astype(a.dtype)

    return Episode(images=ep.images[nearest], states=states.astype(ep.states.dtype), actions=actions(ep.actions),
                   labels=actions(ep.labels), instruction=ep.instruction, meta=dict(ep.meta))


def episode_speed(ep: Episode, ds: DemoDataset, config: DataQAConfig | None = None) -> float:
    """The motion-speed proxy of an episode in the units ``dataqa_report`` uses for dataset ``ds`` (e.g. to
    align a new episode to ``report.summary["target_speed"]``)."""
    return _idle_and_speed(ep, DataLayout.from_info(ds.info), config or DataQAConfig(), DatasetScales.of(ds))[1]


def align_episode(ep: Episode, speed: float, target_speed: float, *, delta_dims: Sequence[int],
                  tolerance: float = 0.0) -> Episode:
    """``ep`` (motion speed ``speed``) resampled to ``target_speed``: a slow episode gets fewer frames, a fast
    one more. Within ``tolerance`` (relative) of the target it is left as it is. Its meta records
    ``speed_ratio`` = speed / target_speed (e.g. for a speed-conditioning input)."""
    if not (speed > 0 and target_speed > 0):
        raise ValueError(f"cannot align an episode of speed {speed} to {target_speed}: both must be > 0")
    ratio = speed / target_speed
    out = ep if abs(ratio - 1) <= tolerance else resample_episode(ep, ratio, delta_dims=delta_dims)
    meta = {**ep.meta, "speed_ratio": round(ratio, 6)}
    return Episode(out.images, out.states, out.actions, out.labels, out.instruction, meta)


# ---------------------------------------------------------------------------------------------- filtering


def dataset_writer(ds: DemoDataset, out: str | Path, *, extra_info: dict[str, Any] | None = None,
                   overwrite: bool = False) -> EpisodeWriter:
    """An ``EpisodeWriter`` for a dataset derived from ``ds``: same fps, cameras, image size and layout, and
    ``ds``'s ``reinforge`` info (env, suite, layout, variant, ...) updated with ``extra_info``. Refuses to
    write over ``ds`` itself."""
    if Path(out).resolve() == Path(ds.root).resolve():
        raise ValueError(f"--out {out} is the source dataset itself; write the new dataset to another folder")
    cams = tuple(k[len(IMAGE_PREFIX):] for k in ds.info["features"] if k.startswith(IMAGE_PREFIX))
    layout = DataLayout.from_info(ds.info)
    info = {"action_names": list(layout.action_names), "state_names": list(layout.state_names),
            **ds.info.get("reinforge", {}), **(extra_info or {})}
    H, W = ds.images.shape[-2:]
    return EpisodeWriter(out, fps=ds.info.get("fps", 20), image_size=(int(H), int(W)), state_dim=ds.state_dim,
                         action_dim=ds.action_dim, camera_names=cams, extra_info=info, overwrite=overwrite)


def write_episode(writer: EpisodeWriter, ep: Episode, **meta: Any) -> int:
    """Append ``ep`` (its meta updated with ``meta``) to ``writer``."""
    return writer.add_episode(ep.images, ep.states, ep.actions, ep.instruction, expert_actions=ep.labels,
                              **{**ep.meta, **meta})


@dataclass
class FilterResult:
    """What ``filter_dataset`` did: the new dataset's ``path``, the source's ``report``, the ``kept`` episodes
    (indices into the source's episodes), the ``dropped`` ones with the rules they failed, how many were
    ``resampled`` and the alignment ``target_speed`` (None without alignment)."""

    path: Path
    report: DataQAReport
    kept: list[int]
    dropped: dict[int, list[str]]
    resampled: int
    target_speed: float | None


def _decide(report: DataQAReport, align: bool) -> tuple[list[int], dict[int, list[str]], list[int]]:
    """(kept, dropped -> rules, rescued): with ``align``, episodes that fail only tempo rules are kept."""
    kept, dropped, rescued = [], {}, []
    for r in report.rows:
        if not r["flags"]:
            kept.append(r["episode"])
        elif align and set(r["flags"]) <= set(ALIGNABLE):
            kept.append(r["episode"])
            rescued.append(r["episode"])
        else:
            dropped[r["episode"]] = list(r["flags"])
    return kept, dropped, rescued


def filter_dataset(src: str | Path, out: str | Path, config: DataQAConfig | None = None, align: bool = False, *,
                   target_speed: float | None = None, overwrite: bool = False) -> FilterResult:
    """Write a new dataset at ``out`` holding the episodes of ``src`` that pass DataQA. With ``align`` the kept
    episodes are resampled to one motion speed (``target_speed``, default the median of the in-tempo episodes)
    and episodes that fail only the tempo rules (speed, duration) are kept and resampled instead of dropped.
    The new info.json records, under ``reinforge.dataqa``, the config and the counts kept / dropped per rule."""
    cfg = config or DataQAConfig()
    ds = DemoDataset.load(src, success_only=False)
    writer = dataset_writer(ds, out, overwrite=overwrite)
    try:
        report = dataqa_report(ds, cfg)
        kept, dropped, rescued = _decide(report, align)
        if not kept:
            raise ValueError(f"DataQA flagged every episode of {src}; loosen the thresholds (see --config) or "
                             "inspect the report (--report-dir)")
        target = (target_speed or report.summary["target_speed"]) if align else None
        layout, resampled = DataLayout.from_info(ds.info), 0
        for i in kept:
            ep, speed = episode(ds, i), report.rows[i]["speed"]
            if target is not None and speed > 0:  # a motionless episode has no tempo to align
                ep = align_episode(ep, speed, target, delta_dims=layout.delta_dims, tolerance=cfg.align_tolerance)
                resampled += abs(speed / target - 1) > cfg.align_tolerance
            write_episode(writer, ep, source_episode=int(ds.episodes[i]["episode_index"]))
        writer.extra_info["dataqa"] = {
            "config": to_dict(cfg), "source": str(ds.root), "aligned": align, "target_speed": target,
            "episodes_in": ds.num_episodes, "kept": len(kept), "dropped": len(dropped), "resampled": resampled,
            "rescued_by_alignment": len(rescued), "flagged_per_rule": report.summary["per_rule"],
            "dropped_per_rule": {rule: sum(rule in f for f in dropped.values()) for rule in RULES}}
        path = writer.close()
    except BaseException:
        writer.abort()
        raise
    log.info("DataQA filter: kept %d of %d episodes of %s -> %s", len(kept), ds.num_episodes, src, path)
    return FilterResult(path=path, report=report, kept=kept, dropped=dropped, resampled=resampled,
                        target_speed=target)
