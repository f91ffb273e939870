"""The worker loop on a runtime of its own, without Ray: rows come from device caches (as a
trial's kept rows do) and reports go to a list. The loop trains and reports every epoch
with its checkpoint, numbers epochs from 0 in TensorBoard as in the checkpoints, and
explains the validation faces at each new best epoch with their true classes."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from support.tiny_shards import write_tiny_shards

from ray_fer.checkpoint import checkpoint_name, load_checkpoint
from ray_fer.data.augment import normalise
from ray_fer.data.device_cache import DeviceCache
from ray_fer.data.shards import ROW_ID_STRIDE, decode_images, read_manifest
from ray_fer.explain.run import Subject, explain_to_tensorboard
from ray_fer.methods.registry import get_model, method_config
from ray_fer.storage import resolve
from ray_fer.train.plan import plan_run
from ray_fer.train.runtime import Runtime
from ray_fer.train.worker import run_worker

EPOCHS = 3


def _cache(uri: str, split: str) -> DeviceCache:
    """The ``split`` rows of the shards at ``uri``, as a worker's device cache holds them."""
    loc = resolve(uri)
    manifest = read_manifest(loc)
    tables, ids = [], []
    for index, shard in enumerate(manifest.shards):
        table = pq.read_table(Path(loc.path, shard.file), columns=["image", "label", "split"])
        keep = np.flatnonzero(table["split"].to_numpy(zero_copy_only=False) == split)
        tables.append(table.take(keep))
        ids.append(index * ROW_ID_STRIDE + keep)
    table = pa.concat_tables(tables)
    return DeviceCache({
        "image": torch.from_numpy(decode_images(table["image"], manifest.image_shape)),
        "label": torch.tensor(table["label"].to_numpy()).long(),
        "row": torch.from_numpy(np.concatenate(ids))})


def _grid(subject: Subject, images: torch.Tensor, labels, class_names, folder: Path
          ) -> np.ndarray:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(folder))
    explain_to_tensorboard(writer, subject, images, 0, class_names=class_names, tag="grid",
                           labels=labels)
    writer.close()
    return _image(EventAccumulator(str(folder), size_guidance={"images": 0}), "grid", -1)


def _image(events, tag: str, index: int) -> np.ndarray:
    events.Reload()
    return cv2.imdecode(np.frombuffer(events.Images(tag)[index].encoded_image_string,
                                      np.uint8), cv2.IMREAD_COLOR)


def test_the_worker_loop_runs_on_any_runtime_and_logs_what_it_checkpoints(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    shards = write_tiny_shards(tmp_path / "shards")
    cfg = method_config("deep_emotion", flags={
        "data.uri": shards, "run.storage": str(tmp_path / "runs"), "run.name": "cached",
        "train.epochs": EPOCHS, "train.batch_size": 32, "optim.schedule": "none",
        "optim.lr": 3e-3, "train.explain_images": 4})
    method, plan = plan_run(cfg)
    reports = []

    def report(metrics: dict, folder: str | None, name: str) -> None:
        shutil.copytree(folder, tmp_path / "kept" / name)
        reports.append((name, metrics))

    val = _cache(shards, "val")
    runtime = Runtime(rank=0, world=1, device=torch.device("cpu"), checkpoint=None,
                      sources={"train": _cache(shards, "train"), "val": val},
                      ordered_epoch=0, report=report)
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        run_worker(plan, method, runtime)
    finally:  # the worker sets it for its process, which here is pytest's
        torch.use_deterministic_algorithms(deterministic)

    assert [name for name, _ in reports] == [checkpoint_name(e) for e in range(EPOCHS)]
    history = [m for _, m in reports]
    assert [m["epoch"] for m in history] == list(range(EPOCHS))
    assert all(m["rows_cached"] == 1 and m["rows_val"] == 64 for m in history)
    events = EventAccumulator(str(Path(plan.run_uri, "tensorboard")),
                              size_guidance={"images": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("accuracy/val")] == list(range(EPOCHS))
    best = history[-1]["best_epoch"]
    explained = events.Images("best/explain")
    assert explained[-1].step == best
    # The last grid is the best checkpoint's explanation of the first validation faces,
    # with their true classes written above them.
    loaded = load_checkpoint(tmp_path / "kept" / checkpoint_name(best))
    network = method.build_modules(loaded.cfg, loaded.info)["model"]
    loaded.restore({"model": network})
    subject = Subject(network.eval(), "classify", loaded.info.class_names,
                      get_model("deep_emotion").gradcam_layer(network))
    images = normalise(val.columns["image"][:4])
    labels = val.columns["label"][:4].tolist()
    logged = _image(events, "best/explain", -1)
    with_truth = _grid(subject, images, labels, loaded.info.class_names, tmp_path / "truth")
    without = _grid(subject, images, None, loaded.info.class_names, tmp_path / "plain")
    assert np.array_equal(logged, with_truth)
    assert not np.array_equal(logged, without)
