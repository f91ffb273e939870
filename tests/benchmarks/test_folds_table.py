"""``benchmarks/folds_table.py`` reports each metric at the selected and at the last epoch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "folds_table.py"


def _run(folder: Path, method: str, history: list[dict]) -> str:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"method": method}))
    (folder / "history.json").write_text(json.dumps(history))
    return str(folder)


def _table(*args: str) -> list[list[str]]:
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("| ")][1:]
    return [[c.strip() for c in line.split("|")[1:-1]] for line in lines]


def test_fold_runs_give_mean_and_std_at_the_best_and_the_last_epoch(tmp_path):
    # Fold 0 peaks at epoch 1, fold 1 at epoch 0; the last epochs are lower.
    _run(tmp_path / "caf-fold0", "caf", [{"val_mean_ccc": 0.2, "val_mean_rmse": 0.5},
                                         {"val_mean_ccc": 0.6, "val_mean_rmse": 0.3},
                                         {"val_mean_ccc": 0.4, "val_mean_rmse": 0.4}])
    _run(tmp_path / "caf-fold1", "caf", [{"val_mean_ccc": 0.8, "val_mean_rmse": 0.2},
                                         {"val_mean_ccc": 0.1, "val_mean_rmse": 0.6}])
    rows = _table(f"caf={tmp_path}/caf-fold*", "--metrics", "val_mean_ccc,val_mean_rmse")
    assert [r[:3] for r in rows] == [["caf", "best", "2"], ["caf", "last", "2"]]
    best, last = rows
    assert best[3] == f"{np.mean([0.6, 0.8]):.4f} ± {np.std([0.6, 0.8]):.4f}"
    assert best[4] == f"{np.mean([0.3, 0.2]):.4f} ± {np.std([0.3, 0.2]):.4f}"
    assert last[3] == f"{np.mean([0.4, 0.1]):.4f} ± {np.std([0.4, 0.1]):.4f}"


def test_a_fold_all_summary_names_its_runs(tmp_path):
    runs = [_run(tmp_path / f"de-fold{f}", "deep_emotion", [{"val_accuracy": a}])
            for f, a in enumerate((0.5, 0.7))]
    summary = {"method": "deep_emotion", "metric": "val_accuracy", "mode": "max", "k": 2,
               "folds": [{"fold": f, "run": run} for f, run in enumerate(runs)]}
    (tmp_path / "de-folds.json").write_text(json.dumps(summary))
    rows = _table(str(tmp_path / "de-folds.json"), "--metrics", "val_accuracy")
    assert rows[0] == ["de", "best", "2", "0.6000 ± 0.1000"]
