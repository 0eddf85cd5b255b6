"""On-disk demonstration datasets laid out like a LeRobot (v2.1) dataset, and their loader.

```
ROOT/
  meta/info.json        format version, fps, features (dtype, shape, names), counts, data path template
  meta/tasks.jsonl      {"task_index": k, "task": "<instruction>"}
  meta/episodes.jsonl   {"episode_index": i, "tasks": [...], "length": n, "task_id", "init_id", "success", ...}
  meta/stats.json       per feature: mean, std, min, max, q01, q99 (actions are normalised with q01/q99)
  data/chunk-000/episode_000000.parquet
```

Each parquet row is one frame: one ``observation.images.<camera>`` column per camera (``agentview`` /
``wrist`` for the built-in world; PNG bytes in a ``{bytes, path}`` struct, as LeRobot stores image
features), ``observation.state`` (S floats), ``action`` (D floats), ``timestamp``, ``frame_index``,
``episode_index``, ``index``, ``task_index``, ``next.reward``, ``next.done``. A dataset is written into a
temporary folder and renamed into place when complete, so a killed recording never leaves a half-written dataset
behind. ``meta/info.json`` names every state / action dimension and records, under ``reinforge``, the env,
suite and layout it was recorded in.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from reinforge import fsutil

log = logging.getLogger(__name__)

CODEBASE_VERSION = "v2.1"
CHUNK_SIZE = 1000
DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
IMAGE_PREFIX = "observation.images."
IMAGE_KEYS = ("observation.images.agentview", "observation.images.wrist")  # the built-in world's cameras
STATE_KEY = "observation.state"
ACTION_KEY = "action"
LABEL_KEY = "expert_action"  # optional: the demonstrator's noise-free action in the same state


class DatasetError(ValueError):
    """A dataset on disk is missing, corrupt or does not match what the caller expects."""


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _unpng(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def compute_stats(x: torch.Tensor) -> dict[str, list[float]]:
    """Per-dimension statistics of (F, D) float data, as LeRobot/OpenVLA store them."""
    x = x.double()
    q = torch.quantile(x, torch.tensor([0.01, 0.99], dtype=torch.float64), dim=0)
    return {"mean": x.mean(0).tolist(), "std": x.std(0, unbiased=False).tolist(), "min": x.min(0).values.tolist(),
            "max": x.max(0).values.tolist(), "q01": q[0].tolist(), "q99": q[1].tolist()}


class EpisodeWriter:
    """Writes episodes into ``root`` (atomically: a temporary folder renamed when ``close`` succeeds)."""

    def __init__(self, root: str | Path, *, fps: float, image_size: tuple[int, int], state_dim: int,
                 action_dim: int, camera_names: tuple[str, ...] = ("agentview", "wrist"),
                 extra_info: dict[str, Any] | None = None, overwrite: bool = False):
        self.root = Path(root)
        fsutil.settle(self.root)
        if self.root.exists() and (not self.root.is_dir() or any(self.root.iterdir())) and not overwrite:
            raise DatasetError(f"{self.root} already exists and is not empty; choose another --out or pass "
                               "--overwrite")
        # --overwrite replaces a reinforge dataset only, never a folder of other files
        self.tmp = fsutil.begin(self.root, "dataset", "with --out")
        (self.tmp / "meta").mkdir(parents=True)
        self.fps, self.image_size, self.state_dim, self.action_dim = fps, image_size, state_dim, action_dim
        self.image_keys = tuple(IMAGE_PREFIX + c for c in camera_names)
        self.extra_info = extra_info or {}
        self.tasks: dict[str, int] = {}
        self.episodes: list[dict[str, Any]] = []
        self.total_frames = 0
        self._states: list[np.ndarray] = []
        self._actions: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []

    def add_episode(self, images: np.ndarray, states: np.ndarray, actions: np.ndarray, instruction: str,
                    expert_actions: np.ndarray | None = None, **meta: Any) -> int:
        """Append one episode: images (T, V, 3, H, W) uint8, states (T, S), executed actions (T, D) and
        optionally the expert's noise-free actions (T, D)."""
        T = len(actions)
        if not (len(images) == len(states) == T) or T == 0:
            raise DatasetError(f"episode arrays disagree in length: images {len(images)}, states {len(states)}, "
                               f"actions {T}")
        if actions.shape[1] != self.action_dim or states.shape[1] != self.state_dim:
            raise DatasetError(f"episode has action dim {actions.shape[1]} / state dim {states.shape[1]}, dataset "
                               f"expects {self.action_dim} / {self.state_dim}")
        ep = len(self.episodes)
        task_index = self.tasks.setdefault(instruction, len(self.tasks))
        cols: dict[str, Any] = {}
        if images.shape[1] != len(self.image_keys):
            raise DatasetError(f"episode has {images.shape[1]} camera views, dataset expects {len(self.image_keys)}")
        for v, key in enumerate(self.image_keys):
            cols[key] = [{"bytes": _png(images[t, v].transpose(1, 2, 0)), "path": None} for t in range(T)]
        cols[STATE_KEY] = pa.array(list(states.astype(np.float32)), type=pa.list_(pa.float32(), self.state_dim))
        cols[ACTION_KEY] = pa.array(list(actions.astype(np.float32)), type=pa.list_(pa.float32(), self.action_dim))
        labels = actions if expert_actions is None else expert_actions
        if labels.shape != actions.shape:
            raise DatasetError(f"expert_actions shape {labels.shape} differs from actions {actions.shape}")
        cols[LABEL_KEY] = pa.array(list(labels.astype(np.float32)), type=pa.list_(pa.float32(), self.action_dim))
        cols["timestamp"] = pa.array(np.arange(T, dtype=np.float32) / self.fps)
        cols["frame_index"] = pa.array(np.arange(T, dtype=np.int64))
        cols["episode_index"] = pa.array(np.full(T, ep, dtype=np.int64))
        cols["index"] = pa.array(np.arange(self.total_frames, self.total_frames + T, dtype=np.int64))
        cols["task_index"] = pa.array(np.full(T, task_index, dtype=np.int64))
        success = bool(meta.get("success", False))
        reward = np.zeros(T, np.float32)
        reward[-1] = float(success)
        done = np.zeros(T, bool)
        done[-1] = True
        cols["next.reward"] = pa.array(reward)
        cols["next.done"] = pa.array(done)
        path = self.tmp / DATA_PATH.format(episode_chunk=ep // CHUNK_SIZE, episode_index=ep)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(cols), path)
        self.episodes.append({"episode_index": ep, "tasks": [instruction], "length": T, **meta})
        self.total_frames += T
        self._states.append(states.astype(np.float32))
        self._actions.append(actions.astype(np.float32))
        self._labels.append(labels.astype(np.float32))
        return ep

    def _info(self) -> dict[str, Any]:
        H, W = self.image_size
        image = {"dtype": "image", "shape": [H, W, 3], "names": ["height", "width", "channels"]}
        state_names = self.extra_info.get("state_names") or [f"state_{i}" for i in range(self.state_dim)]
        action_names = self.extra_info.get("action_names") or [f"action_{i}" for i in range(self.action_dim)]
        return {
            "codebase_version": CODEBASE_VERSION, "robot_type": f"reinforge_{self.extra_info.get('env', 'tabletop')}",
            "fps": self.fps,
            "total_episodes": len(self.episodes), "total_frames": self.total_frames,
            "total_tasks": len(self.tasks), "chunks_size": CHUNK_SIZE,
            "total_chunks": (len(self.episodes) + CHUNK_SIZE - 1) // CHUNK_SIZE, "data_path": DATA_PATH,
            "features": {
                **{key: image for key in self.image_keys},
                STATE_KEY: {"dtype": "float32", "shape": [self.state_dim], "names": list(state_names)},
                ACTION_KEY: {"dtype": "float32", "shape": [self.action_dim], "names": list(action_names)},
                LABEL_KEY: {"dtype": "float32", "shape": [self.action_dim], "names": list(action_names)},
                "timestamp": {"dtype": "float32", "shape": [1]}, "frame_index": {"dtype": "int64", "shape": [1]},
                "episode_index": {"dtype": "int64", "shape": [1]}, "index": {"dtype": "int64", "shape": [1]},
                "task_index": {"dtype": "int64", "shape": [1]}, "next.reward": {"dtype": "float32", "shape": [1]},
                "next.done": {"dtype": "bool", "shape": [1]},
            },
            "reinforge": self.extra_info,
        }

    def abort(self) -> None:
        """Drop what was written so far (the folder at ``root`` is left as it was)."""
        fsutil.abort(self.tmp)

    def close(self) -> Path:
        """Write the meta files and move the dataset into place."""
        if not self.episodes:
            self.abort()
            raise DatasetError("no episodes were recorded; nothing to write")
        try:
            meta = self.tmp / "meta"
            (meta / "info.json").write_text(json.dumps(self._info(), indent=2))
            (meta / "tasks.jsonl").write_text("".join(json.dumps({"task_index": i, "task": t}) + "\n"
                                                      for t, i in self.tasks.items()))
            (meta / "episodes.jsonl").write_text("".join(json.dumps(e) + "\n" for e in self.episodes))
            stats = {STATE_KEY: compute_stats(torch.from_numpy(np.concatenate(self._states))),
                     ACTION_KEY: compute_stats(torch.from_numpy(np.concatenate(self._actions))),
                     LABEL_KEY: compute_stats(torch.from_numpy(np.concatenate(self._labels)))}
            (meta / "stats.json").write_text(json.dumps(stats, indent=2))
            return fsutil.commit(self.tmp, self.root, "dataset")
        except BaseException:
            self.abort()
            raise


@dataclass
class DemoDataset:
    """A demonstration dataset loaded into memory as tensors (frames of all episodes concatenated).

    ``images`` uint8 (F, V, 3, H, W), ``states`` (F, S), ``actions`` (F, D) executed, ``labels`` (F, D) the
    expert's noise-free actions (the executed ones when the dataset has none), ``episode_index``,
    ``frame_index``, ``task_index`` int64 (F,); ``episodes`` the per-episode meta records;
    ``episode_start`` (E,) the first frame of each episode; ``stats`` the meta/stats.json content.
    """

    root: Path
    info: dict[str, Any]
    tasks: list[str]
    episodes: list[dict[str, Any]]
    stats: dict[str, dict[str, list[float]]]
    images: torch.Tensor
    states: torch.Tensor
    actions: torch.Tensor
    labels: torch.Tensor
    episode_index: torch.Tensor
    frame_index: torch.Tensor
    task_index: torch.Tensor
    episode_start: torch.Tensor
    # (F,) int64 position of each frame's embodiment in a policy's table, once converted to the unified action
    # space (``reinforge.data.unified``); None for a dataset in its native layout
    embodiment_id: torch.Tensor | None = None

    @property
    def num_frames(self) -> int:
        return int(self.actions.shape[0])

    @property
    def num_episodes(self) -> int:
        return len(self.episodes)

    @property
    def action_dim(self) -> int:
        return int(self.actions.shape[1])

    @property
    def state_dim(self) -> int:
        return int(self.states.shape[1])

    @property
    def num_views(self) -> int:
        return int(self.images.shape[1])

    @property
    def recorded_in(self) -> dict[str, Any]:
        """Where the data comes from: env (default ``tabletop`` for older datasets), suite, layout names."""
        rec = dict(self.info.get("reinforge", {}))
        rec.setdefault("env", "tabletop")
        return rec

    def instruction(self, frame: int) -> str:
        return self.tasks[int(self.task_index[frame])]

    def action_chunk(self, frames: torch.Tensor, horizon: int, labels: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Actions of ``frames`` (B,) and the next ``horizon - 1`` steps of the same episode: (B, H, D),
        with a (B, H) bool mask that is True on padding past the episode end. ``labels`` takes the
        expert's noise-free actions instead of the executed ones."""
        ep = self.episode_index[frames]
        lengths = torch.tensor([e["length"] for e in self.episodes])[ep]
        offs = self.frame_index[frames][:, None] + torch.arange(horizon)[None]
        is_pad = offs >= lengths[:, None]
        idx = self.episode_start[ep][:, None] + offs.clamp(max=lengths[:, None] - 1)
        return (self.labels if labels else self.actions)[idx], is_pad

    @classmethod
    def load(cls, root: str | Path, *, expect_action_dim: int | None = None,
             expect_image_size: tuple[int, int] | None = None, success_only: bool = True) -> DemoDataset:
        """Load and validate a dataset; raises ``DatasetError`` saying what is wrong and what to do."""
        root = fsutil.settle(root)
        if not root.is_dir():
            raise DatasetError(f"dataset {root} does not exist (record one with `reinforge demos --out {root}`)")
        info = _read_json(root / "meta" / "info.json", root)
        feats = info.get("features", {})
        image_keys = [k for k in feats if k.startswith(IMAGE_PREFIX)]
        missing = [k for k in (STATE_KEY, ACTION_KEY) if k not in feats] + ([] if image_keys else [IMAGE_PREFIX + "*"])
        if missing:
            raise DatasetError(f"{root}: meta/info.json lacks features {missing}; this is not a reinforge "
                               "demonstration dataset (record one with `reinforge demos`)")
        D, S = feats[ACTION_KEY]["shape"][0], feats[STATE_KEY]["shape"][0]
        H, W = feats[image_keys[0]]["shape"][:2]
        if expect_action_dim is not None and expect_action_dim != D:
            raise DatasetError(f"{root}: actions have {D} dims but {expect_action_dim} are expected; the dataset "
                               "was recorded for another embodiment")
        if expect_image_size is not None and tuple(expect_image_size) != (H, W):
            raise DatasetError(f"{root}: images are {H}x{W} but {expect_image_size[0]}x{expect_image_size[1]} "
                               "are expected; re-record with --image-size or change the policy config")
        tasks = [r["task"] for r in _read_records(root / "meta" / "tasks.jsonl", root, ("task",))]
        episodes = _read_records(root / "meta" / "episodes.jsonl", root, ("episode_index", "length"))
        if len(episodes) != info.get("total_episodes"):
            raise DatasetError(f"{root}: meta/episodes.jsonl lists {len(episodes)} episodes but info.json says "
                               f"{info.get('total_episodes')}; the dataset is incomplete, re-record it")
        stats = _read_json(root / "meta" / "stats.json", root)
        _check_stats(stats, root, S, D)
        keep = [e for e in episodes if e.get("success", True) or not success_only]
        if not keep:
            raise DatasetError(f"{root}: no successful episodes to load")
        parts = [_read_episode(root, info, e, (H, W), S, D, image_keys) for e in keep]
        lengths = torch.tensor([p[0].shape[0] for p in parts])
        start = torch.cumsum(lengths, 0) - lengths
        return cls(
            root=root, info=info, tasks=tasks, episodes=keep, stats=stats,
            images=torch.cat([p[0] for p in parts]), states=torch.cat([p[1] for p in parts]),
            actions=torch.cat([p[2] for p in parts]), labels=torch.cat([p[4] for p in parts]),
            episode_index=torch.repeat_interleave(torch.arange(len(keep)), lengths),
            frame_index=torch.cat([torch.arange(n) for n in lengths.tolist()]),
            task_index=torch.cat([p[3] for p in parts]), episode_start=start)


def _check_stats(stats: dict[str, Any], root: Path, S: int, D: int) -> None:
    """meta/stats.json must give finite per-dimension statistics of the right length for state and action."""
    f = root / "meta" / "stats.json"
    for key, dim in ((STATE_KEY, S), (ACTION_KEY, D), (LABEL_KEY, D)):
        if key not in stats:
            if key == LABEL_KEY:
                continue
            raise DatasetError(f"{f} lacks statistics of {key!r}; the dataset is corrupt, re-record it")
        for name in ("mean", "std", "q01", "q99"):
            v = stats[key].get(name) if isinstance(stats[key], dict) else None
            if not isinstance(v, list) or len(v) != dim:
                raise DatasetError(f"{f}: {key}.{name} must be a list of {dim} numbers; the dataset is corrupt, "
                                   "re-record it")
            if not all(isinstance(x, int | float) and np.isfinite(x) for x in v):
                raise DatasetError(f"{f}: {key}.{name} holds NaN, inf or non-numbers; the dataset is corrupt, "
                                   "re-record it")


def _read_json(path: Path, root: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DatasetError(f"{root} is not a dataset: {path.relative_to(root)} is missing (record one with "
                           "`reinforge demos --out DIR`)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path} is not valid JSON ({e}); the dataset is corrupt, re-record it") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path} is not a JSON object; the dataset is corrupt, re-record it")
    return data


def _read_records(path: Path, root: Path, need: tuple[str, ...]) -> list[dict[str, Any]]:
    """The JSON objects of a .jsonl meta file, each with the keys ``need``."""
    if not path.is_file():
        raise DatasetError(f"{root}: {path.relative_to(root)} is missing; the dataset is incomplete")
    rows = []
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict) or any(k not in row for k in need):
            raise DatasetError(f"{path} line {n} is not a JSON object with {list(need)}; the dataset is corrupt, "
                               "re-record it")
        rows.append(row)
    return rows


def _read_episode(root: Path, info: dict[str, Any], ep: dict[str, Any], hw: tuple[int, int], S: int, D: int,
                  image_keys: list[str]):
    i = ep["episode_index"]
    path = root / info["data_path"].format(episode_chunk=i // info.get("chunks_size", CHUNK_SIZE), episode_index=i)
    if not path.is_file():
        raise DatasetError(f"{root}: episode {i} file {path.relative_to(root)} is missing; re-record the dataset")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise DatasetError(f"{path} is not a readable parquet file ({e}); the dataset is corrupt, re-record it"
                           ) from None
    cols = set(table.column_names)
    need = {*image_keys, STATE_KEY, ACTION_KEY, "task_index"}
    if not need <= cols:
        raise DatasetError(f"{path} lacks columns {sorted(need - cols)}; the dataset is corrupt or of another kind")
    T = table.num_rows
    if ep["length"] != T:
        raise DatasetError(f"{path} has {T} frames but meta/episodes.jsonl says {ep['length']}; re-record it")
    actions = np.asarray(table.column(ACTION_KEY).to_pylist(), np.float32).reshape(T, -1)
    states = np.asarray(table.column(STATE_KEY).to_pylist(), np.float32).reshape(T, -1)
    if actions.shape[1] != D or states.shape[1] != S:
        raise DatasetError(f"{path}: actions/states have dims {actions.shape[1]}/{states.shape[1]}, info.json "
                           f"declares {D}/{S}; the dataset is inconsistent")
    if not (np.isfinite(actions).all() and np.isfinite(states).all()):
        raise DatasetError(f"{path} contains NaN or inf actions/states; the dataset is corrupt")
    views = []
    for key in image_keys:
        try:
            frames = [_unpng(cell["bytes"]) for cell in table.column(key).to_pylist()]
        except Exception as e:  # PIL raises several types for bad data
            raise DatasetError(f"{path}: cannot decode {key} images ({e}); the dataset is corrupt") from None
        arr = np.stack(frames)
        if arr.shape[1:3] != tuple(hw):
            raise DatasetError(f"{path}: {key} images are {arr.shape[1]}x{arr.shape[2]}, info.json says "
                               f"{hw[0]}x{hw[1]}")
        views.append(arr.transpose(0, 3, 1, 2))
    images = torch.from_numpy(np.stack(views, 1))
    task_index = torch.from_numpy(np.asarray(table.column("task_index").to_pylist(), np.int64))
    labels = actions
    if LABEL_KEY in cols:
        labels = np.asarray(table.column(LABEL_KEY).to_pylist(), np.float32).reshape(T, -1)
        if labels.shape != actions.shape or not np.isfinite(labels).all():
            raise DatasetError(f"{path}: {LABEL_KEY} is malformed (shape {labels.shape}, or NaN); re-record it")
    return images, torch.from_numpy(states), torch.from_numpy(actions), task_index, torch.from_numpy(labels)
