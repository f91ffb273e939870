"""Evaluation of a checkpoint (on S3, from a run stored there) reproduces what training
reported, writes its reports, and reports test-time augmentation separately."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.fs as pafs
import pytest
import ray
from support.tiny_shards import write_tiny_shards

from ray_fer import evaluate as ev
from ray_fer.methods.registry import method_config
from ray_fer.storage import resolve
from ray_fer.train import driver

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory, s3_server):
    """A 2-epoch run whose storage is S3 (SeaweedFS): checkpoints, scalars and curves
    go there through Ray Train; evaluation reads the checkpoints back from there."""
    shards = write_tiny_shards(tmp_path_factory.mktemp("tiny") / "shards")
    storage = f"{s3_server.new_bucket('runs')}/runs"
    cfg = method_config("deep_emotion", flags={
        "data.uri": shards, "run.storage": storage, "run.name": "eval",
        "train.epochs": 2, "train.batch_size": 32, "train.eval_batch_size": 64})
    # After s3_server: Ray's workers inherit its endpoint and credentials variables.
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        yield driver.train(cfg)
    finally:
        ray.shutdown()


def test_evaluate_reproduces_the_reported_validation_metrics(trained):
    metrics, confusion = ev.evaluate(trained.latest_checkpoint, batch_size=17)
    for key in ("val_loss", "val_accuracy", "val_macro_f1"):
        assert metrics[key] == pytest.approx(trained.metrics[key], rel=1e-6, abs=1e-9)
    assert metrics["rows"] == trained.metrics["rows_val"] == confusion.sum()
    supports = [c["support"] for c in metrics["per_class"].values()]
    assert supports == confusion.sum(axis=1).tolist()


def test_cli_writes_metrics_confusion_and_tta(trained, tmp_path):
    out = tmp_path / "report"
    code = ev.main([trained.best_checkpoint, "--split", "train", "--tta", "flip",
                    "--out", str(out)])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split"] == "train" and metrics["rows"] == 256
    assert 0 <= metrics["train_accuracy"] <= 1 and "val_accuracy" not in metrics
    assert metrics["tta"]["mode"] == "flip" and 0 <= metrics["tta"]["accuracy"] <= 1
    record = json.loads((out / "confusion.json").read_text())
    assert sum(map(sum, record["matrix"])) == 256
    assert record["classes"] == metrics["class_names"]
    assert (out / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert metrics["method"] == "deep_emotion"


def test_the_confusion_title_names_model_checkpoint_split_and_accuracy():
    metrics = {"method": "deep_emotion", "checkpoint": "s3://b/runs/de-l2/checkpoint_epoch-0009/",
               "epoch": 9, "split": "test", "fold": None}
    confusion = np.array([[3, 1], [0, 4]])
    assert ev.confusion_title(metrics, confusion) == (
        "deep_emotion · de-l2/checkpoint_epoch-0009 (epoch 9)\n"
        "split test · accuracy 87.5% · 8 faces")
    fold = ev.confusion_title({**metrics, "fold": 3}, confusion)
    assert fold.splitlines()[1].startswith("fold 3 of the training splits · accuracy 87.5%")


def test_tencrop_changes_the_views_not_the_row_count(trained):
    plain, _ = ev.evaluate(trained.latest_checkpoint)
    crops, confusion = ev.evaluate(trained.latest_checkpoint, tta="tencrop")
    assert crops["val_accuracy"] == plain["val_accuracy"]
    assert 0 <= crops["tta"]["accuracy"] <= 1 and confusion.sum() == 64


def test_run_on_s3_holds_curves_scalars_and_checkpoints(trained):
    run = resolve(trained.run_uri)
    assert run.is_s3 and trained.latest_checkpoint.startswith(trained.run_uri + "/")
    names = {i.base_name for i in run.fs.get_file_info(pafs.FileSelector(run.path))}
    assert {"config.yaml", "history.json", "curves.png", "tensorboard"} <= names
    events = run.fs.get_file_info(pafs.FileSelector(run.join("tensorboard")))
    assert any(e.base_name.startswith("events.out.tfevents") and e.size > 0 for e in events)


def test_unknown_checkpoint_folder_is_refused(tmp_path):
    with pytest.raises(RuntimeError, match="not a ray_fer checkpoint"):
        ev.evaluate(str(tmp_path))
