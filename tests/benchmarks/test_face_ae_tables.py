"""``benchmarks/face_ae_tables.py --quick`` runs the seed's tables 1-3 protocol end to end."""

from __future__ import annotations

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
