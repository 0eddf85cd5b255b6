"""The bench scripts that make the docs' tables write valid results files, from their runs' provenance: checked on
synthetic run folders (the real runs take hours)."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pytest

from reinforge.results import load_result, verdict

BENCH = Path(__file__).resolve().parents[1] / "bench"


def bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_folder(path: Path, commit: str = "c" * 40) -> Path:
    (path / "policy").mkdir(parents=True)
    (path / "provenance.json").write_text(json.dumps({
        "commit": commit, "dirty": False, "date": "2026-12-07T10:00:00Z", "cpu": "cpu", "cpu_count": 2,
        "torch": "2.13.0", "threads": 2}))
    return path / "policy"


def test_rlco_writes_the_real_and_sim_tables_with_paired_verdicts(tmp_path):
    rlco = bench("rlco_table")
    a = argparse.Namespace(sampler="sde", sim_demos=50, iterations=30, beta=0.2, suite="spatial", sft_steps=1500,
                           episodes_per_task=50, sim_episodes_per_task=20, results=tmp_path / "res",
                           allow_dirty=False)
    rows = ("real_only_sft", "cotrain_sft", "sim_rl_beta0_sde", "rl_co_sde")
    done = {("expert", 0, 0): {"real": 1.0, "sim": 1.0, "policy": "None"},
            ("sim_only_sft", 0, 0): {"real": 0.4, "sim": 0.8, "policy": str(run_folder(tmp_path / "sim_only"))}}
    for s in (0, 1, 2):
        for i, row in enumerate(rows):
            done[(row, 5, s)] = {"real": 0.3 + 0.1 * i + 0.01 * s, "sim": 0.5,
                                 "policy": str(run_folder(tmp_path / f"s{s}" / row))}
    assert rlco.write_results({k: v for k, v in done.items() if k[2] != 2 or k[0] != "rl_co_sde"}, 5, [0, 1, 2],
                              a) == []  # a seed missing: nothing written yet
    paths = rlco.write_results(done, 5, [0, 1, 2], a)
    real = load_result(paths[0])
    assert [p.name for p in paths] == ["rlco.json", "rlco_sim.json"] and real.commit == "c" * 40
    assert real.rows[0].values == [1.0, None, None]  # the calibration rows: seed 0 only
    assert "**holds** on 3 seeds" in verdict(real, real.comparisons[0])  # RL-Co > SFT co-training on every seed
    assert "not established" in verdict(load_result(paths[1]), load_result(paths[1]).comparisons[0])  # sim ties
    (tmp_path / "s1" / "rl_co_sde" / "provenance.json").write_text(json.dumps({"commit": "d" * 40, "dirty": False}))
    with pytest.raises(ValueError, match="different commits"):
        rlco.write_results(done, 5, [0, 1, 2], a)


def test_greenvla_writes_every_stage_and_the_padded_ablation(tmp_path):
    gv = bench("greenvla_table")
    from reinforge.config import load_config
    from reinforge.train.quickstart import resolve_config

    cfg = load_config(gv.StagesConfig, resolve_config("tabletop_stages_flow"), [])
    out = tmp_path / "greenvla"
    results, padded = {}, {}
    for s in (0, 1, 2):
        results[s] = {k: {"success_rate": 0.5 + 0.1 * i, "mean_length": 100.0, "episodes": 500}
                      for i, k in enumerate(gv.STAGES)}
        padded[s] = {k: {"success_rate": 0.3, "mean_length": 120.0, "episodes": 500} for k in ("r0", "r1")}
        for k in gv.STAGES:
            run_folder(out / f"seed{s}" / k)
        for k in ("r0", "r1"):
            run_folder(out / f"padded_seed{s}" / k)
    a = argparse.Namespace(results=tmp_path / "res", allow_dirty=False)
    res = load_result(gv.write_results(out, results, padded, [0, 1, 2], cfg, a))
    assert len(res.rows) == 6 and res.episodes_per_cell == 500
    assert len(res.comparisons) == 4 and "**holds**" in verdict(res, res.comparisons[2])


def test_the_world_model_bench_writes_every_condition_and_its_cost(tmp_path):
    wm = bench("wm_table")
    out = tmp_path / "wmrl"
    wm_dir = out / "wm"
    run_folder(wm_dir)
    (wm_dir / "model").mkdir()
    (wm_dir / "model" / "split.json").write_text(json.dumps({"train_s": 600.0}))
    a = argparse.Namespace(sft_steps=1000, long_factor=5, iterations=400, sim_ppo_iterations=0, demos=50,
                           wm_steps=2000, plateau_window=25, target=0.75, episodes_per_task=50, suite="spatial",
                           results=tmp_path / "res", allow_dirty=False)
    (out / "calibration.json").write_text(json.dumps({"1000@50": {"steps": 1000, "seed": 0, "episodes_per_task": 50,
                                                                  "success_rate": 0.78, "bank": "val"}}))
    conditions = ["", "combined_major"]
    rows = ["sft_short", "sft_long", "wm_rl"]
    done = {(row, s): {"success": {"nominal": 70.0 + 5 * i, "combined_major": 40.0 + s}, "train_s": 60.0,
                       "imagined_steps": 100_000, "iterations_run": 120 if row == "wm_rl" else None,
                       "policy": str(run_folder(out / f"seed{s}" / row))} for i, row in enumerate(rows)
            for s in (0, 1, 2)}
    table, cost = (load_result(p) for p in wm.write_results(done, [0, 1, 2], conditions, a, out, wm_dir, rows))
    assert [r.label.split(":")[0] for r in table.rows] == ["nominal"] * 3 + ["combined_major"] * 3
    assert table.row("nominal: + world-model RL (GRPO, up to 400 iterations)").values == [0.8, 0.8, 0.8]
    assert "**holds**" in verdict(table, table.comparisons[0])  # nominal: world-model RL beats the long SFT
    assert "not established" in verdict(table, table.comparisons[2])  # combined: every seed ties
    assert "1000 steps 78.0%" in table.description and cost.rows[0].values == [120.0, 120.0, 120.0]
