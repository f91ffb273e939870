"""``benchmarks/stream_read.py`` reads every row of the split once per pass."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support.tiny_shards import write_tiny_shards

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "stream_read.py"


@pytest.mark.slow
def test_each_pass_reads_the_whole_split_and_reports_its_rate(tmp_path):
    shards = write_tiny_shards(tmp_path / "shards", train=200, val=40)
    done = subprocess.run([sys.executable, str(SCRIPT), shards, "--passes", "2",
                           "--batch-size", "64"], capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["faces_per_pass"] == 200
    assert len(result["faces_per_s_passes"]) == 2 and result["faces_per_s_best"] > 0
