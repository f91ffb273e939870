"""The face-generating autoencoder's stages on the one training loop: stage 1 then a
re-rendering stage 2 through ``python -m ray_fer.train``, the Fig. 2 grid in the run
folder, the under-/over-sampled training stream, and config errors before Ray starts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import ray
import torch

from ray_fer.checkpoint import load_checkpoint
from ray_fer.config import ConfigError
from ray_fer.data.shards import read_manifest
from ray_fer.data.stream import open_split
from ray_fer.ingest import ingest
from ray_fer.methods.face_ae.rows import repeat_rows, selected_rows
from ray_fer.methods.face_ae.stages import regress_options, regress_rows
from ray_fer.methods.face_ae.steps import resample_counts
from ray_fer.methods.registry import get_method, method_config
from ray_fer.storage import resolve
from ray_fer.train.__main__ import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    """10 synthetic people x 10 faces at 32 px RGB, split by person into train/val/test."""
    folder = tmp_path_factory.mktemp("synthetic")
    out = folder / "shards"
    ingest("synthetic", folder, str(out), size=32, channels=3, folds=2, progress=False,
           reader_options={"subjects": 10, "images_per_subject": 10, "size": 32})
    return str(out)


def run(capsys, *argv: str) -> dict:
    """``python -m ray_fer.train`` in this process; its printed outcome."""
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow
def test_stage_one_then_rerendered_stage_two_run_through_the_train_entry(
        local_ray, shards, tmp_path, capsys):
    common = ["--data", shards, "--storage", str(tmp_path), "--epochs", "1",
              "--batch-size", "16"]
    full_batches = read_manifest(resolve(shards)).counts["train"]
    full_batches = sum(full_batches.values()) // 16 * 16
    ae = run(capsys, "face_ae", *common, "--name", "ae", "--set", "model.options.width=8")
    metrics = ae["metrics"]
    assert metrics["rows_train"] == full_batches  # every synthetic face has a partner
    for key in ("val_pair_mse", "val_reconstruction_mse", "val_mean_ccc", "train_pair_mse"):
        assert np.isfinite(metrics[key]), key
    assert metrics["best_val_pair_mse"] == metrics["val_pair_mse"]
    grid = Path(ae["run"], "va_grid.png").read_bytes()
    assert grid.startswith(PNG_SIGNATURE)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(Path(ae["run"], "tensorboard"))).Reload()
    assert "va_grid" in events.Tags()["images"]

    regressor = run(capsys, "face_ae_regressor", *common, "--name", "regress",
                    "--set", "options.balance=rerender",
                    "--set", f"options.ae_checkpoint={ae['best_checkpoint']}")
    assert np.isfinite(regressor["metrics"]["val_mean_ccc"])
    assert regressor["metrics"]["rows_train"] == full_batches  # every face is re-rendered
    # The frozen autoencoder travels in stage 2's checkpoints unchanged.
    trained = load_checkpoint(ae["best_checkpoint"]).state["modules"]["model"]
    carried = load_checkpoint(regressor["latest_checkpoint"]).state["modules"]["ae"]
    assert all(torch.equal(trained[k], carried[k]) for k in trained)


def regress_cfg(shards: str, **options):
    return method_config("face_ae_regressor", flags={"data.uri": shards},
                         sets=[f"options.{k}={v}" for k, v in options.items()])


@pytest.mark.slow
@pytest.mark.parametrize(("balance", "threshold"), [("under", 2), ("over", 6)])
def test_resampled_stream_holds_each_row_as_often_as_the_sampler_says(
        local_ray, shards, balance, threshold):
    cfg = regress_cfg(shards, balance=balance, threshold=threshold, grid_cells=4)
    train, _ = open_split(shards, splits=["train"], columns=["row", "valence", "arousal"])
    streamed = np.concatenate([b["row"] for b in regress_rows(cfg, train).iter_batches(
        batch_format="numpy")])
    table, ids = selected_rows(cfg, ["valence", "arousal"], "train")
    counts = resample_counts(table["valence"].to_numpy(), table["arousal"].to_numpy(),
                             balance, threshold, 4, cfg.train.seed)
    got = dict(zip(*np.unique(streamed, return_counts=True), strict=True))
    assert {int(k): int(v) for k, v in got.items()} == {
        int(i): int(c) for i, c in zip(ids, counts, strict=True) if c}
    assert (len(streamed) < len(ids)) if balance == "under" else (len(streamed) > len(ids))


def test_repeat_rows_matches_rows_by_id():
    batch = pa.table({"row": [5, 3, 9], "x": ["a", "b", "c"]})
    out = repeat_rows(batch, np.array([3, 5, 7]), np.array([2, 1, 4]))
    assert out["x"].to_pylist() == ["a", "b", "b"]  # row 9 is not in the sample


def test_stage_options_are_checked_before_ray_starts(shards, tmp_path):
    regress, ae = get_method("face_ae_regressor"), get_method("face_ae")
    with pytest.raises(ConfigError, match="ae_checkpoint"):
        regress.check_config(regress_cfg(shards, balance="rerender"))
    with pytest.raises(ConfigError, match="balance"):
        regress.check_config(regress_cfg(shards, balance="smote"))
    with pytest.raises(ConfigError, match="not a checkpoint folder"):
        regress.check_config(regress_cfg(shards, balance="rerender", ae_checkpoint=tmp_path))
    assert regress_options(regress_cfg(shards, balance="over", threshold=100)).threshold == 100
    with pytest.raises(ConfigError, match="one worker"):
        ae.check_config(method_config("face_ae", flags={"resources.workers": 2}))
    with pytest.raises(ConfigError, match="options.lambda_x"):
        ae.check_config(method_config("face_ae", sets=["options.lambda_x=1"]))
