"""DataQA (Green-VLA demonstration scoring, filtering and temporal alignment) and defect injection."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from reinforge.cli import main
from reinforge.config import ConfigError, to_dict
from reinforge.data import DatasetError, DemoDataset
from reinforge.data.corrupt import assign_defects, corrupt_dataset
from reinforge.data.dataqa import (
    DataLayout,
    DataQAConfig,
    align_episode,
    dataqa_report,
    dataset_writer,
    duration_zscores,
    episode,
    episode_speed,
    filter_dataset,
    idle_runs,
    idle_score,
    integrate_deltas,
    jitter_score,
    load_dataqa_config,
    motion_speed,
    resample_episode,
    sharpness_score,
    start_distances,
    state_spread,
    write_episode,
    write_report,
)
from reinforge.data.record import record_demos
from reinforge.train.quickstart import CONFIG_DIR

RULE_OF = {"jitter": {"jitter"}, "blur": {"sharpness"}, "idle": {"idle"}, "slow": {"speed", "duration"},
           "fast": {"speed", "duration"}}
DELTA = [0, 1, 2, 3, 4, 5]  # the franka layout: dx dy dz droll dpitch dyaw | gripper


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    return record_demos("spatial", tmp_path_factory.mktemp("dq") / "clean", per_task=5, image_size=32,
                        tasks=[0, 1, 2])


@pytest.fixture(scope="module")
def corrupted(clean, tmp_path_factory):
    """15 episodes: 2 of each defect, 5 clean."""
    return corrupt_dataset(clean, tmp_path_factory.mktemp("dq") / "bad", jitter=0.14, blur=0.14, idle=0.14,
                           slow=0.14, fast=0.14, seed=3)


# ------------------------------------------------------------------------------------------- pure scores


def test_scores_match_hand_computed_values():
    ramp = np.linspace(0, 1, 10)[:, None].repeat(2, 1)
    assert jitter_score(ramp, np.ones(2)) == pytest.approx(0.0, abs=1e-12)
    alt = np.array([[1.0], [-1.0], [1.0], [-1.0]])  # second differences +-4, in units of scale 2: +-2
    assert jitter_score(alt, np.array([2.0])) == pytest.approx(4.0)
    assert jitter_score(alt[:2], np.array([1.0])) == 0.0
    flat = np.full((2, 3, 8, 8), 128, np.uint8)
    checker = np.indices((8, 8)).sum(0) % 2 * 255
    sharp = np.broadcast_to(checker, (2, 3, 8, 8)).astype(np.uint8)
    assert sharpness_score(flat) == 0.0 and sharpness_score(sharp) > 1.0
    still = np.array([1, 1, 0, 1, 1, 1, 0, 1, 1, 1, 1], bool)
    idle = idle_runs(still, 3)
    assert idle.tolist() == [False] * 3 + [True] * 3 + [False] + [True] * 4
    assert idle_score(idle) == (pytest.approx(7 / 11), 4) and idle_score(np.zeros(4, bool)) == (0.0, 0)
    # task 0: MAD 0 -> floor 5% of the median (10); task 1 has too few episodes for a z-score
    z = duration_zscores(np.array([10.0, 10, 10, 20, 30, 90]), np.array([0, 0, 0, 0, 1, 1]))
    assert z[:3] == pytest.approx([0, 0, 0]) and z[3] == pytest.approx(10 / (1.4826 * 0.5)) and z[4:].tolist() == [0, 0]
    near, earlier = start_distances(np.array([[0.0], [3.0], [1.0], [0.0]]), np.array([0, 0, 0, 1]))
    assert near.tolist() == [1.0, 2.0, 1.0, np.inf] and earlier.tolist() == [np.inf, 3.0, 1.0, np.inf]
    walk = np.cumsum(np.full((9, 2), [0.3, 0.4]), 0)  # 0.5 per step
    assert motion_speed(walk, np.zeros(9, bool)) == pytest.approx(0.5)
    assert state_spread(np.zeros((5, 3)), np.ones(3)) == 0.0


def test_layout_names_delta_and_position_dims():
    franka = DataLayout(("dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"),
                        ("eef_x", "eef_y", "eef_z", "eef_axis_angle_x", "eef_axis_angle_y", "eef_axis_angle_z",
                         "finger_left", "finger_right"))
    assert franka.delta_dims == DELTA and franka.absolute_dims == [6] and franka.position_dims == [0, 1, 2]
    widowx = DataLayout(("dx", "dy", "dz", "dyaw", "gripper_position"),
                        ("eef_x", "eef_y", "eef_z", "eef_qw", "eef_qx", "eef_qy", "eef_qz", "gripper_open"))
    assert widowx.absolute_dims == [4] and widowx.position_dims == [0, 1, 2]
    scara = DataLayout(("dq_shoulder", "dq_elbow", "dz_lift", "dq_wrist", "gripper"),
                       ("q_shoulder", "q_elbow", "z_lift", "q_wrist", "gripper_open"))
    assert scara.delta_dims == [0, 1, 2, 3] and scara.position_dims == []  # speed falls back to every dim


def test_integrate_deltas_sums_and_splits_old_steps():
    a = np.array([[0.2], [0.4], [-0.6], [1.0]])
    fast = integrate_deltas(a, np.array([0.0, 1.5, 3.0]))  # step 1.5: a0 + a1/2, a1/2 + a2, a3 + a3/2 (past the end)
    assert fast[:, 0] == pytest.approx([0.4, -0.4, 1.5])
    slow = integrate_deltas(a, np.arange(0, 3.5, 0.5))
    assert slow[:, 0] == pytest.approx([0.1, 0.1, 0.2, 0.2, -0.3, -0.3, 0.5])


# ------------------------------------------------------------------------------------------- alignment


def test_resampling_keeps_the_ends_and_scales_the_length(clean):
    ds = DemoDataset.load(clean)
    ep = episode(ds, 0)
    T = ep.length
    slow, fast = resample_episode(ep, 2.0, delta_dims=DELTA), resample_episode(ep, 0.5, delta_dims=DELTA)
    assert slow.length == 2 * T - 1 and abs(fast.length - T / 2) <= 1
    for r in (slow, fast):
        np.testing.assert_array_equal(r.states[[0, -1]], ep.states[[0, -1]])
        np.testing.assert_array_equal(r.images[[0, -1]], ep.images[[0, -1]])
        assert r.labels.shape[1] == ep.labels.shape[1] and np.abs(r.labels).max() <= 1
    # halving splits every delta in two (nothing is clipped): the displacement is unchanged
    np.testing.assert_allclose(slow.labels[:, :6].sum(0), ep.labels[:, :6].sum(0), atol=1e-4)
    assert set(np.unique(slow.labels[:, 6])) <= set(np.unique(ep.labels[:, 6]))  # gripper: nearest frame
    # 0.5x and back is the identity on actions, labels and states
    back = resample_episode(slow, 0.5, delta_dims=DELTA)
    np.testing.assert_allclose(back.labels, ep.labels, atol=1e-5)
    np.testing.assert_allclose(back.states, ep.states, atol=1e-6)


def test_aligning_a_slow_episode_recovers_the_clean_one(clean):
    ds = DemoDataset.load(clean)
    ep = episode(ds, 1)
    slow = resample_episode(ep, 2.0, delta_dims=DELTA)
    v_clean, v_slow = episode_speed(ep, ds), episode_speed(slow, ds)
    assert v_slow / v_clean == pytest.approx(0.5, abs=0.05)
    fixed = align_episode(slow, v_slow, v_clean, delta_dims=DELTA)
    assert abs(fixed.length - ep.length) <= 2 and fixed.meta["speed_ratio"] == pytest.approx(0.5, abs=0.05)
    n = min(fixed.length, ep.length)
    assert np.abs(fixed.labels[:n] - ep.labels[:n]).mean() < 0.1
    same = align_episode(ep, v_clean, v_clean * 1.05, delta_dims=DELTA, tolerance=0.1)
    assert same.length == ep.length and same.meta["speed_ratio"] == pytest.approx(1 / 1.05)
    with pytest.raises(ValueError, match="must be > 0"):
        align_episode(ep, 0.0, v_clean, delta_dims=DELTA)


# ------------------------------------------------------------------------------------------- the report


def test_clean_data_passes(clean, tmp_path):
    report = dataqa_report(clean)
    assert report.flagged() == [], [r for r in report.rows if r["flags"]]
    assert report.summary["episodes"] == 15 and len(report.summary["diversity"]) == 3
    paths = write_report(report, tmp_path / "rep")
    data = json.loads(paths["json"].read_text())
    assert data["summary"]["flagged"] == 0 and len(data["episodes"]) == 15
    assert "| jitter |" in paths["markdown"].read_text() and paths["histograms"].stat().st_size > 1000


def test_every_injected_defect_is_flagged_by_its_rule(corrupted):
    ds = DemoDataset.load(corrupted, success_only=False)
    defects = [e["defect"] for e in ds.episodes]
    assert sorted(defects) == sorted(["none"] * 5 + [d for d in RULE_OF for _ in range(2)])
    assert ds.info["reinforge"]["suite"] == "spatial" and ds.info["reinforge"]["corruption"]["counts"]["blur"] == 2
    report = dataqa_report(ds)
    for r in report.rows:
        if r["defect"] == "none":
            assert r["flags"] == [], r
        else:
            assert set(r["flags"]) & RULE_OF[r["defect"]], r
    assert report.flagged("speed") and report.flagged("jitter") and report.flagged("idle")


def test_a_duplicated_and_a_motionless_episode_are_flagged(clean, tmp_path):
    ds = DemoDataset.load(clean)
    writer = dataset_writer(ds, tmp_path / "dup")
    for i in [0, 1, 2, 0, 5, 6, 7]:  # task 0's first episode twice
        write_episode(writer, episode(ds, i))
    ep = episode(ds, 8)
    frozen = replace(ep, images=ep.images[[0] * 50], states=ep.states[[0] * 50], actions=ep.actions[[0] * 50] * 0,
                     labels=ep.labels[[0] * 50] * 0)
    write_episode(writer, frozen)
    report = dataqa_report(writer.close())
    assert report.flagged() == [3, 7] and report.flagged("duplicate") == [3]
    assert report.rows[0]["start_distance"] == 0.0
    assert {"state_variance", "idle", "speed"} <= set(report.rows[7]["flags"])
    assert report.rows[7]["idle_fraction"] == 1.0 and report.rows[7]["idle_run"] == 50


def test_filter_drops_flagged_episodes_and_records_why(corrupted, tmp_path):
    res = filter_dataset(corrupted, tmp_path / "f")
    ds = DemoDataset.load(res.path, success_only=False)
    assert [e["defect"] for e in ds.episodes] == ["none"] * 5 and len(res.dropped) == 10
    rec = ds.info["reinforge"]
    assert rec["env"] == "tabletop" and rec["suite"] == "spatial" and "corruption" in rec
    assert rec["dataqa"]["kept"] == 5 and rec["dataqa"]["dropped"] == 10
    assert rec["dataqa"]["config"] == to_dict(DataQAConfig()) and rec["dataqa"]["dropped_per_rule"]["jitter"] == 2
    assert [e["source_episode"] for e in ds.episodes] == res.kept
    with pytest.raises(DatasetError, match="already exists"):
        filter_dataset(corrupted, tmp_path / "f")
    with pytest.raises(ValueError, match="source dataset itself"):
        filter_dataset(corrupted, corrupted, overwrite=True)


def test_filter_with_alignment_repairs_slow_and_fast_episodes(clean, corrupted, tmp_path):
    res = filter_dataset(corrupted, tmp_path / "a", align=True)
    ds = DemoDataset.load(res.path, success_only=False)
    assert sorted(e["defect"] for e in ds.episodes) == sorted(["none"] * 5 + ["slow", "fast"] * 2)
    assert res.resampled >= 4 and ds.info["reinforge"]["dataqa"]["rescued_by_alignment"] == 4
    src = {(e["task_id"], e["init_id"]): e["length"] for e in DemoDataset.load(clean).episodes}
    for e in ds.episodes:
        assert "speed_ratio" in e
        if e["defect"] in ("slow", "fast"):  # back to about the clean recording's length
            assert abs(e["length"] / src[(e["task_id"], e["init_id"])] - 1) < 0.25, e
    assert dataqa_report(ds).flagged() == []


# ------------------------------------------------------------------------------------------- config, corrupt, CLI


def test_config_errors_name_the_field():
    assert to_dict(load_dataqa_config(CONFIG_DIR / "dataqa.yaml")) == to_dict(DataQAConfig())
    with pytest.raises(ConfigError, match="did you mean 'max_jitter'"):
        load_dataqa_config(None, ["max_jiter=0.3"])
    with pytest.raises(ConfigError, match="'max_jitter' must be a number"):
        load_dataqa_config(None, ["max_jitter=high"])
    with pytest.raises(ConfigError, match="'max_speed_ratio' must be > 1, got 0.9"):
        load_dataqa_config(None, ["max_speed_ratio=0.9"])
    with pytest.raises(ConfigError, match="must be one of"):
        load_dataqa_config(None, ["rules=[jitter,blurry]"])
    with pytest.raises(ConfigError, match="'rules' must be a list of distinct rules"):
        DataQAConfig(rules=("jitter", "jitter"))
    with pytest.raises(ConfigError, match="'idle_min_frames' must be an integer"):
        load_dataqa_config(None, ["idle_min_frames=2.5"])
    with pytest.raises(ConfigError, match="'max_idle_run' must be >= idle_min_frames"):
        DataQAConfig(idle_min_frames=8, max_idle_run=4)


def test_defects_go_to_disjoint_episodes():
    d = assign_defects(20, {"jitter": 0.2, "blur": 0.15, "slow": 0.25}, seed=1)
    assert (d.count("jitter"), d.count("blur"), d.count("slow"), d.count("none")) == (4, 3, 5, 8)
    assert d == assign_defects(20, {"jitter": 0.2, "blur": 0.15, "slow": 0.25}, seed=1)
    with pytest.raises(ValueError, match="add up to at most 1"):
        assign_defects(10, {"jitter": 0.7, "blur": 0.5})
    with pytest.raises(ValueError, match="--idle must be a fraction"):
        assign_defects(10, {"idle": 1.5})


def test_cli_dataqa_and_corrupt(clean, corrupted, tmp_path, capsys):
    assert main(["dataqa", str(corrupted), "--json", "--report-dir", str(tmp_path / "rep")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["flagged"] == 10 and out["out"] is None and (tmp_path / "rep" / "dataqa_hist.png").is_file()
    assert main(["dataqa", str(corrupted), "--out", str(tmp_path / "f"), "--align", "max_jitter=0.3"]) == 0
    assert DemoDataset.load(tmp_path / "f").num_episodes == 9
    assert main(["corrupt", str(clean), "--out", str(tmp_path / "c"), "--blur", "0.2", "--seed", "1"]) == 0
    assert "3 blur" in capsys.readouterr().err
    assert main(["dataqa", str(tmp_path / "c"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["per_rule"]["sharpness"] == 3


@pytest.mark.parametrize("argv, message", [
    (["dataqa", "{tmp}/missing"], "does not exist"),
    (["dataqa", "{data}", "max_jiter=1"], "did you mean 'max_jitter'"),
    (["dataqa", "{data}", "--align"], "pass --out"),
    (["corrupt", "{data}", "--out", "{tmp}/c", "--jitter", "0.8", "--fast", "0.8"], "add up"),
])
def test_cli_user_errors_exit_2(argv, message, corrupted, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path, data=corrupted) for a in argv]
    assert main(argv) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "error:" in err and message in err
