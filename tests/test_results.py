"""Results as data: results files are checked, tables and verdicts are generated from them, and the docs in this
repository are exactly what their files generate (a hand edit or a stale table fails here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reinforge import results
from reinforge.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def write(tmp_path):
    """write(record) -> the path of a results file holding it."""
    n = iter(range(1000))

    def _write(rec) -> Path:
        p = tmp_path / f"r{next(n)}.json"
        p.write_text(json.dumps(rec))
        return p
    return _write


def _record(**over):
    rec = dict(title="T", command="reinforge x --seed {seed}", commit="a" * 40, date="2026-12-07",
               machine="cpu (2 cores), torch 2.13.0, 2 threads", bank="eval", episodes_per_cell=500, seeds=[0, 1, 2],
               rows=[{"label": "sft", "values": [0.2, 0.1, 0.3]}, {"label": "rl", "values": [0.6, 0.5, 0.4]}],
               comparisons=[{"claim": "RL lifts SFT", "better": "rl", "worse": "sft"}])
    rec.update(over)
    return rec


def _repo(tmp_path, doc: str, **files) -> Path:
    (tmp_path / "results").mkdir()
    for name, rec in files.items():
        (tmp_path / "results" / f"{name}.json").write_text(json.dumps(rec))
    (tmp_path / "README.md").write_text(doc)
    return tmp_path


def test_the_docs_in_this_repository_are_generated_from_results():
    """Every table between results markers and docs/results.md equal what `reinforge results` makes."""
    stale = results.stale(REPO)
    assert not stale, f"out of date: {[str(p.relative_to(REPO)) for p in stale]}; run `reinforge results`"
    assert results.load_results(REPO), "results/ holds the measured tables"


def test_a_table_shows_each_seed_and_the_mean_with_its_provenance(write):
    res = results.load_result(write(_record()))
    table = results.render_table(res)
    assert "|  | seed 0 | seed 1 | seed 2 | mean +- std |" in table
    assert "| rl | 60.0 | 50.0 | 40.0 | **50.0 +- 10.0** |" in table
    assert "`eval` bank, 500 episodes per cell" in table and "commit `aaaaaaaaaa`" in table
    assert "`reinforge x --seed {seed}`" in table


@pytest.mark.parametrize("rl, state", [([0.6, 0.5, 0.4], "holds"), ([0.1, 0.05, 0.2], "reversed"),
                                       ([0.6, 0.05, 0.4], "not established")])
def test_a_verdict_holds_only_when_every_seed_agrees(rl, state, write):
    res = results.load_result(write(_record(rows=[{"label": "sft", "values": [0.2, 0.1, 0.3]},
                                                   {"label": "rl", "values": rl}])))
    line = results.verdict(res, res.comparisons[0])
    assert f"**{state}** on 3 seeds" in line
    assert "paired differences" in line and line.count(" / ") == 2


def test_missing_seeds_are_shown_and_left_out_of_verdicts(write):
    res = results.load_result(write(_record(rows=[{"label": "sft", "values": [0.2, None, 0.3]},
                                                   {"label": "rl", "values": [0.6, 0.5, 0.4]}])))
    assert "| sft | 20.0 | - | 30.0 | **25.0 +- 7.1** (2 seeds) |" in results.render_table(res)
    assert "**not established (fewer than 3 seeds)** on 2 seeds" in results.verdict(res, res.comparisons[0])


@pytest.mark.parametrize("over, message", [
    ({"seeds": []}, "seeds must be a non-empty list"),
    ({"rows": [{"label": "a", "values": [0.1]}]}, "one finite number or null per seed"),
    ({"rows": [{"label": "a", "values": [0.1, float("nan"), 0.2]}]}, "one finite number"),
    ({"unit": "ratio"}, "unit must be one of"),
    ({"colour": "red"}, "unknown keys"),
    ({"comparisons": [{"claim": "c", "better": "rl", "worse": "nope"}]}, "no row 'nope'"),
])
def test_a_bad_results_file_is_a_clear_error(over, message, write):
    with pytest.raises(results.ResultsError, match=message):
        results.load_result(write(_record(**over)))
    rec = _record()
    del rec["commit"]
    with pytest.raises(results.ResultsError, match=r"missing \['commit'\]"):
        results.load_result(write(rec))


def test_embedded_tables_are_regenerated_and_a_hand_edit_is_caught(tmp_path, capsys):
    doc = "# Doc\n\n<!-- results:qs -->\nold text\n<!-- /results:qs -->\n\nprose after\n"
    root = _repo(tmp_path, doc, qs=_record())
    assert main(["results", "--root", str(root), "--check"]) == 1
    assert "README.md" in capsys.readouterr().err
    assert main(["results", "--root", str(root)]) == 0
    text = (root / "README.md").read_text()
    assert "| rl | 60.0 |" in text and "old text" not in text and text.endswith("prose after\n")
    assert (root / "docs" / "results.md").read_text().count("| rl | 60.0 |") == 1
    assert main(["results", "--root", str(root), "--check"]) == 0
    (root / "README.md").write_text(text.replace("| rl | 60.0 |", "| rl | 66.0 |"))  # a hand edit
    assert main(["results", "--root", str(root), "--check"]) == 1
    assert "out of date" in capsys.readouterr().err
    # links point at results/ from wherever the doc lies
    assert "](results/qs.json)" in text and "](../results/qs.json)" in (root / "docs" / "results.md").read_text()


def test_a_block_naming_a_missing_file_or_unclosed_is_an_error(tmp_path, capsys):
    root = _repo(tmp_path, "<!-- results:gone -->\n<!-- /results:gone -->\n", qs=_record())
    assert main(["results", "--root", str(root)]) == 2
    assert "results/gone.json does not exist" in capsys.readouterr().err
    (root / "README.md").write_text("<!-- results:qs -->\n")
    assert main(["results", "--root", str(root)]) == 2
    assert "unmatched" in capsys.readouterr().err
    assert main(["results", "--root", str(tmp_path / "nowhere")]) == 2


def test_write_result_checks_the_record_before_writing(tmp_path):
    path = results.write_result(tmp_path / "res", "table_a", **_record())
    assert results.load_result(path).rows[1].values == [0.6, 0.5, 0.4]
    with pytest.raises(results.ResultsError):
        results.write_result(tmp_path / "res", "table_b", **_record(seeds=[0, 1]))  # 3 values, 2 seeds
    assert not (tmp_path / "res" / "table_b.json").exists()
    with pytest.raises(results.ResultsError, match="results name"):
        results.write_result(tmp_path / "res", "../escape", **_record())


def test_a_table_takes_its_runs_from_one_commit_of_a_clean_tree(tmp_path):
    from reinforge.provenance import runs_provenance

    def run(name, **rec):
        (tmp_path / name).mkdir()
        (tmp_path / name / "provenance.json").write_text(json.dumps({"commit": "a" * 40, "dirty": False, **rec}))
        return tmp_path / name

    a, b = run("a", date="2026-12-07T10:00:00Z"), run("b")
    assert runs_provenance([a, b])["date"].startswith("2026-12-07")
    with pytest.raises(ValueError, match="different commits"):
        runs_provenance([a, b, run("c", commit="b" * 40)])
    dirty = run("d", dirty=True)
    with pytest.raises(ValueError, match="local changes"):
        runs_provenance([a, dirty])
    assert runs_provenance([a, dirty], allow_dirty=True)["commit"] == "a" * 40
    (tmp_path / "e").mkdir()
    with pytest.raises(ValueError, match="no readable provenance"):
        runs_provenance([a, tmp_path / "e"])


def test_a_bench_command_is_named_without_where_its_file_went():
    argv = ["--seeds", "0,1", "--results", "/tmp/r", "--allow-dirty", "--out", "runs/x", "--results=/a"]
    assert results.command_line("bench/x.py", argv) == "python bench/x.py --seeds 0,1 --out runs/x"
