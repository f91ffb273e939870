"""``benchmarks/face_ae_tables.py --quick`` runs the paper's tables 1-3 protocol end to end."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "face_ae_tables.py"


@pytest.mark.slow
def test_quick_mode_prints_one_table_row_per_training_set():
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    names = [row.split("|")[1].strip() for row in rows[1:]]
    assert names == ["original", "under T_u=2", "over T_o=6", "rerender (ours)"]
    for row in rows[1:]:
        cells = [c.strip() for c in row.split("|")[2:-1]]
        assert cells[0] == "2" and len(cells) == 9 and all(" ± " in c for c in cells[1:])


def test_eval_fold_splits_the_people_of_a_fold_from_the_rest(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("face_ae_tables", SCRIPT)
    tables = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "face_ae_tables", tables)  # its dataclasses look it up
    spec.loader.exec_module(tables)
    uri = tables.quick_data(tmp_path)
    everyone = tables.load_split(uri, "train")
    train, test = (tables.load_split(uri, "train", fold=0, in_fold=keep) for keep in (False, True))
    assert len(train.images) + len(test.images) == len(everyone.images)
    assert len(test.images) > 0 and len(train.images) > 0
    assert not set(train.subjects) & set(test.subjects)
