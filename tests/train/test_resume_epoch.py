"""Where a run resumes: the newest complete checkpoint folder (driver side, before Ray
starts) and the checkpoint Ray Train registered last (each worker-group start)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ray_fer.checkpoint import CHECKPOINT_FILES, checkpoint_name
from ray_fer.storage import resolve
from ray_fer.train.plan import latest_checkpoint_epoch
from ray_fer.train.runtime import TRAIN_SNAPSHOT, resumed_epoch


def _checkpoint(run: Path, epoch: int, files=CHECKPOINT_FILES) -> None:
    folder = run / checkpoint_name(epoch)
    folder.mkdir(parents=True)
    for name in files:
        (folder / name).write_text("x")


def test_the_newest_folder_holding_every_checkpoint_file_counts(tmp_path):
    assert latest_checkpoint_epoch(resolve(tmp_path / "absent")) is None
    _checkpoint(tmp_path, 0)
    _checkpoint(tmp_path, 1)
    # Epoch 2's upload was cut short: its meta.json arrived but not its state.
    _checkpoint(tmp_path, 2, files=[f for f in CHECKPOINT_FILES if f != "state.pt"])
    assert latest_checkpoint_epoch(resolve(tmp_path)) == 1


def _snapshot(run: Path, latest: dict | None) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / TRAIN_SNAPSHOT).write_text(json.dumps(
        {"ray_version": "2.60.0", "checkpoint_results": [], "latest_checkpoint_result": latest}))


@pytest.mark.parametrize(("latest", "planned", "expected"), [
    ({"checkpoint_dir_name": checkpoint_name(3), "metrics": {}}, 0, 4),
    (None, 2, 2),
    ({"checkpoint_dir_name": "checkpoint_2026-11-23", "metrics": {}}, 1, 1),
], ids=["registered", "none-yet", "not-ours"])
def test_a_restarted_worker_group_resumes_after_the_last_registered_checkpoint(
        tmp_path, latest, planned, expected):
    _snapshot(tmp_path, latest)
    assert resumed_epoch(resolve(tmp_path), planned) == expected


def test_without_a_train_snapshot_the_planned_epoch_stands(tmp_path):
    assert resumed_epoch(resolve(tmp_path), 5) == 5
    (tmp_path / TRAIN_SNAPSHOT).write_text("{not json")
    assert resumed_epoch(resolve(tmp_path), 5) == 5
