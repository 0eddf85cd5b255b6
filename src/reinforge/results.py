"""Results as data: one JSON file per measured table in ``results/``, and the tables in the docs generated from
them (``reinforge results``; ``reinforge results --check`` fails when a doc differs from what its files give).

A results file says how its numbers were made and holds them per seed::

    {"title": "...", "description": "... (Markdown, shown above the table)",
     "command": "reinforge quickstart --seed {seed}", "commit": "<sha>", "date": "2026-12-07",
     "machine": "<cpu> (2 cores), torch 2.13.0, 2 threads", "bank": "eval", "episodes_per_cell": 500,
     "seeds": [0, 1, 2], "unit": "percent",
     "rows": [{"label": "spatial: SFT (1 demo)", "values": [0.18, 0.186, 0.256]}, ...],
     "comparisons": [{"claim": "RL beats SFT", "better": "spatial: + RL", "worse": "spatial: SFT (1 demo)"}],
     "tuned_on": "val"}

``values`` has one entry per seed (``null`` where a seed was not run). ``unit`` ``percent`` stores fractions and
shows percentages; ``number`` shows the values as they are. A comparison is a verdict on paired differences over
the seeds: it *holds* only when at least three seeds measured both rows and every seed's difference has the claimed
sign (the line names the seeds and the differences), is *reversed* when every one has the other sign, and is *not
established* otherwise.
``tuned_on`` names the bank a recipe was chosen on (``eval`` marks a figure whose settings were picked while
watching the reported bank).

Docs embed a table between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->`` (NAME = the file's stem);
``docs/results.md`` is generated whole, one section per file.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULTS_DIR = "results"
RESULTS_PAGE = "docs/results.md"
DOCS = ("README.md", "docs")  # where embedded tables are looked for
_BLOCK = re.compile(r"(<!-- results:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /results:(?P=name) -->)", re.S)
_UNITS = ("percent", "number")
MIN_SEEDS = 3  # a verdict needs at least this many paired seeds
_REQUIRED = ("title", "command", "commit", "date", "machine", "bank", "episodes_per_cell", "seeds", "rows")


class ResultsError(ValueError):
    """A results file or a doc block that is not as it should be (the message names the file)."""


@dataclass
class Row:
    label: str
    values: list[float | None]


@dataclass
class Comparison:
    claim: str
    better: str
    worse: str


@dataclass
class ResultFile:
    name: str
    title: str
    command: str
    commit: str
    date: str
    machine: str
    bank: str
    episodes_per_cell: int
    seeds: list[int]
    rows: list[Row]
    description: str = ""
    unit: str = "percent"
    comparisons: list[Comparison] = field(default_factory=list)
    tuned_on: str = ""
    measure: str = ""  # what the cells are (default: "success %" for percent tables)
    order: int = 100  # position on the results page

    def row(self, label: str) -> Row:
        for r in self.rows:
            if r.label == label:
                return r
        raise ResultsError(f"results/{self.name}.json: no row {label!r} (rows: {[r.label for r in self.rows]})")


def load_result(path: str | Path) -> ResultFile:
    """Read and check one results file."""
    path = Path(path)
    where = f"{path.parent.name}/{path.name}"
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ResultsError(f"{where}: cannot read it as JSON ({e})") from None
    if not isinstance(data, dict):
        raise ResultsError(f"{where}: must hold a JSON object")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise ResultsError(f"{where}: missing {missing}")
    seeds = data["seeds"]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise ResultsError(f"{where}: seeds must be a non-empty list of ints, got {seeds!r}")
    unit = data.get("unit", "percent")
    if unit not in _UNITS:
        raise ResultsError(f"{where}: unit must be one of {list(_UNITS)}, got {unit!r}")
    rows = []
    for r in data["rows"]:
        vals = r.get("values") if isinstance(r, dict) else None
        if not isinstance(vals, list) or len(vals) != len(seeds) or not all(
                v is None or (isinstance(v, (int, float)) and math.isfinite(v)) for v in vals):
            raise ResultsError(f"{where}: row {r!r} needs 'label' and 'values' (one finite number or null per seed, "
                               f"{len(seeds)} seeds)")
        rows.append(Row(str(r["label"]), [None if v is None else float(v) for v in vals]))
    known = {f for f in ResultFile.__dataclass_fields__} - {"name"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ResultsError(f"{where}: unknown keys {unknown}; known: {sorted(known)}")
    comps = data.get("comparisons", [])
    if not isinstance(comps, list) or not all(isinstance(c, dict) and set(c) == {"claim", "better", "worse"}
                                              for c in comps):
        raise ResultsError(f"{where}: comparisons must be a list of {{claim, better, worse}} objects, got {comps!r}")
    res = ResultFile(
        name=path.stem, rows=rows, comparisons=[Comparison(**c) for c in comps],
        **{k: data[k] for k in known - {"rows", "comparisons"} if k in data})
    for c in res.comparisons:
        res.row(c.better), res.row(c.worse)
    return res


def load_results(root: str | Path = ".") -> dict[str, ResultFile]:
    folder = Path(root) / RESULTS_DIR
    return {p.stem: load_result(p) for p in sorted(folder.glob("*.json"))}


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def _fmt(v: float | None, unit: str, signed: bool = False) -> str:
    if v is None:
        return "-"
    x = 100 * v if unit == "percent" else v
    return f"{x:+.1f}" if signed else f"{x:.1f}"


def verdict(res: ResultFile, c: Comparison) -> str:
    """One line: the claim, whether it holds over the seeds where both rows were measured, and the paired
    differences (percentage points for percent tables)."""
    a, b = res.row(c.better).values, res.row(c.worse).values
    pairs = [(s, x - y) for s, x, y in zip(res.seeds, a, b) if x is not None and y is not None]
    if not pairs:
        return f"{c.claim}: no seed measured both rows"
    diffs = [d for _, d in pairs]
    if len(diffs) < MIN_SEEDS:
        state = f"not established (fewer than {MIN_SEEDS} seeds)"
    elif all(d > 0 for d in diffs):
        state = "holds"
    elif all(d < 0 for d in diffs):
        state = "reversed"
    else:
        state = "not established"
    unit = " points" if res.unit == "percent" else ""
    listed = " / ".join(_fmt(d, res.unit, signed=True) for d in diffs)
    m, s = mean_std(diffs)
    spread = f", mean {_fmt(m, res.unit, signed=True)} +- {_fmt(s, res.unit)}" if len(diffs) > 1 else ""
    return (f"{c.claim} ({c.better} vs {c.worse}): **{state}** on {len(diffs)} seed{'s' * (len(diffs) > 1)} "
            f"(paired differences {listed}{unit}{spread})")


def render_table(res: ResultFile) -> str:
    """The Markdown table (one column per seed, then mean +- std), its source line and its verdicts."""
    many = len(res.seeds) > 1
    head = ["", *(f"seed {s}" for s in res.seeds)] + (["mean +- std"] if many else [])
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for r in res.rows:
        cells = [r.label, *(_fmt(v, res.unit) for v in r.values)]
        if many:
            got = [v for v in r.values if v is not None]
            m, s = mean_std(got) if got else (None, None)
            if m is None:
                cells.append("-")
            elif len(got) == 1:
                cells.append(f"{_fmt(m, res.unit)} (1 seed)")
            else:
                cells.append(f"**{_fmt(m, res.unit)} +- {_fmt(s, res.unit)}**"
                             + (f" ({len(got)} seeds)" if len(got) < len(r.values) else ""))
        lines.append("| " + " | ".join(cells) + " |")
    measure = res.measure or ("success %" if res.unit == "percent" else "")
    unit = f"{measure}, " if measure else ""
    tuned = f"; settings chosen on the `{res.tuned_on}` bank" if res.tuned_on else ""
    commit = res.commit[:10] if re.fullmatch(r"[0-9a-f]{40}", res.commit) else res.commit
    lines += ["", f"<sub>{unit}`{res.bank}` bank, {res.episodes_per_cell} episodes per cell{tuned}. "
              f"Command: `{res.command}`; commit `{commit}`, {res.date}; {res.machine}. "
              f"Data: [`results/{res.name}.json`](results/{res.name}.json).</sub>"]
    if res.comparisons:
        lines += [""] + [f"- {verdict(res, c)}" for c in res.comparisons]
    return "\n".join(lines) + "\n"


def _relink(table: str, doc: Path, root: Path) -> str:
    """Point the data link of a table at the results folder from where ``doc`` lies."""
    depth = len(doc.resolve().relative_to(root.resolve()).parts) - 1
    return table.replace("](results/", "](" + "../" * depth + "results/")


def render_page(results: dict[str, ResultFile]) -> str:
    """``docs/results.md``: every results file, ordered by its ``order``, then its name."""
    out = ["# Measured results", "",
           "Generated by `reinforge results` from the files in [`results/`](../results/): do not edit by hand. "
           "Each table names the command that made it, the commit and machine it ran on, the bank of initial "
           "states it is measured on and the episodes behind each cell; verdicts are stated over paired seeds "
           "(they hold only when every seed agrees).", ""]
    for res in sorted(results.values(), key=lambda r: (r.order, r.name)):
        out += [f"## {res.title}", ""]
        if res.description:
            out += [res.description.strip(), ""]
        out += [render_table(res)]
    return "\n".join(out).rstrip() + "\n"


def _doc_files(root: Path) -> list[Path]:
    files = []
    for d in DOCS:
        p = root / d
        files += sorted(p.rglob("*.md")) if p.is_dir() else ([p] if p.is_file() else [])
    return [f for f in files if f.resolve() != (root / RESULTS_PAGE).resolve()]


def generate(root: str | Path = ".") -> dict[Path, str]:
    """Every generated doc's new text: ``docs/results.md`` and each doc with embedded blocks."""
    root = Path(root)
    results = load_results(root)
    out: dict[Path, str] = {root / RESULTS_PAGE: _relink(render_page(results), root / RESULTS_PAGE, root)}

    for doc in _doc_files(root):
        text = doc.read_text()
        if "<!-- results:" not in text:
            continue

        def fill(m: re.Match, doc: Path = doc) -> str:
            name = m.group("name")
            if name not in results:
                raise ResultsError(f"{doc.relative_to(root)} embeds results:{name}, but results/{name}.json does "
                                   f"not exist (files: {sorted(results)})")
            return m.group(1) + _relink(render_table(results[name]), doc, root) + m.group(4)

        new = _BLOCK.sub(fill, text)
        opened, closed = text.count("<!-- results:"), text.count("<!-- /results:")
        if opened != closed or len(_BLOCK.findall(text)) != opened:
            raise ResultsError(f"{doc.relative_to(root)}: unmatched <!-- results:NAME --> / <!-- /results:NAME --> "
                               "markers")
        out[doc] = new
    return out


def stale(root: str | Path = ".") -> list[Path]:
    """The generated docs whose text differs from what ``results/`` gives (empty when all are current)."""
    return [p for p, text in generate(root).items() if not p.is_file() or p.read_text() != text]


def write(root: str | Path = ".") -> list[Path]:
    """Regenerate the docs; returns the files that changed."""
    from reinforge.fsutil import write_text_atomic

    changed = stale(root)
    texts = generate(root)
    for p in changed:
        p.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(p, texts[p])
    return changed


def result_record(**fields: Any) -> dict[str, Any]:
    """A results-file dict from keyword fields, checked by the same rules as ``load_result`` (for scripts that
    write one)."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "check.json"
        p.write_text(json.dumps(fields))
        load_result(p)
    return fields


def write_result(folder: str | Path, name: str, **fields: Any) -> Path:
    """Check ``fields`` as a results file (``result_record``) and write them to ``folder/NAME.json`` atomically;
    the path written. Bench scripts end with this, then ``reinforge results`` renders the docs."""
    from reinforge.fsutil import write_text_atomic

    if not re.fullmatch(r"[\w.-]+", name):
        raise ResultsError(f"results name {name!r}: use letters, digits, '_', '.' or '-' (it names a doc block)")
    record = result_record(**fields)
    path = Path(folder) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(record, indent=2) + "\n")
    return path


def command_line(script: str, argv: list[str]) -> str:
    """``python SCRIPT ARGS`` as a results file names its command: the arguments that made the numbers, without
    where the file was written (``--results``) or ``--allow-dirty``."""
    args, skip = [], False
    for x in argv:
        if skip:
            skip = False
        elif x == "--results":
            skip = True
        elif not x.startswith("--results=") and x != "--allow-dirty":
            args.append(x)
    return " ".join(["python", script, *args])
