"""Outside demonstrations in: LIBERO's HDF5 demonstration files and LeRobot datasets (codebase v2.1 and v3.0),
written into reinforge's dataset layout (``dataset.py``) with its statistics, so ``reinforge sft`` trains on them.

**LIBERO** (``import_libero``): the robomimic-style files LIBERO publishes, ``<suite>/<task name>_demo.hdf5`` with
``data/demo_<i>/{actions (T, 7), obs/agentview_rgb, obs/eye_in_hand_rgb (T, H, W, 3) uint8, obs/ee_states (T, 6),
obs/gripper_states (T, 2)}``, and OpenVLA's regenerated "no-noops" files (same datasets, no attributes).

- The instruction is taken from the file name as LIBERO's benchmark does (``grab_language_from_filename``: the
  scene prefix up to ``SCENE<n>_`` dropped, underscores to spaces), so it is the string the LIBERO env gives.
- State: end-effector position and axis-angle (``ee_states``) and the two finger joints (``gripper_states``) =
  the LIBERO env's 8-dim ``state``. Actions as stored (OSC deltas in [-1, 1], gripper -1 open / +1 close).
- Images: MuJoCo renders rows bottom-up (``macros_image_convention`` "opengl", the default when the attribute is
  missing): both axes are flipped, as the LIBERO env does for its observations (an "opencv" file is flipped
  left-right only). Resized to ``image_size`` (PIL, antialiased) when given.
- LIBERO's own files store the observation *after* each action (its ``create_dataset.py`` steps, then records);
  such files (they carry ``env_args`` on ``data``) are re-paired so that each action comes with the observation
  it was taken in: frame t's images and state with action t + 1 (the first action is dropped). OpenVLA's
  regenerated files record before the action and are kept as they are. ``obs_after_action`` overrides.
- ``drop_noops``: actions that do not move the arm (``|a[:6]| < 1e-4``) and keep the gripper command are dropped,
  as OpenVLA's regeneration does (a policy trained on the pauses of teleoperation learns to stand still).
- Episodes are demonstrations: ``success`` true. Task ids follow LIBERO's order of the suite when LIBERO is
  installed, else the order of the files.

**LeRobot** (``import_lerobot``): ``meta/info.json`` names the version. v2.1: ``meta/episodes.jsonl``,
``meta/tasks.jsonl``, one parquet file (``data_path``) and one mp4 per camera (``video_path``) per episode. v3.0:
``meta/episodes/chunk-*/file-*.parquet`` (one row per episode: its data and video file and its time range in the
video), ``meta/tasks.parquet``, many episodes per data parquet and per mp4. Image features are PNG/JPEG bytes in
the parquet (``{bytes, path}``); video features are decoded with the ffmpeg that imageio-ffmpeg ships (AV1 through
libdav1d, h264, ...). The state and action features are chosen by name; the cameras are every image / video
feature in ``info.json`` order unless ``cameras`` picks some, stored under ``camera_names`` (the names the target
env uses, e.g. ``agentview,robot0_eye_in_hand`` for LIBERO).

Every bad input is a ``DatasetError`` naming the file and what is wrong; the output is written atomically (a
temporary folder renamed when complete).
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from reinforge.data.dataset import DatasetError, EpisodeWriter

Progress = Callable[[int, int], None]
NOOP_EPS = 1e-4


# ---------------------------------------------------------------------------------------------- shared helpers


def _resize(frames: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """(T, H, W, 3) uint8 resized to ``size`` (H, W) with PIL's antialiased bicubic filter; as is when None."""
    if size is None or frames.shape[1:3] == tuple(size):
        return frames
    h, w = size
    return np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.BICUBIC)) for f in frames])


def _size(image_size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if image_size is None or image_size == 0:
        return None
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if int(h) < 8 or int(w) < 8:
        raise DatasetError(f"--image-size must be at least 8 pixels, got {image_size!r}")
    return int(h), int(w)


def _check_finite(name: str, x: np.ndarray, where: str) -> None:
    if not np.isfinite(x).all():
        raise DatasetError(f"{where}: {name} holds NaN or inf; the source data is corrupt")


def _noop_mask(actions: np.ndarray) -> np.ndarray:
    """True for actions to keep: those that move the arm or change the gripper command (OpenVLA's rule)."""
    keep = np.ones(len(actions), dtype=bool)
    last_gripper = None
    for t, a in enumerate(actions):
        still = float(np.linalg.norm(a[:6])) < NOOP_EPS
        if still and (last_gripper is None or a[-1] == last_gripper):
            keep[t] = False
            continue
        last_gripper = a[-1]
    return keep


# ---------------------------------------------------------------------------------------------- LIBERO HDF5


def libero_instruction(path: str | Path) -> str:
    """The instruction of a LIBERO demonstration file, from its name, as LIBERO's benchmark derives it."""
    name = Path(path).name
    name = re.sub(r"_demo\.hdf5$", "", name)
    name = re.sub(r"\.hdf5$", "", name)
    m = re.search(r"SCENE\d+_", name)
    if m and name[:1].isupper():  # libero_10 / libero_90: "KITCHEN_SCENE3_turn_on_the_stove..."
        name = name[m.end():]
    return name.replace("_", " ").strip()


def _h5py():
    try:
        import h5py
    except ImportError:
        raise ImportError("importing LIBERO's HDF5 files needs h5py: pip install 'reinforge[libero]' (or pip "
                          "install h5py)") from None
    return h5py


def _libero_files(sources: Sequence[str | Path]) -> list[Path]:
    files: list[Path] = []
    for s in sources:
        p = Path(s)
        if p.is_dir():
            found = sorted(p.glob("*.hdf5"))
            if not found:
                raise DatasetError(f"{p} holds no .hdf5 files (LIBERO's are named <task>_demo.hdf5)")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise DatasetError(f"{p} does not exist (give LIBERO .hdf5 files or folders of them)")
    return files


def _demo_keys(data: Any, where: str) -> list[str]:
    keys = [k for k in data if re.fullmatch(r"demo_\d+", k)]
    if not keys:
        raise DatasetError(f"{where}: the data group holds no demo_<i> groups; this is not a LIBERO demonstration "
                           "file")
    return sorted(keys, key=lambda k: int(k.split("_")[1]))


def _read_libero_demo(demo: Any, where: str, flip: str, after: bool, drop_noops: bool,
                      size: tuple[int, int] | None) -> dict[str, np.ndarray] | None:
    def need(key: str) -> np.ndarray:
        if key not in demo:
            raise DatasetError(f"{where}: {key} is missing; LIBERO files hold actions, obs/agentview_rgb, "
                               "obs/eye_in_hand_rgb, obs/ee_states and obs/gripper_states")
        return np.asarray(demo[key])

    actions = need("actions").astype(np.float32)
    views = [need("obs/agentview_rgb"), need("obs/eye_in_hand_rgb")]
    if "obs/ee_states" in demo:
        ee = np.asarray(demo["obs/ee_states"])
    else:
        ee = np.concatenate([need("obs/ee_pos"), need("obs/ee_ori")], axis=1)
    state = np.concatenate([ee, need("obs/gripper_states")], axis=1).astype(np.float32)
    T = len(actions)
    if actions.ndim != 2 or actions.shape[1] != 7:
        raise DatasetError(f"{where}: actions have shape {actions.shape}, LIBERO's are (T, 7)")
    if state.shape != (T, 8) or any(v.shape[0] != T or v.ndim != 4 or v.shape[3] != 3 for v in views):
        raise DatasetError(f"{where}: observation lengths or shapes disagree with the {T} actions (state "
                           f"{state.shape}, images {[v.shape for v in views]})")
    _check_finite("actions", actions, where)
    _check_finite("ee_states / gripper_states", state, where)
    if after:  # obs[t] was recorded after action t: pair obs[t] with action t + 1
        actions, state, views = actions[1:], state[:-1], [v[:-1] for v in views]
    if drop_noops:
        keep = _noop_mask(actions)
        actions, state, views = actions[keep], state[keep], [v[keep] for v in views]
    if len(actions) == 0:
        return None
    if flip == "both":
        views = [v[:, ::-1, ::-1] for v in views]
    elif flip == "horizontal":
        views = [v[:, :, ::-1] for v in views]
    views = [_resize(np.ascontiguousarray(v), size) for v in views]
    images = np.stack(views, 1).transpose(0, 1, 4, 2, 3)  # (T, V, 3, H, W)
    return {"images": np.ascontiguousarray(images), "states": state, "actions": actions}


def import_libero(sources: Sequence[str | Path], out: str | Path, *, suite: str, image_size: int | None = None,
                  drop_noops: bool = True, obs_after_action: bool | None = None, max_demos: int = 0,
                  overwrite: bool = False, progress: Progress | None = None) -> Path:
    """Import LIBERO demonstration files (or folders of them) of ``suite`` into a dataset at ``out``; see the
    module docstring. ``max_demos``: at most this many demonstrations per file (0 = all)."""
    from reinforge.envs import LIBERO_SUITES, libero_layout, libero_task_ids

    if suite not in LIBERO_SUITES:
        raise DatasetError(f"unknown LIBERO suite {suite!r}; valid suites: {list(LIBERO_SUITES)}")
    if max_demos < 0:
        raise DatasetError(f"--max-demos must be >= 0 (0 = all), got {max_demos}")
    h5py = _h5py()
    files = _libero_files(sources)
    size = _size(image_size)
    ids = libero_task_ids(suite)
    layout = libero_layout(suite)
    writer: EpisodeWriter | None = None
    done, total = 0, 0
    try:
        for k, path in enumerate(files):
            instruction = libero_instruction(path)
            try:
                f = h5py.File(path, "r")
            except OSError as e:
                raise DatasetError(f"{path} is not a readable HDF5 file ({e})") from None
            with f:
                if "data" not in f:
                    raise DatasetError(f"{path} has no 'data' group; this is not a LIBERO demonstration file")
                data = f["data"]
                convention = data.attrs.get("macros_image_convention", "opengl")
                convention = convention.decode() if isinstance(convention, bytes) else str(convention)
                flip = {"opengl": "both", "opencv": "horizontal"}.get(convention)
                if flip is None:
                    raise DatasetError(f"{path}: unknown macros_image_convention {convention!r} (opengl or opencv)")
                after = ("env_args" in data.attrs) if obs_after_action is None else obs_after_action
                keys = _demo_keys(data, str(path))
                keys = keys[:max_demos] if max_demos else keys
                total += len(keys)
                for key in keys:
                    ep = _read_libero_demo(data[key], f"{path}:{key}", flip, after, drop_noops, size)
                    if ep is None:
                        continue
                    if writer is None:
                        H, W = ep["images"].shape[-2:]
                        writer = EpisodeWriter(
                            out, fps=layout["control_hz"], image_size=(H, W), state_dim=8, action_dim=7,
                            camera_names=tuple(layout["camera_names"]), overwrite=overwrite,
                            extra_info={**layout, "imported_from": "libero_hdf5", "drop_noops": drop_noops})
                    writer.add_episode(ep["images"], ep["states"], ep["actions"], instruction,
                                       task_id=ids.get(instruction, k), init_id=int(key.split("_")[1]),
                                       success=True, suite=suite, split="train", source=f"{path.name}:{key}")
                    done += 1
                    if progress is not None:
                        progress(done, total)
        if writer is None:
            raise DatasetError(f"no demonstrations found in {[str(p) for p in files]}")
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return writer.close()


# ---------------------------------------------------------------------------------------------- LeRobot


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise DatasetError(f"{path} is missing; a LeRobot dataset has meta/info.json and its episode and task "
                           "tables")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path} is not valid JSON ({e})") from None


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DatasetError(f"{path} is missing; the LeRobot dataset is incomplete")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise DatasetError(f"{path} line {n} is not JSON; the LeRobot dataset is corrupt") from None
    return rows


def _parquet(path: Path) -> pa.Table:
    if not path.is_file():
        raise DatasetError(f"{path} is missing; the LeRobot dataset is incomplete")
    try:
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise DatasetError(f"{path} is not a readable parquet file ({e})") from None


def _decode_image(cell: Any, where: str) -> np.ndarray:
    data = cell.get("bytes") if isinstance(cell, dict) else None
    if not data:
        raise DatasetError(f"{where}: an image cell has no embedded bytes (images stored as separate files are not "
                           "supported; re-save the dataset with embedded images)")
    try:
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    except Exception as e:  # PIL raises several types
        raise DatasetError(f"{where}: cannot decode an image ({e})") from None


def read_video(path: Path, start_s: float, frames: int, size: tuple[int, int]) -> np.ndarray:
    """``frames`` RGB frames (frames, H, W, 3) of the mp4 at ``path`` from ``start_s`` seconds on (ffmpeg's
    accurate input seek), decoded by the ffmpeg imageio-ffmpeg ships (AV1 via libdav1d, h264, ...)."""
    import imageio_ffmpeg

    if not path.is_file():
        raise DatasetError(f"{path} is missing; the LeRobot dataset is incomplete")
    h, w = size
    params = ["-ss", f"{start_s:.6f}"] if start_s > 0 else []
    out = []
    try:
        gen = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24", input_params=params,
                                         output_params=["-frames:v", str(frames)])
        meta = next(gen)
        vw, vh = meta["size"]
        for raw in gen:
            out.append(np.frombuffer(raw, np.uint8).reshape(vh, vw, 3))
    except (RuntimeError, OSError, StopIteration) as e:
        raise DatasetError(f"{path}: cannot decode the video ({str(e).strip().splitlines()[-1] if str(e) else e})"
                           ) from None
    if len(out) < frames:
        raise DatasetError(f"{path}: {len(out)} frames from {start_s:.3f} s, the episode needs {frames}; the video "
                           "is truncated or the dataset's timestamps are wrong")
    arr = np.stack(out[:frames])
    return arr if (vh, vw) == (h, w) else _resize(arr, (h, w))


class _LeRobotSource:
    """The episodes of a LeRobot dataset (v2.1 or v3.0) as numpy arrays."""

    def __init__(self, root: Path, cameras: Sequence[str] | None, state_key: str, action_key: str):
        self.root = root
        self.info = _read_json(root / "meta" / "info.json")
        version = str(self.info.get("codebase_version", ""))
        if not re.match(r"v[23]\.", version):
            raise DatasetError(f"{root}: codebase_version {version!r} is not supported (v2.0, v2.1 or v3.0; convert "
                               "older datasets with LeRobot's scripts)")
        self.v3 = version.startswith("v3")
        feats = self.info.get("features")
        if not isinstance(feats, dict):
            raise DatasetError(f"{root}/meta/info.json has no features")
        self.fps = float(self.info.get("fps") or 0)
        if not (self.fps > 0 and math.isfinite(self.fps)):
            raise DatasetError(f"{root}/meta/info.json has no positive fps")
        visual = [k for k, f in feats.items() if isinstance(f, dict) and f.get("dtype") in ("image", "video")]
        if cameras:
            keys = [c if c in feats else f"observation.images.{c}" for c in cameras]
            bad = [c for c, k in zip(cameras, keys) if k not in visual]
            if bad:
                raise DatasetError(f"{root}: no image or video feature {bad}; it has {visual}")
        else:
            keys = visual
        if not keys:
            raise DatasetError(f"{root}: no image or video features; reinforge's policies need camera images")
        self.image_keys = keys
        for key in (state_key, action_key):
            f = feats.get(key)
            if not isinstance(f, dict) or len(f.get("shape", [])) != 1:
                numeric = [k for k, v in feats.items() if isinstance(v, dict) and v.get("dtype") in
                           ("float32", "float64") and len(v.get("shape", [])) == 1]
                raise DatasetError(f"{root}: no 1-D feature {key!r} (choose with --state-key / --action-key among "
                                   f"{numeric})")
        self.state_key, self.action_key = state_key, action_key
        self.state_dim, self.action_dim = int(feats[state_key]["shape"][0]), int(feats[action_key]["shape"][0])
        shapes = []
        for k in keys:
            shape = feats[k].get("shape", [])
            names = feats[k].get("names") or []
            hwc = len(shape) == 3 and (shape[2] == 3 or "channels" in str(names[-1:]) or "channel" in str(names[-1:]))
            shapes.append((shape[0], shape[1]) if hwc else (shape[1], shape[2]))
        if len(set(shapes)) != 1:
            raise DatasetError(f"{root}: cameras {keys} have different sizes {shapes}; import them separately or "
                               "pass --image-size")
        self.native_size = shapes[0]
        self._cached: tuple[Path | None, Any] = (None, None)  # the last v3 data file read (many episodes each)
        self.names = {"state": _names(feats[state_key], self.state_dim, "state"),
                      "action": _names(feats[action_key], self.action_dim, "action")}
        self._load_tables()

    def _load_tables(self) -> None:
        meta = self.root / "meta"
        if self.v3:
            tasks = _parquet(meta / "tasks.parquet").to_pylist()
            self.tasks = {int(r["task_index"]): str(r.get("task", r.get("__index_level_0__", ""))) for r in tasks}
            files = sorted((meta / "episodes").glob("chunk-*/file-*.parquet"))
            if not files:
                raise DatasetError(f"{meta}/episodes holds no chunk-*/file-*.parquet; the dataset is incomplete")
            self.episodes = []
            for f in files:
                table = _parquet(f)
                keep = [c for c in table.column_names if not c.startswith("stats/")]
                self.episodes += table.select(keep).to_pylist()
        else:
            self.tasks = {int(r["task_index"]): str(r["task"]) for r in _jsonl(meta / "tasks.jsonl")}
            self.episodes = _jsonl(meta / "episodes.jsonl")
        self.episodes.sort(key=lambda e: int(e["episode_index"]))
        for e in self.episodes:
            if "episode_index" not in e or "length" not in e:
                raise DatasetError(f"{meta}: an episode record lacks episode_index or length; the dataset is corrupt")

    def _data(self, ep: dict[str, Any]) -> pa.Table:
        i = int(ep["episode_index"])
        if self.v3:
            path = self.root / self.info["data_path"].format(chunk_index=int(ep["data/chunk_index"]),
                                                              file_index=int(ep["data/file_index"]))
            if self._cached[0] != path:
                self._cached = (path, _parquet(path))
            table = self._cached[1]
            table = table.filter(pc.equal(table.column("episode_index"), i))
        else:
            chunk = i // int(self.info.get("chunks_size", 1000))
            path = self.root / self.info["data_path"].format(episode_chunk=chunk, episode_index=i)
            table = _parquet(path)
        if table.num_rows != int(ep["length"]):
            raise DatasetError(f"{path}: episode {i} has {table.num_rows} frames but the episode table says "
                               f"{ep['length']}; the dataset is inconsistent")
        if "frame_index" in table.column_names:
            table = table.take(pc.sort_indices(table, [("frame_index", "ascending")]))
        return table

    def _video(self, ep: dict[str, Any], key: str, T: int) -> np.ndarray:
        i = int(ep["episode_index"])
        template = self.info.get("video_path")
        if not template:
            raise DatasetError(f"{self.root}/meta/info.json has video features but no video_path")
        if self.v3:
            path = self.root / template.format(video_key=key, chunk_index=int(ep[f"videos/{key}/chunk_index"]),
                                               file_index=int(ep[f"videos/{key}/file_index"]))
            start = float(ep[f"videos/{key}/from_timestamp"])
        else:
            chunk = i // int(self.info.get("chunks_size", 1000))
            path = self.root / template.format(episode_chunk=chunk, video_key=key, episode_index=i)
            start = 0.0
        return read_video(path, start, T, self.native_size)

    def episode(self, ep: dict[str, Any]) -> dict[str, Any]:
        i = int(ep["episode_index"])
        table = self._data(ep)
        where = f"{self.root} episode {i}"
        T = table.num_rows
        cols = set(table.column_names)
        for key in (self.state_key, self.action_key, "task_index"):
            if key not in cols:
                raise DatasetError(f"{where}: the data has no column {key!r}")
        state = np.asarray(table.column(self.state_key).to_pylist(), np.float32).reshape(T, -1)
        action = np.asarray(table.column(self.action_key).to_pylist(), np.float32).reshape(T, -1)
        if state.shape[1] != self.state_dim or action.shape[1] != self.action_dim:
            raise DatasetError(f"{where}: state/action have {state.shape[1]}/{action.shape[1]} dims, info.json "
                               f"declares {self.state_dim}/{self.action_dim}")
        _check_finite(self.state_key, state, where)
        _check_finite(self.action_key, action, where)
        views = []
        for key in self.image_keys:
            if self.info["features"][key]["dtype"] == "video":
                views.append(self._video(ep, key, T))
            else:
                frames = [_decode_image(c, where) for c in table.column(key).to_pylist()]
                views.append(_resize(np.stack(frames), self.native_size))
        task_index = int(table.column("task_index")[0].as_py())
        if task_index not in self.tasks:
            raise DatasetError(f"{where}: task_index {task_index} is not in the task table")
        return {"views": views, "states": state, "actions": action, "instruction": self.tasks[task_index],
                "task_id": task_index}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for ep in self.episodes:
            yield {**self.episode(ep), "episode_index": int(ep["episode_index"])}


def _names(feature: dict[str, Any], dim: int, what: str) -> list[str]:
    names = feature.get("names")
    if isinstance(names, dict):  # {"motors": [...]} or {"axes": [...]}
        names = next(iter(names.values()), None)
    if isinstance(names, list) and len(names) == dim and all(isinstance(n, str) for n in names):
        return list(names)
    return [f"{what}_{i}" for i in range(dim)]


def import_lerobot(root: str | Path, out: str | Path, *, cameras: Sequence[str] | None = None,
                   camera_names: Sequence[str] | None = None, state_key: str = "observation.state",
                   action_key: str = "action", image_size: int | None = None, env: str = "", suite: str = "",
                   max_episodes: int = 0, overwrite: bool = False, progress: Progress | None = None) -> Path:
    """Import a LeRobot dataset (v2.1 or v3.0) at ``root`` into a dataset at ``out``; see the module docstring.
    ``env`` / ``suite``: where SFT evaluates the policy trained on it (recorded in the dataset; "" = none);
    ``camera_names``: the names the cameras get (default: the feature names' last part)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder (give the root of a LeRobot dataset, holding meta/info.json)")
    if max_episodes < 0:
        raise DatasetError(f"--max-episodes must be >= 0 (0 = all), got {max_episodes}")
    src = _LeRobotSource(root, cameras, state_key, action_key)
    names = list(camera_names) if camera_names else [k.rsplit(".", 1)[-1] for k in src.image_keys]
    if len(names) != len(src.image_keys):
        raise DatasetError(f"--camera-names gives {len(names)} names for {len(src.image_keys)} cameras "
                           f"{src.image_keys}")
    size = _size(image_size) or src.native_size
    episodes = src.episodes[:max_episodes] if max_episodes else src.episodes
    version = src.info.get("codebase_version")
    info: dict[str, Any] = {"action_names": src.names["action"], "state_names": src.names["state"],
                            "camera_names": names, "control_hz": src.fps, "imported_from": f"lerobot_{version}",
                            "source": str(root)}
    if env:
        info.update(env=env, suite=suite)
    writer = EpisodeWriter(out, fps=src.fps, image_size=size, state_dim=src.state_dim, action_dim=src.action_dim,
                           camera_names=tuple(names), overwrite=overwrite, extra_info=info)
    try:
        for n, ep in enumerate(episodes, 1):
            e = src.episode(ep)
            views = [_resize(v, size) for v in e["views"]]
            images = np.stack(views, 1).transpose(0, 1, 4, 2, 3)
            writer.add_episode(np.ascontiguousarray(images), e["states"], e["actions"], e["instruction"],
                               task_id=e["task_id"], init_id=int(ep["episode_index"]), success=True,
                               suite=suite, split="train", source=f"episode {int(ep['episode_index'])}")
            if progress is not None:
                progress(n, len(episodes))
    except BaseException:
        writer.abort()
        raise
    return writer.close()
