"""``benchmarks/throughput.py --spread`` reports a search's trials/hour overall and once its
trial processes exist (after the first round), for one GPU and for all of them."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "throughput.py"


def test_spread_reports_the_rate_after_the_first_round_beside_the_overall_one(tmp_path):
    out = tmp_path / "spread.json"
    # --cpu-smoke: two stand-in "GPUs"; one trial per GPU, so on one GPU the first trial
    # starts a process and the other two reuse it.
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--cpu-smoke", "--spread", "deep_emotion", "--trials", "3",
         "--per-gpu", "1", "--epochs", "2", "--rows", "256", "--work", str(tmp_path / "work"),
         "--json", str(out)], capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    one, two = result["gpus_1"], result["gpus_2"]
    for given in (one, two):
        rate = given["steady_trials_per_hour"]
        assert math.isfinite(rate) and rate > 0
    # Sequential trials: the rate without the first trial's process start, Ray's start and
    # the search's set-up is higher than the whole search's.
    assert one["steady_trials_per_hour"] > one["trials_per_hour"]
    assert math.isclose(result["steady_scaling"],
                        two["steady_trials_per_hour"] / one["steady_trials_per_hour"])
    assert "bytecode cached: " in done.stdout
