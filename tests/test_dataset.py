"""Demonstration datasets: round trip through the LeRobot-style layout, and clear errors on bad data."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from reinforge.data import DatasetError, DemoDataset, EpisodeWriter
from reinforge.data.record import record_demos


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "spatial"
    return record_demos("spatial", root, per_task=1, image_size=32, tasks=[0, 3])


def test_round_trip(demos):
    ds = DemoDataset.load(demos)
    info = json.loads((demos / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v2.1" and info["fps"] == 20 and info["total_episodes"] == 2
    assert ds.num_episodes == 2 and ds.images.shape[1:] == (2, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.actions.shape == (ds.num_frames, 7) and ds.states.shape == (ds.num_frames, 8)
    assert all(e["success"] for e in ds.episodes)
    assert [e["task_id"] for e in ds.episodes] == [0, 3]
    assert ds.instruction(0).startswith("pick up the black bowl between")
    # the stored frames are exactly what the env rendered: replaying the actions reproduces them
    from reinforge.envs import TabletopEnv

    ep = ds.episodes[1]
    env = TabletopEnv("spatial", 1, image_size=32, init_bank="train")
    obs = env.reset([ep["task_id"]], [ep["init_id"]])
    start = int(ds.episode_start[1])
    for t in range(ep["length"]):
        assert torch.equal(obs["image"][0], ds.images[start + t])
        assert torch.allclose(obs["state"][0], ds.states[start + t])
        res = env.step(ds.actions[start + t][None])
        obs = res.obs
    assert res.success.item()
    # stats: q01 <= mean <= q99 per action dim
    st = ds.stats["action"]
    assert all(lo <= m <= hi for lo, m, hi in zip(st["q01"], st["mean"], st["q99"]))


def test_action_chunks_pad_past_episode_end(demos):
    ds = DemoDataset.load(demos)
    last = int(ds.episode_start[1]) - 1  # last frame of episode 0
    chunk, is_pad = ds.action_chunk(torch.tensor([0, last]), 5)
    assert chunk.shape == (2, 5, 7)
    assert not is_pad[0].any() and is_pad[1].tolist() == [False, True, True, True, True]
    assert torch.equal(chunk[1, 1], ds.actions[last]), "padding repeats the last action (and is masked)"


def test_errors_are_clear(demos, tmp_path):
    with pytest.raises(DatasetError, match="meta/info.json is missing"):
        DemoDataset.load(tmp_path)
    with pytest.raises(DatasetError, match="actions have 7 dims but 14 are expected"):
        DemoDataset.load(demos, expect_action_dim=14)
    with pytest.raises(DatasetError, match="images are 32x32 but 64x64"):
        DemoDataset.load(demos, expect_image_size=(64, 64))
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(demos, bad)
    part = next(bad.glob("data/*/*.parquet"))
    part.write_bytes(part.read_bytes()[:100])
    with pytest.raises(DatasetError, match="not a readable parquet file"):
        DemoDataset.load(bad)
    nan = tmp_path / "nan"
    shutil.copytree(demos, nan)
    part = sorted(nan.glob("data/*/*.parquet"))[0]
    table = pq.read_table(part).to_pydict()
    table["action"][0][0] = float("nan")
    import pyarrow as pa

    pq.write_table(pa.table(table), part)
    with pytest.raises(DatasetError, match="NaN"):
        DemoDataset.load(nan)
    with pytest.raises(DatasetError, match="already exists"):
        EpisodeWriter(demos, fps=20, image_size=(32, 32), state_dim=8, action_dim=7)


def test_writer_is_atomic_and_checks_shapes(tmp_path):
    w = EpisodeWriter(tmp_path / "ds", fps=20, image_size=(8, 8), state_dim=8, action_dim=7)
    with pytest.raises(DatasetError, match="action dim 6"):
        w.add_episode(np.zeros((3, 2, 3, 8, 8), np.uint8), np.zeros((3, 8)), np.zeros((3, 6)), "x")
    w.add_episode(np.zeros((3, 2, 3, 8, 8), np.uint8), np.zeros((3, 8)), np.zeros((3, 7)), "x", success=True)
    assert not (tmp_path / "ds").exists(), "nothing appears at the destination before close()"
    w.close()
    assert DemoDataset.load(tmp_path / "ds").num_frames == 3
