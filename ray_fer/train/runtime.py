"""Where a run's epochs run: the one seam between the worker loop and Ray.

A :class:`Runtime` gives the worker loop (:mod:`ray_fer.train.worker`) its rank, world
size and device, the checkpoint to resume from, its ``train`` and ``val`` rows, the epoch
its training stream was ordered for, and where to report each epoch. Two kinds of process
provide one, built here alike:

- a Ray Train worker (:func:`ray_train_runtime`): its shard of the datasets the trainer
  split, reports (with the checkpoint folder's name) to Ray Train, which keeps the
  checkpoints in the run folder;
- a one-worker Tune trial that trains in its own process (:func:`trial_runtime`): the
  datasets read whole and in order, reports to Tune, which keeps the checkpoints.

Either way the training stream's block order follows the epoch the run resumes at
(:func:`ray_fer.data.execution.start_at`), so a resumed run reads what an uninterrupted one
would have.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ray_fer.checkpoint import META_FILE, checkpoint_epoch
from ray_fer.config import Config
from ray_fer.data import stream
from ray_fer.data.execution import start_at
from ray_fer.methods.registry import Method
from ray_fer.storage import Location, resolve
from ray_fer.train.plan import Plan

#: Blocks per worker at least when a run has several (see :func:`open_datasets`).
BLOCKS_PER_WORKER = 8
#: Ray Train's record of the checkpoints it registered, in the run folder (Ray 2.60).
TRAIN_SNAPSHOT = "checkpoint_manager_snapshot.json"
#: ``report(metrics, checkpoint folder or None, checkpoint folder name)``.
Report = Callable[[dict, str | None, str], None]


@dataclass(frozen=True)
class Runtime:
    """What the epochs of a run need from the process they run in."""

    rank: int
    world: int
    device: torch.device
    #: The checkpoint to resume from (its folder through ``as_directory()``), or None.
    checkpoint: object | None
    #: ``train`` and ``val`` rows of this worker.
    sources: dict[str, stream.Source]
    #: The epoch the training stream's block order was set for.
    ordered_epoch: int
    report: Report
    #: Gets the rows as the run last read them (device caches where it made them) when
    #: the run ends or is stopped, e.g. to keep them for the next run in this process.
    keep_sources: Callable[[dict[str, stream.Source]], None] | None = None


def open_datasets(cfg: Config, plan: Plan, method: Method) -> dict:
    """The run's ``train`` (seeded block order, the method's resampling, CPU-side
    augmentation if configured) and ``val`` Ray Datasets."""
    fold = cfg.data.fold
    # Workers receive whole blocks: several per worker keep their shares close. One
    # worker reads 2 MiB blocks (smaller ones cost it time per block).
    workers = cfg.resources.workers
    blocks = BLOCKS_PER_WORKER * workers if workers > 1 else 1
    train, _ = stream.open_split(plan.data_uri, splits=cfg.data.train_splits,
                                 exclude_folds=None if fold is None else [fold],
                                 endpoint=cfg.data.endpoint, shuffle_seed=cfg.train.seed,
                                 min_blocks=blocks)
    if method.resample_train is not None:
        train = method.resample_train(Config.from_dict(plan.config), train)
    if fold is None:
        val, _ = stream.open_split(plan.data_uri, splits=[cfg.data.val_split],
                                   endpoint=cfg.data.endpoint, min_blocks=blocks)
    else:
        val, _ = stream.open_split(plan.data_uri, splits=cfg.data.train_splits, folds=[fold],
                                   endpoint=cfg.data.endpoint, min_blocks=blocks)
    return {"train": stream.apply_data_augmentation(train, cfg.augment), "val": val}


# ------------------------------------------------------------------------ Ray Train


def resumed_epoch(run: Location, planned: int) -> int:
    """The epoch a worker group that starts now resumes at: one past the checkpoint Ray
    Train registered last (the one ``ray.train.get_checkpoint()`` hands back, read from
    Ray Train's snapshot), else ``planned``."""
    try:
        with run.fs.open_input_stream(run.join(TRAIN_SNAPSHOT)) as f:
            latest = json.loads(f.read().decode()).get("latest_checkpoint_result") or {}
    except (FileNotFoundError, json.JSONDecodeError):
        return planned
    epoch = checkpoint_epoch(latest.get("checkpoint_dir_name", ""))
    return planned if epoch is None else epoch + 1


def _train_from_resumed_epoch(train, run_uri: str, endpoint: str | None, planned: int):
    """The training dataset ordered for :func:`resumed_epoch`.

    Ray Train calls this factory at every worker-group start: after a worker failure the
    new group resumes at a later epoch than the driver planned, and the stream's block
    order must follow that epoch, not the one of the group that died.
    """
    return start_at(train, resumed_epoch(resolve(run_uri, endpoint), planned))


def trainer_datasets(cfg: Config, plan: Plan, method: Method) -> dict:
    """:func:`open_datasets` as a ``TorchTrainer`` takes them: the training one through a
    factory that orders it for the epoch each worker group resumes at."""
    datasets = open_datasets(cfg, plan, method)
    datasets["train"] = functools.partial(_train_from_resumed_epoch, datasets["train"],
                                          plan.run_uri, cfg.data.endpoint, plan.start_epoch)
    return datasets


def ray_train_runtime(plan: Plan) -> Runtime:
    """The runtime of a Ray Train worker: its rank, device, dataset shards and reports."""
    import ray.train
    import ray.train.torch

    def report(metrics: dict, folder: str | None, name: str) -> None:
        checkpoint = None if folder is None else ray.train.Checkpoint.from_directory(folder)
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)

    ctx = ray.train.get_context()
    checkpoint = ray.train.get_checkpoint()
    # The training dataset's factory read the same record when this group started.
    endpoint = plan.config["data"].get("endpoint")
    ordered = (plan.start_epoch if checkpoint is None
               else resumed_epoch(resolve(plan.run_uri, endpoint), plan.start_epoch))
    return Runtime(rank=ctx.get_world_rank(), world=ctx.get_world_size(),
                   device=ray.train.torch.get_device(), checkpoint=checkpoint,
                   sources={name: ray.train.get_dataset_shard(name) for name in ("train", "val")},
                   ordered_epoch=ordered, report=report)


# ---------------------------------------------------------------- a Tune trial's process


def trial_runtime(cfg: Config, plan: Plan, method: Method, device: torch.device, *,
                  kept: dict[str, stream.Source] | None = None,
                  keep: Callable[[dict[str, stream.Source]], None] | None = None) -> Runtime:
    """The runtime of a one-worker Tune trial that trains in its own process, on
    ``device``: the run's datasets read in order (or the ``kept`` rows an earlier trial left
    on the device), Tune's checkpoint to resume from, reports to Tune; ``keep`` gets the
    rows when the run ends."""
    from ray import tune

    checkpoint = tune.get_checkpoint()
    ordered = plan.start_epoch
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            ordered = json.loads((Path(folder) / META_FILE).read_text())["epoch"] + 1
    sources = kept
    if not sources:
        sources = {name: stream.read_in_order(ds)
                   for name, ds in open_datasets(cfg, plan, method).items()}
        start_at(sources["train"], ordered)

    def report(metrics: dict, folder: str | None, name: str) -> None:
        tune.report(metrics, checkpoint=None if folder is None
                    else tune.Checkpoint.from_directory(folder))

    return Runtime(rank=0, world=1, device=device, checkpoint=checkpoint, sources=sources,
                   ordered_epoch=ordered, report=report, keep_sources=keep)
