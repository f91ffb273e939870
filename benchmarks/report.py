"""Writes benchmarks/RESULTS.md from the results data in benchmarks/results/.

    python benchmarks/report.py            # rewrite benchmarks/RESULTS.md
    python benchmarks/report.py --check    # exit 1 if RESULTS.md is not what the data gives

Measured figures live in every ``benchmarks/results/*.csv`` but ``papers.csv``, one row per
figure (``COLUMNS``); the papers' own figures live in ``papers.csv`` (``PAPER_COLUMNS``).
``tables.yaml`` there gives the sections, the order, headings and notes of the tables and the
labels of metrics; a table it does not name is still shown, under "Other tables".

In a table, rows sharing (dataset, method, variant, epochs, split, selected_on, device) make
one line, and each (metric, tta) makes a column. A cell aggregates its rows: one row keeps
its value (± its std), several rows (one seed or run each) give their mean ± sample std.
Metrics named ``<m>_min`` and ``<m>_max`` share one column ``<m>`` that shows the range.
"""

from __future__ import annotations

import argparse
import csv
import re
import statistics
import sys
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
RESULTS_MD = HERE / "RESULTS.md"
PAPERS = "papers.csv"
COLUMNS = ("table", "dataset", "split", "selected_on", "method", "variant", "tta", "seeds",
           "epochs", "metric", "unit", "value", "std", "device", "date", "commit", "command",
           "note")
PAPER_COLUMNS = ("table", "dataset", "split", "selected_on", "method", "variant", "tta",
                 "metric", "unit", "value", "authors", "year", "arxiv", "source", "note")
REQUIRED = ("table", "metric", "value", "device", "date", "commit", "command")
PAPER_REQUIRED = ("table", "metric", "value", "authors")
KEY = ("dataset", "method", "variant", "epochs", "split", "selected_on", "device")
TTA = {"": "", "flip": "flip", "tencrop": "ten-crop"}
#: Unit shown in a column header; other units are shown as written.
UNIT_LABELS = {"fraction": "%", "x": "", "": ""}
NO_SELECTION = "none"
SAME_SPLIT = "⚠"


class ReportError(Exception):
    """A results file the report cannot use; the message names the file, line and column."""


@dataclass(frozen=True)
class Column:
    """One column of a table: a metric (or the range of ``<metric>_min``/``_max``) at a TTA;
    ``last``: its rows took the last epoch (no selection) beside a line that selected."""

    metric: str
    tta: str
    last: bool = False


def read_rows(path: Path, columns: tuple[str, ...], required: tuple[str, ...]) -> list[dict]:
    """The rows of one results CSV, checked; each row also carries ``where`` (file:line)."""
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise ReportError(f"{path}: no column {', '.join(missing)}; the header must hold "
                              f"{','.join(columns)}")
        rows = []
        for row in reader:
            where = f"{path}:{reader.line_num}"
            row = {c: (row.get(c) or "").strip() for c in columns} | {"where": where}
            _check_row(row, required)
            rows.append(row)
    return rows


def _check_row(row: dict, required: tuple[str, ...]) -> None:
    where = row["where"]
    for c in required:
        if not row[c]:
            raise ReportError(f"{where}: column '{c}' is empty; every row needs it")
    for c in ("value", "std"):
        if row.get(c) and _decimal(row[c]) is None:
            raise ReportError(f"{where}: column '{c}' is '{row[c]}', not a number")
    if row["tta"] not in TTA:
        raise ReportError(f"{where}: column 'tta' is '{row['tta']}'; use one of "
                          f"{', '.join(repr(t) for t in TTA)} (empty: single crop)")
    if row["variant"].startswith("tta-"):
        raise ReportError(f"{where}: variant '{row['variant']}' names a test-time augmentation;"
                          f" put it in column 'tta' and the recipe in 'variant'")
    if any(not s.isdigit() for s in row.get("seeds", "").split()):
        raise ReportError(f"{where}: column 'seeds' is '{row['seeds']}'; write the seeds as "
                          f"integers separated by spaces")


def _decimal(text: str) -> Decimal | None:
    try:
        return Decimal(text)
    except InvalidOperation:
        return None


def places(text: str) -> int:
    """Digits after the decimal point as the figure was written ('0.6974' -> 4)."""
    return len(text.partition(".")[2])


def fmt(value: float, digits: int, unit: str) -> str:
    """``value`` to ``digits`` places as written in the data; fractions shown as percent."""
    if unit == "fraction":
        value, digits = value * 100, max(digits - 2, 0)
    return f"{value:,.{digits}f}"


def cell(rows: list[dict]) -> tuple[str, int]:
    """Text and count (seeds or runs) of one metric's rows: one row keeps its value ± std,
    several give mean ± sample std over them."""
    unit = rows[0]["unit"]
    digits = max(places(r["value"]) for r in rows)
    if len(rows) == 1:
        row = rows[0]
        text = fmt(float(row["value"]), digits, unit)
        if row["std"]:
            text += " ± " + fmt(float(row["std"]), places(row["std"]), unit)
        return text, max(len(row["seeds"].split()), 1)
    for row in rows:
        if len(row["seeds"].split()) > 1:
            raise ReportError(f"{row['where']}: the row already aggregates seeds "
                              f"{row['seeds']}, and other rows share its table line and "
                              f"metric; give such rows one seed each")
    values = [float(r["value"]) for r in rows]
    mean, std = statistics.fmean(values), statistics.stdev(values)
    return f"{fmt(mean, digits, unit)} ± {fmt(std, digits, unit)}", len(rows)


def range_cell(lows: list[dict], highs: list[dict]) -> tuple[str, int]:
    """The range over the rows of ``<m>_min`` and ``<m>_max`` ('2.7–4.8', '≤ 0.26')."""
    rows = lows + highs
    unit, digits = rows[0]["unit"], max(places(r["value"]) for r in rows)
    lo = min((float(r["value"]) for r in lows), default=None)
    hi = max((float(r["value"]) for r in highs), default=None)
    if lo is None:
        text = f"≤ {fmt(hi, digits, unit)}"
    elif hi is None:
        text = f"≥ {fmt(lo, digits, unit)}"
    elif lo == hi:
        text = fmt(lo, digits, unit)
    else:
        text = f"{fmt(lo, digits, unit)}–{fmt(hi, digits, unit)}"
    return text, max(len(lows), len(highs))


def protocol(split: str, selected_on: str) -> str:
    """The split reported and what chose the checkpoint, recipe or winner; ⚠ when it is the
    reported split itself (the figure is then optimistic, not selection-free)."""
    if not selected_on:
        return split
    if selected_on == NO_SELECTION:
        return f"{split}; last epoch, no selection"
    if selected_on == split:
        return f"{split}; selected on the same split {SAME_SPLIT}"
    return f"{split}; selected on {selected_on}"


def _base(metric: str) -> tuple[str, str]:
    """(``m``, ``'min'|'max'``) for a range metric, else (``metric``, '')."""
    match = re.fullmatch(r"(.+)_(min|max)", metric)
    return (match[1], match[2]) if match else (metric, "")


def _column(row: dict) -> Column:
    return Column(_base(row["metric"])[0], row["tta"], row.get("last", False))


def _columns(rows: list[dict]) -> list[Column]:
    """Columns in order of each metric's first row, TTA columns after their metric's and
    last-epoch columns after all others."""
    first: dict[str, int] = {}
    for i, row in enumerate(rows):
        first.setdefault(_base(row["metric"])[0], i)
    order = list(TTA)
    return sorted({_column(r) for r in rows},
                  key=lambda c: (c.last, first[c.metric], order.index(c.tta)))


def _header(column: Column, labels: dict, unit: str) -> str:
    label = labels.get(column.metric, column.metric.replace("_", " "))
    if column.tta:
        label += f" + {TTA[column.tta]} TTA"
    if column.last:
        label += ", last epoch"
    shown = UNIT_LABELS.get(unit, unit)
    return label + (f" ({shown})" if shown else "")


def _line_cells(rows: list[dict], columns: list[Column]) -> tuple[list[str], int]:
    """The cells of one table line and its count (the most seeds or runs of any cell);
    a cell with fewer says how many it has."""
    done = []
    for column in columns:
        mine = [r for r in rows if _column(r) == column]
        ends = [_base(r["metric"])[1] for r in mine]
        if not mine:
            done.append(None)
        elif any(ends):
            done.append(range_cell([r for r, e in zip(mine, ends, strict=True) if e == "min"],
                                   [r for r, e in zip(mine, ends, strict=True) if e == "max"]))
        else:
            done.append(cell(mine))
    count = max((c[1] for c in done if c), default=1)
    texts = ["" if c is None else c[0] if c[1] == count else f"{c[0]} ({c[1]})" for c in done]
    return texts, count


def _with_protocol(rows: list[dict], last_as_column: bool) -> list[dict]:
    """Rows with their ``protocol``; with ``last_as_column``, a last-epoch row joins the
    line of the same run that selected its checkpoint (as a last-epoch column), if one."""
    chosen: dict[tuple, set[str]] = {}
    for r in rows:
        if r["selected_on"] != NO_SELECTION:
            chosen.setdefault(tuple(r[k] for k in KEY if k != "selected_on"), set()).add(
                r["selected_on"])
    out = []
    for r in rows:
        sel = chosen.get(tuple(r[k] for k in KEY if k != "selected_on"), set())
        if last_as_column and r["selected_on"] == NO_SELECTION and len(sel) == 1:
            r = r | {"protocol": protocol(r["split"], next(iter(sel))), "last": True}
        else:
            r = r | {"protocol": protocol(r["split"], r["selected_on"])}
        out.append(r)
    return out


def _table_md(rows: list[dict], keys: list[tuple[str, str]], labels: dict, count_label: str,
              note_column: bool = False) -> list[str]:
    """A Markdown table: a line per distinct value of the ``keys`` fields (field, header),
    a column per metric and TTA."""
    keys = [(k, label) for k, label in keys if any(r[k] for r in rows)]
    lines: dict[tuple, list[dict]] = {}
    for row in rows:
        lines.setdefault(tuple(row[k] for k, _ in keys), []).append(row)
    columns = _columns(rows)
    body = []
    for key, group in lines.items():
        texts, count = _line_cells(group, columns)
        note = [next((r["note"] for r in group if r["note"]), "")] if note_column else []
        body.append((list(key), count, texts, note))
    show_count = any(count > 1 for _, count, _, _ in body)
    header = [label for _, label in keys] + ([count_label] if show_count else [])
    header += [_header(c, labels, next(r["unit"] for r in rows if _column(r) == c))
               for c in columns]
    header += ["note"] if note_column else []
    out = [_md_row(header), _md_row(["---"] * len(header))]
    for key_cells, count, texts, note in body:
        out.append(_md_row(key_cells + ([str(count)] if show_count else []) + texts + note))
    return out


def _measured_md(rows: list[dict], spec: dict, labels: dict) -> list[str]:
    """The table of one table key's measured rows; constant or empty key columns hidden."""
    rows = _with_protocol(rows, bool(spec.get("last_epoch_column")))
    names = {"dataset": "data", "method": "method", "variant": "variant", "epochs": "epochs",
             "protocol": "protocol", "device": "device"} | spec.get("keys", {})
    varies = {k: len({r[k] for r in rows}) > 1 for k in ("dataset", "device")}
    keys = [(k, label) for k, label in names.items() if varies.get(k, True)]
    return _table_md(rows, keys, labels, spec.get("count", "runs"), bool(spec.get("show_note")))


def _papers_md(papers: list[dict], labels: dict) -> list[str]:
    """The papers' figures of one table, a line per work, data, model and protocol."""
    rows = []
    for p in papers:
        work = p["authors"] + (f" {p['year']}" if p["year"] else "")
        work += (f", arXiv {p['arxiv']}" if p["arxiv"] else "") + (
            f"; {p['source']}" if p["source"] else "")
        rows.append(p | {"work": work, "seeds": "", "std": "",
                         "model": p["method"] + (f", {p['variant']}" if p["variant"] else ""),
                         "protocol": protocol(p["split"], p["selected_on"])})
    keys = [("work", "work"), ("dataset", "data"), ("model", "model"), ("protocol", "protocol")]
    return (["Papers' and public code's own figures, as their authors report them (not "
             "measured here):", ""]
            + _table_md(rows, keys, labels, "runs", note_column=True))


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _caption(rows: list[dict], files: list[str], how: str | None) -> str:
    devices = sorted({r["device"] for r in rows})
    dates = sorted({r["date"] for r in rows})
    when = dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"
    commits = sorted({r["commit"] for r in rows})
    data = sorted({r["dataset"] for r in rows if r["dataset"]})
    text = f"Data: {data[0]}. " if len(data) == 1 else ""
    text += (f"Measured on {', '.join(devices)}, {when}, at commit"
             f"{'s' if len(commits) > 1 else ''} {', '.join(commits)}; each row's command is in "
             f"{', '.join(f'`benchmarks/results/{f}`' for f in files)}.")
    same = {tuple(r[k] for k in KEY) for r in rows
            if r["split"] and r["selected_on"] == r["split"]}
    if same:
        text += (f" {SAME_SPLIT} {len(same)} line{'s' if len(same) > 1 else ''} chose the "
                 f"checkpoint, recipe or winner on the split reported: optimistic, not "
                 f"selection-free.")
    if how:
        text += f" Reproduce: [benchmarks/README.md](README.md#{how})."
    return f"*{text}*"


def slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


@dataclass
class Results:
    """What a results folder holds: measured rows and their files by table key, the papers'
    rows and the layout (``tables.yaml``, empty when absent)."""

    by_table: dict[str, list[dict]]
    files: dict[str, list[str]]
    papers: list[dict]
    layout: dict


def load(results_dir: Path) -> Results:
    """Every results CSV of ``results_dir``, checked, and its layout."""
    by_table: dict[str, list[dict]] = {}
    files: dict[str, list[str]] = {}
    measured = [p for p in sorted(results_dir.glob("*.csv")) if p.name != PAPERS]
    if not measured:
        raise ReportError(f"{results_dir} holds no results CSV; pass the folder of "
                          f"accuracy.csv, speed.csv, ... with --results")
    for path in measured:
        for row in read_rows(path, COLUMNS, REQUIRED):
            by_table.setdefault(row["table"], []).append(row)
            if path.name not in files.setdefault(row["table"], []):
                files[row["table"]].append(path.name)
    papers_path = results_dir / PAPERS
    papers = read_rows(papers_path, PAPER_COLUMNS, PAPER_REQUIRED) if papers_path.exists() else []
    layout_path = results_dir / "tables.yaml"
    layout = yaml.safe_load(layout_path.read_text()) if layout_path.exists() else None
    return Results(by_table, files, papers, layout or {})


def render(results_dir: Path = RESULTS_DIR) -> str:
    """The whole RESULTS.md that the data in ``results_dir`` gives."""
    results = load(results_dir)
    by_table, layout = results.by_table, results.layout
    labels = layout.get("metrics", {})
    sections = [dict(s) for s in layout.get("sections", [])]
    named = {t["key"] for s in sections for t in s.get("tables", [])}
    others = [{"key": k} for k in by_table if k not in named]
    if others:
        sections.append({"heading": "Other tables", "tables": others})
    sections = [s | {"tables": [t for t in s.get("tables", []) if t["key"] in by_table]}
                for s in sections]
    sections = [s for s in sections if s["tables"]]
    out = [f"# {layout.get('title', 'Results')}", ""]
    if layout.get("intro"):
        out += [layout["intro"].strip(), ""]
    closing = layout.get("closing")
    headings = [s["heading"] for s in sections] + ([closing["heading"]] if closing else [])
    out.append("Sections: " + " · ".join(f"[{h}](#{slug(h)})" for h in headings) + ".")
    for s in sections:
        out += ([""] if out[-1] else []) + [f"## {s['heading']}", ""]
        if s.get("intro"):
            out += [s["intro"].strip(), ""]
        for t in s["tables"]:
            out += _table_section(t, by_table[t["key"]], results.files[t["key"]], labels,
                                  results.papers)
    if closing:
        out += ([""] if out[-1] else []) + [f"## {closing['heading']}", "",
                                            closing["text"].strip()]
    return "\n".join(out).rstrip() + "\n"


def _table_section(spec: dict, rows: list[dict], files: list[str], labels: dict,
                   papers: list[dict]) -> list[str]:
    out = [f"### {spec.get('heading', spec['key'])}", ""]
    if spec.get("note"):
        out += [spec["note"].strip(), ""]
    out += _measured_md(rows, spec, labels)
    out += ["", _caption(rows, files, spec.get("how")), ""]
    mine = [p for p in papers if p["table"] == spec["key"]]
    if mine:
        out += _papers_md(mine, labels) + [""]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true",
                   help="exit 1 when the file differs from what the data gives; write nothing")
    p.add_argument("--results", type=Path, default=RESULTS_DIR, help="the results folder")
    p.add_argument("--out", type=Path, default=RESULTS_MD, help="the Markdown file")
    args = p.parse_args(argv)
    try:
        text = render(args.results)
    except (ReportError, OSError, yaml.YAMLError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.check:
        if not args.out.exists() or args.out.read_text() != text:
            print(f"error: {args.out} is not what benchmarks/report.py makes of {args.results}; "
                  f"run python benchmarks/report.py and commit both", file=sys.stderr)
            return 1
        return 0
    tmp = args.out.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
