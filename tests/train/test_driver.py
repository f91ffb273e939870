"""Runs through the driver and the worker loop on a real local Ray: a run learns, it is
deterministic, resume is exact, two CPU workers (gloo) see disjoint rows, and it writes
checkpoints, curves and TensorBoard (epochs numbered from 0 everywhere)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import ray
import torch
from support.tiny_shards import write_tiny_shards

from ray_fer.config import ConfigError
from ray_fer.data.info import DataInfo
from ray_fer.methods import classify
from ray_fer.methods.registry import get_method, method_config
from ray_fer.train import driver, epoch, worker
from ray_fer.train.plan import Plan, plan_run

pytestmark = pytest.mark.slow

#: Metrics that measure time, not learning: excluded from equality checks.
TIMING = ("time_train_s", "time_epoch_s", "time_startup_s")
#: The share of its own schedule a run has done: differs between runs of other lengths.
SCHEDULE = (worker.SCHEDULE_PCT,)


@pytest.fixture(scope="module")
def local_ray():
    # Logical CPUs: two train workers plus Ray Data's read tasks on a 2-core machine.
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    return write_tiny_shards(tmp_path_factory.mktemp("tiny") / "shards")


@pytest.fixture(scope="module")
def storage(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")


def config(shards: str, storage: Path, name: str, epochs: int, **flags):
    # A step schedule does not depend on the total epoch count, so a 2-epoch run
    # resumed to 4 follows the same learning rates as a 4-epoch run.
    return method_config("deep_emotion", flags={
        "data.uri": shards, "run.storage": str(storage), "run.name": name,
        "train.epochs": epochs, "train.batch_size": 32, "train.eval_batch_size": 64,
        "optim.schedule": "step", "optim.step_epochs": 3, "optim.lr": 3e-3,
        "data.shuffle_buffer": 64, **flags})


def learning(metrics: dict, skip: tuple[str, ...] = TIMING) -> dict:
    return {k: v for k, v in metrics.items() if k not in skip}


@pytest.fixture(scope="module")
def full_run(local_ray, shards, storage):
    return driver.train(config(shards, storage, "full", epochs=4))


@pytest.fixture(scope="module")
def resumed_run(local_ray, shards, storage):
    first = driver.train(config(shards, storage, "split", epochs=2))
    second = driver.train(config(shards, storage, "split", epochs=4, **{"run.resume": True}))
    return first, second


def test_short_run_on_the_embedded_synthetic_faces_learns(local_ray, tmp_path):
    # No --data: the embedded synthetic set (7 classes, 2,940 training faces). A constant
    # lr and no augmentation let 3 short epochs on 2 CPUs get well past chance.
    cfg = method_config("deep_emotion", flags={
        "run.storage": str(tmp_path), "run.name": "synthetic", "train.epochs": 3,
        "train.batch_size": 32, "optim.schedule": "none", "augment.enabled": False})
    outcome = driver.train(cfg)
    chance = 1 / 7
    assert outcome.metrics["rows_val"] == 630
    assert outcome.metrics["val_accuracy"] >= 2 * chance
    assert outcome.history[-1]["train_loss"] < outcome.history[0]["train_loss"]


def test_a_classifier_trains_with_mixup_and_cutmix(local_ray, shards, tmp_path):
    """Both mixers on, a third of the batches left unmixed: every step gets mix targets."""
    outcome = driver.train(config(shards, tmp_path, "mixed", epochs=1, **{
        "augment.mixup_alpha": 0.2, "augment.cutmix_alpha": 1.0, "augment.mix_prob": 0.67}))
    assert [m["epoch"] for m in outcome.history] == [0]
    assert np.isfinite(outcome.metrics["train_loss"]) and outcome.metrics["rows_val"] > 0


def test_same_seed_gives_identical_metrics(full_run, resumed_run):
    first, _ = resumed_run
    # The 2-epoch run has done twice the share of its schedule the 4-epoch one has.
    assert ([learning(m, TIMING + SCHEDULE) for m in first.history]
            == [learning(m, TIMING + SCHEDULE) for m in full_run.history[:2]])


def test_resume_continues_to_the_uninterrupted_result(full_run, resumed_run):
    _, second = resumed_run
    assert [m["epoch"] for m in second.history] == [0, 1, 2, 3]
    assert learning(second.metrics) == learning(full_run.metrics)


def test_run_folder_holds_checkpoints_curves_and_scalars(full_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = Path(full_run.run_uri)
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((run / "history.json").read_text()) == full_run.history
    best = json.loads((Path(full_run.best_checkpoint) / "meta.json").read_text())
    assert best["epoch"] == full_run.metrics["best_epoch"]
    assert best["metrics"]["val_accuracy"] == full_run.metrics["best_val_accuracy"]
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    accuracy = events.Scalars("accuracy/val")
    assert [e.step for e in accuracy] == [0, 1, 2, 3]  # epochs, from 0 as checkpoints
    assert accuracy[-1].value == pytest.approx(full_run.metrics["val_accuracy"])
    # The confusion matrix is drawn at every new best epoch, the last at the best one.
    figures = events.Images("best/confusion")
    improved = [i for i, v in enumerate(accuracy)
                if all(v.value >= w.value for w in accuracy[:i])]
    assert [e.step for e in figures] == improved
    assert figures[-1].step == full_run.metrics["best_epoch"]
    assert figures[-1].encoded_image_string[:4] == b"\x89PNG"
    # So are Grad-CAM / Guided Grad-CAM maps of a few validation faces.
    assert [e.step for e in events.Images("best/explain")] == [e.step for e in figures]
    # The fixed cost of the run (planning → first step) is reported with the first epoch.
    startup = [m.get("time_startup_s") for m in full_run.history]
    assert startup[0] > 0 and startup[1:] == [None] * 3


def test_existing_run_is_refused_without_resume(full_run, shards, storage):
    with pytest.raises(ValueError, match="already exists"):
        plan_run(config(shards, storage, "full", epochs=4))


ROWS_DIR = "rows_seen"


def _recording_train(state, batch):
    rank = ray.train.get_context().get_world_rank()
    out = Path(state.cfg.run.storage) / ROWS_DIR / f"rank{rank}-epoch{state.epoch}-"
    with open(str(out) + "rows.txt", "a") as f:
        f.write("\n".join(str(r) for r in batch["row"].tolist()) + "\n")
    return classify.train_batch(state, batch)


def _recording_worker(loop_config: dict) -> None:
    method = dataclasses.replace(get_method("deep_emotion"), train_batch=_recording_train)
    worker.run_worker(Plan(**loop_config), method)


def test_two_cpu_workers_train_on_disjoint_rows_of_the_other_folds(local_ray, shards,
                                                                   tmp_path):
    """Epoch 0 streams from Ray Data and fills each worker's device cache (data.cache=on);
    epoch 1 reshuffles each worker's own cached rows."""
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(__import__(__name__))
    (tmp_path / ROWS_DIR).mkdir()
    cfg = config(shards, tmp_path, "ddp", epochs=2, **{"resources.workers": 2,
                                                        "data.fold": 1, "data.cache": "on"})
    method, plan = plan_run(cfg)
    result = driver.build_trainer(cfg, method, plan, worker_fn=_recording_worker).fit()
    assert result.error is None
    seen, cached = [[np.loadtxt(tmp_path / ROWS_DIR / f"rank{r}-epoch{e}-rows.txt",
                                dtype=np.int64) for r in (0, 1)] for e in (0, 1)]
    assert [len(c) for c in cached] == [len(s) for s in seen]
    assert not set(cached[0]) & set(seen[1]) and not set(cached[1]) & set(seen[0])
    assert len(set(cached[0])) == len(cached[0]) and list(cached[0]) != list(seen[0])
    assert len(seen[0]) == len(seen[1]) == result.metrics["steps"] * 32
    assert not set(seen[0]) & set(seen[1])
    assert len(set(seen[0]) | set(seen[1])) == len(seen[0]) + len(seen[1])
    assert result.metrics["rows_train"] == len(seen[0]) + len(seen[1])
    # Tiny shards hold 64 rows each, train rows first, fold = row index % 4: none of
    # validation fold 1 was trained on.
    assert all((row & 0xFFFFFFFF) % 4 != 1 for row in np.concatenate(seen))
    # Validation covered every row of fold 1 exactly once across the two workers.
    assert result.metrics["rows_val"] == 64


def test_two_workers_both_train_on_a_split_smaller_than_one_block(local_ray, tmp_path):
    """64 training faces fill a fraction of one 2 MiB block; workers receive whole blocks,
    so the split is cut finer (``BLOCKS_PER_WORKER``) and each worker trains on half."""
    small = write_tiny_shards(tmp_path / "small", train=64, val=64)
    cfg = config(small, tmp_path, "small", epochs=1,
                 **{"resources.workers": 2, "train.batch_size": 16})
    metrics = driver.train(cfg).metrics
    assert metrics["steps"] == 2 and metrics["rows_train"] == 64


def test_an_epoch_without_a_training_step_stops_the_run_with_what_to_change(shards, tmp_path):
    cfg = config(shards, tmp_path, "no-steps", epochs=1, **{"resources.workers": 2})
    method, plan = plan_run(cfg)
    info = DataInfo(class_names=plan.class_names, image_size=plan.image_size,
                    channels=plan.channels)
    state = epoch.build_state(method, cfg, info, torch.device("cpu"), plan.steps_per_epoch)
    with pytest.raises(ConfigError, match="an epoch ran no training step.*resources.workers"):
        epoch.train_epoch(method, state, None, iter(()), None)


def test_fold_protocol_trains_on_the_other_folds(shards, tmp_path):
    _, plan = plan_run(config(shards, tmp_path, "fold1", epochs=1, **{"data.fold": 1}))
    assert plan.train_rows == 256 - 64
    with pytest.raises(ValueError, match=r"data\.fold.*fold 9"):
        plan_run(config(shards, tmp_path, "fold9", epochs=1, **{"data.fold": 9}))
