"""`reinforge import`: LIBERO's HDF5 demonstration files and LeRobot datasets (v2.1, v3.0) into the project's dataset
layout (``data/importers.py``).

The sources are small files written here in the published layouts: LIBERO's robomimic-style tree with the
attributes its ``create_dataset.py`` writes (images upside down, observations recorded after each action, no-op
actions at the start), OpenVLA's attribute-less regenerated files, and LeRobot datasets with video features (AV1,
LeRobot's default codec, one mp4 per episode in v2.1, episodes concatenated in one mp4 in v3.0) or image features.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from reinforge.data import DemoDataset
from reinforge.data.dataset import DatasetError
from reinforge.data.importers import import_lerobot, import_libero, libero_instruction

h5py = pytest.importorskip("h5py")

SPATIAL_FILE = "pick_up_the_black_bowl_between_the_plate_and_the_ramekin_and_place_it_on_the_plate_demo.hdf5"
LONG_FILE = "KITCHEN_SCENE3_turn_on_the_stove_and_put_the_moka_pot_on_it_demo.hdf5"


def _raw_image(t: int, size: int = 32) -> np.ndarray:
    """A frame as MuJoCo renders it (rows bottom-up): a bright marker in the first rows and columns, its red
    channel the frame number."""
    img = np.zeros((size, size, 3), np.uint8)
    img[:4, :4] = (t, 200, 50)
    return img


def write_libero_file(path, demos: dict[str, int], *, original: bool = True, noops: int = 2) -> None:
    """A LIBERO demonstration file: ``demos`` maps demo_<i> to its length. ``original``: the attributes of LIBERO's
    own files (observations recorded after each action); else OpenVLA's regenerated layout (no attributes)."""
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        if original:
            data.attrs["env_args"] = json.dumps({"type": 1, "env_name": "LIBERO_Tabletop_Manipulation"})
            data.attrs["problem_info"] = json.dumps({"language_instruction": "pick the akita black bowl"})
            data.attrs["macros_image_convention"] = "opengl"
            data.attrs["num_demos"] = len(demos)
        for name, T in demos.items():
            g = data.create_group(name)
            actions = np.zeros((T, 7))
            actions[:, 0] = np.arange(T) / 100.0  # dx = t / 100 identifies the step
            actions[:, 6] = -1.0
            actions[:noops, :6] = 0.0  # no-ops at the start: no motion, gripper unchanged
            g.create_dataset("actions", data=actions)
            obs = g.create_group("obs")
            obs.create_dataset("agentview_rgb", data=np.stack([_raw_image(t) for t in range(T)]))
            obs.create_dataset("eye_in_hand_rgb", data=np.stack([_raw_image(t) for t in range(T)]))
            ee = np.zeros((T, 6))
            ee[:, 0] = np.arange(T)  # ee x = t identifies the observation's step
            obs.create_dataset("ee_states", data=ee)
            obs.create_dataset("gripper_states", data=np.full((T, 2), 0.04))
            g.create_dataset("rewards", data=np.r_[np.zeros(T - 1), 1].astype(np.uint8))


def test_libero_instruction_from_the_file_name_as_libero_derives_it():
    assert libero_instruction(SPATIAL_FILE) == ("pick up the black bowl between the plate and the ramekin and "
                                                "place it on the plate")
    assert libero_instruction(LONG_FILE) == "turn on the stove and put the moka pot on it"


def test_libero_files_import_upright_re_paired_without_noops(tmp_path):
    src = tmp_path / "libero_spatial"
    src.mkdir()
    write_libero_file(src / SPATIAL_FILE, {"demo_0": 12, "demo_10": 9, "demo_2": 10})
    out = import_libero([src], tmp_path / "ds", suite="libero_spatial", image_size=16)
    ds = DemoDataset.load(out)
    assert ds.num_episodes == 3 and [e["init_id"] for e in ds.episodes] == [0, 2, 10]  # numeric order
    assert ds.tasks == [libero_instruction(SPATIAL_FILE)]
    assert ds.recorded_in["env"] == "libero" and ds.recorded_in["suite"] == "libero_spatial"
    assert ds.recorded_in["camera_names"] == ["agentview", "robot0_eye_in_hand"]
    assert ds.images.shape[1:] == (2, 3, 16, 16) and ds.state_dim == 8 and ds.action_dim == 7
    first = ds.episode_start[0]
    T = ds.episodes[0]["length"]
    # LIBERO's own files record the observation after each action: frame k (observation after step k) goes with
    # action k + 1; the no-op actions 0 and 1 are dropped (action 1 would pair with frame 0)
    assert T == 12 - 1 - 1
    dx = ds.actions[first:first + T, 0]
    ee_x = ds.states[first:first + T, 0]
    assert torch_allclose(dx, ee_x / 100.0 + 0.01)
    assert float(dx[0]) == pytest.approx(0.02)
    # images flipped on both axes (upright, as the LIBERO env shows them): the marker is now bottom-right
    img = ds.images[first, 0].numpy()
    assert img[:, -2:, -2:].mean() > 40 and img[:, :2, :2].mean() == 0


def torch_allclose(a, b) -> bool:
    return bool(np.allclose(np.asarray(a), np.asarray(b), atol=1e-5))


def test_openvla_regenerated_files_keep_their_pairing(tmp_path):
    path = tmp_path / SPATIAL_FILE
    write_libero_file(path, {"demo_0": 8}, original=False, noops=0)
    ds = DemoDataset.load(import_libero([path], tmp_path / "ds", suite="libero_spatial", drop_noops=False))
    assert ds.num_frames == 8 and torch_allclose(ds.actions[:, 0], ds.states[:, 0] / 100.0)
    assert ds.images.shape[-2:] == (32, 32)  # the source size


@pytest.mark.parametrize("make, match", [
    (lambda p: p.write_bytes(b"not hdf5"), "not a readable HDF5 file"),
    (lambda p: h5py.File(p, "w").close(), "no 'data' group"),
    (lambda p: h5py.File(p, "w").create_group("data").file.close(), "no demo_<i> groups"),
])
def test_bad_libero_files_are_one_clear_error_and_write_nothing(tmp_path, make, match):
    path = tmp_path / SPATIAL_FILE
    make(path)
    with pytest.raises(DatasetError, match=match):
        import_libero([path], tmp_path / "ds", suite="libero_spatial")
    assert not (tmp_path / "ds").exists()


def test_a_libero_file_missing_an_observation_names_it(tmp_path):
    path = tmp_path / SPATIAL_FILE
    write_libero_file(path, {"demo_0": 6})
    with h5py.File(path, "a") as f:
        del f["data/demo_0/obs/eye_in_hand_rgb"]
    with pytest.raises(DatasetError, match="obs/eye_in_hand_rgb is missing"):
        import_libero([path], tmp_path / "ds", suite="libero_spatial")
    with pytest.raises(DatasetError, match="unknown LIBERO suite"):
        import_libero([path], tmp_path / "ds", suite="spatial")


# ---------------------------------------------------------------------------------------------- LeRobot

SIZE = 64  # SVT-AV1 wants frames of at least 64 x 64
FPS = 10
COLOURS = [(220, 30, 30), (30, 220, 30), (30, 30, 220)]


def _frames(ep: int, T: int, cam: int) -> np.ndarray:
    """Frames of episode ``ep``: a solid colour per episode (camera 1 darker), so a decoded frame tells which
    episode (and camera) it came from despite lossy coding."""
    c = np.array(COLOURS[ep], np.float32) * (1.0 if cam == 0 else 0.5)
    return np.broadcast_to(c.astype(np.uint8), (T, SIZE, SIZE, 3)).copy()


def _write_mp4(path, frames: np.ndarray) -> None:
    import imageio_ffmpeg

    path.parent.mkdir(parents=True, exist_ok=True)
    w = imageio_ffmpeg.write_frames(str(path), (SIZE, SIZE), fps=FPS, codec="libsvtav1", pix_fmt_out="yuv420p",
                                    output_params=["-g", "2", "-crf", "30"], macro_block_size=1)
    w.send(None)
    for f in frames:
        w.send(np.ascontiguousarray(f))
    w.close()


def _data_table(ep: int, T: int, start: int, images: bool) -> pa.Table:
    cols = {"observation.state": pa.array([np.full(8, ep + t / 100, np.float32) for t in range(T)],
                                          type=pa.list_(pa.float32(), 8)),
            "action": pa.array([np.full(7, t / 10, np.float32) for t in range(T)], type=pa.list_(pa.float32(), 7)),
            "timestamp": pa.array(np.arange(T, dtype=np.float32) / FPS),
            "frame_index": pa.array(np.arange(T, dtype=np.int64)),
            "episode_index": pa.array(np.full(T, ep, np.int64)),
            "index": pa.array(np.arange(start, start + T, dtype=np.int64)),
            "task_index": pa.array(np.full(T, ep % 2, np.int64))}
    if images:
        for cam, key in enumerate(("observation.images.image", "observation.images.wrist_image")):
            cells = []
            for f in _frames(ep, T, cam):
                buf = io.BytesIO()
                Image.fromarray(f).save(buf, format="PNG")
                cells.append({"bytes": buf.getvalue(), "path": f"frame_{len(cells):06d}.png"})
            cols[key] = cells
    return pa.table(cols)


def _info(version: str, dtype: str, lengths: list[int]) -> dict:
    visual = {"dtype": dtype, "shape": [SIZE, SIZE, 3], "names": ["height", "width", "channels"]}
    info = {"codebase_version": version, "robot_type": "panda", "fps": FPS, "total_episodes": len(lengths),
            "total_frames": sum(lengths), "total_tasks": 2, "chunks_size": 1000, "splits": {"train": "0:3"},
            "features": {"observation.images.image": visual, "observation.images.wrist_image": visual,
                         "observation.state": {"dtype": "float32", "shape": [8], "names": [f"s{i}" for i in range(8)]},
                         "action": {"dtype": "float32", "shape": [7], "names": {"motors": [f"a{i}" for i in range(7)]}},
                         "timestamp": {"dtype": "float32", "shape": [1], "names": None},
                         "frame_index": {"dtype": "int64", "shape": [1], "names": None},
                         "episode_index": {"dtype": "int64", "shape": [1], "names": None},
                         "index": {"dtype": "int64", "shape": [1], "names": None},
                         "task_index": {"dtype": "int64", "shape": [1], "names": None}}}
    if version.startswith("v2"):
        info["data_path"] = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
        info["video_path"] = ("videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
                              if dtype == "video" else None)
    else:
        info["data_path"] = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
        info["video_path"] = ("videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
                              if dtype == "video" else None)
    return info


TASKS = ["put the bowl on the plate", "open the drawer"]
LENGTHS = [6, 5, 7]


def write_lerobot_v21(root, dtype: str = "video") -> None:
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps(_info("v2.1", dtype, LENGTHS)))
    (root / "meta" / "tasks.jsonl").write_text("".join(json.dumps({"task_index": i, "task": t}) + "\n"
                                                       for i, t in enumerate(TASKS)))
    (root / "meta" / "episodes.jsonl").write_text("".join(
        json.dumps({"episode_index": e, "tasks": [TASKS[e % 2]], "length": T}) + "\n" for e, T in enumerate(LENGTHS)))
    start = 0
    for e, T in enumerate(LENGTHS):
        path = root / f"data/chunk-000/episode_{e:06d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(_data_table(e, T, start, dtype == "image"), path)
        start += T
        if dtype == "video":
            for cam, key in enumerate(("observation.images.image", "observation.images.wrist_image")):
                _write_mp4(root / f"videos/chunk-000/{key}/episode_{e:06d}.mp4", _frames(e, T, cam))


def write_lerobot_v30(root) -> None:
    """v3.0: all episodes in one data file and, per camera, one mp4 (episodes concatenated; each located by its
    from_timestamp)."""
    (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps(_info("v3.0", "video", LENGTHS)))
    pq.write_table(pa.table({"task_index": pa.array([0, 1], pa.int64()), "task": TASKS}),
                   root / "meta" / "tasks.parquet")
    tables, rows, start = [], [], 0
    for e, T in enumerate(LENGTHS):
        tables.append(_data_table(e, T, start, False))
        row = {"episode_index": e, "tasks": [TASKS[e % 2]], "length": T, "data/chunk_index": 0,
               "data/file_index": 0, "dataset_from_index": start, "dataset_to_index": start + T,
               "stats/action/mean": [0.0] * 7}
        for key in ("observation.images.image", "observation.images.wrist_image"):
            row.update({f"videos/{key}/chunk_index": 0, f"videos/{key}/file_index": 0,
                        f"videos/{key}/from_timestamp": start / FPS, f"videos/{key}/to_timestamp": (start + T) / FPS})
        rows.append(row)
        start += T
    (root / "data" / "chunk-000").mkdir(parents=True)
    pq.write_table(pa.concat_tables(tables), root / "data" / "chunk-000" / "file-000.parquet")
    pq.write_table(pa.Table.from_pylist(rows), root / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    for cam, key in enumerate(("observation.images.image", "observation.images.wrist_image")):
        frames = np.concatenate([_frames(e, T, cam) for e, T in enumerate(LENGTHS)])
        _write_mp4(root / f"videos/{key}/chunk-000/file-000.mp4", frames)


def _check_imported(ds: DemoDataset) -> None:
    assert ds.num_episodes == 3 and [e["length"] for e in ds.episodes] == LENGTHS
    assert ds.tasks == TASKS[:1] + TASKS[1:] and ds.state_dim == 8 and ds.action_dim == 7 and ds.num_views == 2
    assert ds.info["features"]["action"]["names"] == [f"a{i}" for i in range(7)]
    for e in range(3):
        s = int(ds.episode_start[e])
        T = LENGTHS[e]
        assert np.allclose(ds.states[s:s + T, 0].numpy(), e + np.arange(T) / 100, atol=1e-6)
        assert np.allclose(ds.actions[s:s + T, 0].numpy(), np.arange(T) / 10, atol=1e-6)
        assert ds.instruction(s) == TASKS[e % 2]
        for cam in range(2):  # every frame from its own episode and camera (lossy video: within a few levels)
            want = np.array(COLOURS[e], np.float32) * (1.0 if cam == 0 else 0.5)
            got = ds.images[s:s + T, cam].float().mean((2, 3)).numpy()
            assert np.abs(got - want).max() < 12, (e, cam, got, want)


@pytest.mark.parametrize("dtype", ["video", "image"])
def test_lerobot_v21_imports_with_video_or_image_features(tmp_path, dtype):
    write_lerobot_v21(tmp_path / "src", dtype)
    out = import_lerobot(tmp_path / "src", tmp_path / "ds", camera_names=["agentview", "wrist"])
    ds = DemoDataset.load(out)
    _check_imported(ds)
    assert ds.recorded_in["camera_names"] == ["agentview", "wrist"] and ds.recorded_in["imported_from"] == \
        "lerobot_v2.1"


def test_lerobot_v30_finds_each_episode_in_shared_files(tmp_path):
    write_lerobot_v30(tmp_path / "src")
    ds = DemoDataset.load(import_lerobot(tmp_path / "src", tmp_path / "ds", image_size=32))
    _check_imported(ds)
    assert ds.images.shape[-2:] == (32, 32)


def test_lerobot_errors_name_what_is_wrong(tmp_path):
    write_lerobot_v21(tmp_path / "src", "image")
    with pytest.raises(DatasetError, match="no 1-D feature 'observation.joints'"):
        import_lerobot(tmp_path / "src", tmp_path / "ds", state_key="observation.joints")
    with pytest.raises(DatasetError, match=r"no image or video feature \['top'\]"):
        import_lerobot(tmp_path / "src", tmp_path / "ds", cameras=["top"])
    (tmp_path / "src" / "data" / "chunk-000" / "episode_000001.parquet").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="episode_000001.parquet is not a readable parquet file"):
        import_lerobot(tmp_path / "src", tmp_path / "ds")
    assert not (tmp_path / "ds").exists(), "a failed import leaves nothing behind"
    info = json.loads((tmp_path / "src" / "meta" / "info.json").read_text())
    (tmp_path / "src" / "meta" / "info.json").write_text(json.dumps({**info, "codebase_version": "v1.6"}))
    with pytest.raises(DatasetError, match="codebase_version 'v1.6' is not supported"):
        import_lerobot(tmp_path / "src", tmp_path / "ds")


def test_import_and_sft_from_the_command_line(tmp_path, capsys):
    """`reinforge import lerobot ... --env tabletop --suite spatial` then `reinforge sft` trains on it (and
    evaluates in the env the import names)."""
    from reinforge.cli import main

    write_lerobot_v21(tmp_path / "src", "image")
    ds = tmp_path / "ds"
    assert main(["import", "lerobot", str(tmp_path / "src"), "--out", str(ds), "--env", "tabletop", "--suite",
                 "spatial", "--camera-names", "agentview,wrist", "--image-size", "32"]) == 0
    assert "imported 3 episodes (18 frames, 2 tasks, 2 cameras at 32x32)" in capsys.readouterr().err
    assert main(["import", "libero", str(tmp_path / "nowhere.hdf5"), "--out", str(tmp_path / "x"), "--suite",
                 "libero_spatial"]) == 2
    assert "does not exist" in capsys.readouterr().err
    out = tmp_path / "sft"
    assert main(["sft", "--data", str(ds), "--policy", "token", "--out", str(out), "--steps", "4",
                 "policy.d_model=32", "policy.heads=2", "policy.fusion_layers=1", "policy.channels=[16,16]",
                 "policy.image_size=[32,32]", "batch_size=4", "eval_episodes_per_task=1", "eval_max_envs=4"]) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/spatial/success_rate" in r for r in rows) and (out / "policy").is_dir()
