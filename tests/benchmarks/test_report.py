"""``benchmarks/report.py`` makes RESULTS.md from the results data: the committed page is what
the data gives, lines group a run's seeds into mean ± std, the protocol says what chose each
figure, and bad rows are refused with one line naming the file and column."""

from __future__ import annotations

import csv
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "report.py"
_spec = importlib.util.spec_from_file_location("report", SCRIPT)
report = importlib.util.module_from_spec(_spec)
sys.modules["report"] = report  # dataclasses look their module up there
_spec.loader.exec_module(report)

BASE = {"table": "fer2013", "dataset": "FER2013", "split": "PublicTest",
        "selected_on": "PublicTest", "method": "vgg_bn", "variant": "packaged", "epochs": "80",
        "metric": "accuracy", "unit": "fraction", "device": "NVIDIA H100 80GB",
        "date": "2026-11-25", "commit": "abc1234", "command": "python -m ray_fer.train vgg_bn"}


def _write(folder: Path, rows: list[dict], layout: dict | None = None,
           papers: list[dict] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "accuracy.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=report.COLUMNS)
        w.writeheader()
        w.writerows([{c: ({**BASE, **r}).get(c, "") for c in report.COLUMNS} for r in rows])
    if papers is not None:
        with (folder / "papers.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=report.PAPER_COLUMNS)
            w.writeheader()
            w.writerows([{c: p.get(c, "") for c in report.PAPER_COLUMNS} for p in papers])
    if layout is not None:
        (folder / "tables.yaml").write_text(yaml.safe_dump(layout))
    return folder


def _table(text: str, heading: str) -> list[dict]:
    """The first Markdown table after ``heading`` as dicts of header -> cell."""
    lines = text.split(f"### {heading}\n", 1)[1].splitlines()
    rows = [line for line in lines[lines.index(next(x for x in lines if x.startswith("|"))):]]
    rows = rows[:next((i for i, x in enumerate(rows) if not x.startswith("|")), len(rows))]
    cells = [[c.strip() for c in r.strip("|").split(" | ")] for r in rows]
    return [dict(zip(cells[0], r, strict=True)) for r in cells[2:]]


def _layout(**table) -> dict:
    return {"sections": [{"heading": "Accuracy",
                          "tables": [{"key": "fer2013", "heading": "FER2013", **table}]}]}


def test_results_md_is_what_the_script_makes_of_the_committed_data():
    assert (ROOT / "benchmarks" / "RESULTS.md").read_text() == report.render(), (
        "benchmarks/RESULTS.md is stale: run python benchmarks/report.py and commit it")


def test_the_seeds_of_one_line_give_their_mean_and_sample_std(tmp_path):
    rows = [{"seeds": s, "value": v} for s, v in (("0", "0.6974"), ("1", "0.7002"),
                                                    ("2", "0.7019"))]
    line, = _table(report.render(_write(tmp_path, rows, _layout(count="seeds"))), "FER2013")
    # mean 69.983, sample std 0.227: shown to the places the figures were written with
    assert line["accuracy (%)"] == "69.98 ± 0.23"
    assert line["seeds"] == "3"


def test_one_row_keeps_the_std_it_carries_and_the_places_it_was_written_with(tmp_path):
    rows = [{"split": "held-out fold of 10", "selected_on": "held-out fold of 10",
             "seeds": "0", "value": "0.941", "std": "0.071"},
            {"split": "held-out fold of 10", "selected_on": "held-out fold of 10",
             "seeds": "0", "metric": "macro_f1", "unit": "", "value": "0.880"}]
    line, = _table(report.render(_write(tmp_path, rows, _layout())), "FER2013")
    assert line["accuracy (%)"] == "94.1 ± 7.1"
    assert line["macro f1"] == "0.880"


def test_test_time_augmentation_gets_columns_of_its_own(tmp_path):
    rows = [{"value": "0.700"}, {"tta": "flip", "value": "0.710"},
            {"tta": "tencrop", "value": "0.713"}]
    line, = _table(report.render(_write(tmp_path, rows, _layout())), "FER2013")
    assert (line["accuracy (%)"], line["accuracy + flip TTA (%)"],
            line["accuracy + ten-crop TTA (%)"]) == ("70.0", "71.0", "71.3")


def test_a_figure_chosen_on_the_split_it_reports_is_marked_and_a_val_chosen_one_is_not(tmp_path):
    rows = [{"value": "0.700", "seeds": "0"},
            # the same recipe, its checkpoint chosen on a validation split carved from train
            {"selected_on": "val", "variant": "search-winner", "value": "0.690", "seeds": "0"},
            {"selected_on": "val", "variant": "search-winner", "value": "0.694", "seeds": "1"}]
    text = report.render(_write(tmp_path, rows, _layout(count="seeds")))
    same, carved = _table(text, "FER2013")
    assert same["protocol"] == "PublicTest; selected on the same split ⚠"
    assert carved["protocol"] == "PublicTest; selected on val"
    assert (carved["accuracy (%)"], carved["seeds"]) == ("69.2 ± 0.3", "2")
    assert "⚠ 1 line chose" in text


def test_last_epoch_rows_join_the_line_that_selected_when_the_layout_asks(tmp_path):
    rows = [{"value": "0.700"}, {"selected_on": "none", "value": "0.695"}]
    folder = _write(tmp_path / "a", rows, _layout(last_epoch_column=True))
    line, = _table(report.render(folder), "FER2013")
    assert line["accuracy, last epoch (%)"] == "69.5"
    apart = _table(report.render(_write(tmp_path / "b", rows, _layout())), "FER2013")
    assert [x["protocol"] for x in apart] == ["PublicTest; selected on the same split ⚠",
                                              "PublicTest; last epoch, no selection"]


def test_min_and_max_metrics_make_one_range_over_the_runs_of_a_line(tmp_path):
    common = {"table": "trial-start", "split": "", "selected_on": "", "epochs": "", "unit": "s",
              "variant": "cached"}
    rows = [{**common, "metric": "new_min", "value": "2.7"},
            {**common, "metric": "new_max", "value": "4.8"},
            {**common, "metric": "new_min", "value": "3.1"},
            {**common, "metric": "new_max", "value": "3.3"},
            {**common, "metric": "reused_max", "value": "0.35"}]
    line, = _table(report.render(_write(tmp_path, rows)), "trial-start")
    assert line["new (s)"] == "2.7–4.8"
    assert line["reused (s)"] == "≤ 0.35 (1)"
    assert line["runs"] == "2"


def test_papers_figures_sit_under_their_table_and_say_whose_they_are(tmp_path):
    papers = [{"table": "fer2013", "dataset": "FER2013", "split": "test", "method": "VGG",
               "metric": "accuracy", "unit": "fraction", "value": "0.727",
               "authors": "Pramerdorfer & Kampel", "year": "2016", "arxiv": "1612.02903"}]
    text = report.render(_write(tmp_path, [{"value": "0.700"}], _layout(), papers))
    ours_at = text.index("| vgg_bn |")
    theirs_at = text.index("Pramerdorfer & Kampel 2016, arXiv 1612.02903")
    assert ours_at < text.index("Papers' and public code's own figures") < theirs_at
    assert "| 72.7 |" in text[theirs_at:]


def test_a_table_the_layout_does_not_name_still_appears(tmp_path):
    rows = [{"value": "0.700"}, {"table": "ensembles", "variant": "ensemble-top5",
                                 "value": "0.720"}]
    text = report.render(_write(tmp_path, rows, _layout()))
    assert "## Other tables" in text
    line, = _table(text, "ensembles")
    assert (line["variant"], line["accuracy (%)"]) == ("ensemble-top5", "72.0")


def test_rows_that_already_aggregate_seeds_are_not_averaged_again(tmp_path):
    rows = [{"seeds": "0 1 2", "value": "0.700"}, {"seeds": "3", "value": "0.690"}]
    with pytest.raises(report.ReportError, match="already aggregates seeds 0 1 2"):
        report.render(_write(tmp_path, rows))


@pytest.mark.parametrize(("row", "says"), [
    ({"value": "69.9 %"}, "column 'value' is '69.9 %', not a number"),
    ({"variant": "tta-tencrop", "value": "0.7"}, "put it in column 'tta'"),
    ({"commit": "", "value": "0.7"}, "column 'commit' is empty"),
])
def test_a_bad_row_is_one_error_line_naming_file_line_and_column(tmp_path, row, says):
    folder = _write(tmp_path, [{"value": "0.7"}, row])
    done = subprocess.run([sys.executable, str(SCRIPT), "--results", str(folder), "--out",
                           str(tmp_path / "RESULTS.md")], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {folder / 'accuracy.csv'}:3: ")
    assert says in lines[0]
    assert not (tmp_path / "RESULTS.md").exists()


def test_check_fails_on_a_stale_page_and_passes_once_regenerated(tmp_path):
    folder = _write(tmp_path / "results", [{"value": "0.700"}])
    page = tmp_path / "RESULTS.md"
    page.write_text("# an old page\n")
    args = [sys.executable, str(SCRIPT), "--results", str(folder), "--out", str(page)]
    stale = subprocess.run([*args, "--check"], capture_output=True, text=True, timeout=60,
                           check=False)
    assert stale.returncode == 1 and "run python benchmarks/report.py" in stale.stderr
    subprocess.run(args, check=True, timeout=60)
    assert subprocess.run([*args, "--check"], timeout=60, check=False).returncode == 0


def test_links_to_results_and_to_the_benchmarks_readme_reach_a_heading():
    def anchors(path: Path) -> set[str]:
        return {report.slug(m) for m in re.findall(r"^#+ (.+)$", path.read_text(), re.M)}

    results, guide = ROOT / "benchmarks" / "RESULTS.md", ROOT / "benchmarks" / "README.md"
    sources = [ROOT / "README.md", *ROOT.glob("ray_fer/**/*.py"), *ROOT.glob("ray_fer/**/*.yaml"),
               *ROOT.glob("search_spaces/*.yaml"), *ROOT.glob("benchmarks/*.py")]
    wanted = [(src, a) for src in sources
              for a in re.findall(r"RESULTS\.md#([\w-]+)", src.read_text())]
    assert wanted, "README.md links no RESULTS.md heading"
    missing = [f"{src.relative_to(ROOT)}: #{a}" for src, a in wanted if a not in anchors(results)]
    missing += [f"benchmarks/RESULTS.md: README.md#{a}"
                for a in re.findall(r"\]\(README\.md#([\w-]+)\)", results.read_text())
                if a not in anchors(guide)]
    assert not missing, missing
