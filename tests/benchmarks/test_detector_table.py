"""``benchmarks/detectors.py`` measures every detector on every set and writes its rows in
the columns of the results data (``benchmarks/results/*.csv``)."""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.datasets import DATASETS_DIR

from ray_fer.data.detectors import mtcnn_installed

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SCRIPT = BENCHMARKS / "detectors.py"
_spec = importlib.util.spec_from_file_location("report", BENCHMARKS / "report.py")
_report = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("report", _report)  # dataclasses look their module up there
_spec.loader.exec_module(_report)
#: The columns benchmarks/report.py reads.
COLUMNS = list(_report.COLUMNS)

pytestmark = pytest.mark.slow


def test_every_set_and_detector_gets_rates_and_times(tmp_path):
    if not all((DATASETS_DIR / f"{n}.tar.gz").is_file()
               for n in ("jaffe", "taiwanese", "ckplus48")):
        pytest.skip(f"real datasets not present in {DATASETS_DIR}")
    rows_file = tmp_path / "rows.csv"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--step", "25", "--work", str(tmp_path / "data"),
         "--rows", str(rows_file)],
        capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "RAY_FER_DATASETS": str(DATASETS_DIR)})
    assert done.returncode == 0, done.stderr[-2000:]
    with rows_file.open() as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == COLUMNS
        rows = list(reader)
    detectors = {"haar", "mtcnn"} if mtcnn_installed() else {"haar"}
    assert {r["method"] for r in rows} == detectors
    sets = {r["dataset"] for r in rows}
    assert {"jaffe", "taiwanese", "ckplus48", "jaffe-rot20", "package-faces"} <= sets
    for row in rows:
        value = float(row["value"])
        if row["metric"] == "ms_per_image":
            assert value > 0 and float(row["std"]) >= 0
        else:
            assert 0 <= value <= 1 and row["std"] == ""
        assert row["table"] == "face_detectors" and "CPU" in row["device"]
        assert row["command"].startswith("python benchmarks/detectors.py --step 25")
    rates = {(r["dataset"], r["method"]): float(r["value"]) for r in rows
             if r["metric"] == "correct_rate"}
    assert rates[("jaffe", "haar")] == 1.0  # every 25th JAFFE portrait: the face, centred
    # The table: its header, then a line per (set, detector).
    table = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len({(r["dataset"], r["method"]) for r in rows})
