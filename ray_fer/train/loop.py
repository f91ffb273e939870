"""The one Ray Train loop every method runs: epochs, metrics, checkpoints, resume, logs.

Driver side (:func:`train`): validate the config and the data before Ray starts, open the
train/validation splits as Ray Datasets, build a ``TorchTrainer`` whose run lives at
``<run.storage>/<run.name>`` (local folder or s3://), fit, then write ``history.json`` and
``curves.png`` next to the checkpoints.

Worker side (:func:`run_worker`: in a Ray Train worker through :func:`train_loop_per_worker`,
or in a one-worker Tune trial's own process; a :class:`Session` holds what differs), per
epoch: reseed from (seed, epoch, rank); train on this worker's disjoint part of the training
rows; evaluate every validation row once across workers; all-reduce the method's sums;
report the metrics (with ``lr``, ``best_epoch``) and a checkpoint to Ray Train (or Tune);
log TensorBoard scalars from rank 0.

Uneven shards: :func:`ray_fer.data.stream.data_config` hands workers whole blocks, so their
batch counts may differ by a block's worth. Before each training step the workers agree,
over a small gloo group on the CPU (no GPU sync), whether *every* worker still has a batch;
the epoch ends for all at the first worker that runs out. DDP's collectives therefore always
match; the rows a worker had left are not trained on in that epoch (at most about one
block per worker; the seeded block order changes which). ``Join`` was the alternative, but
it shadows only DDP's own collectives and would not cover a method's extra ones (CAF's
critic and encoder steps), nor the BatchNorm buffer broadcasts of several modules.
Evaluation runs on the plain (non-DDP) modules with no collective per batch, so every
validation row is seen once and the sums are all-reduced at the end.

Resume: Ray Train hands the latest checkpoint of a run back through
``ray.train.get_checkpoint()`` when a run with the same storage and name starts again
(``--resume``) or when the worker group restarts after a failure (``run.max_failures``);
the loop loads modules, optimizers, schedulers and progress and continues at the next
epoch. Augmentation and local shuffling are seeded by (seed, epoch, rank) and the
stream's block order by Ray Data's execution index, which is set to the epoch the
workers resume at each time Ray Train starts a worker group (also after a failure), so a
resumed or restarted run on one CPU worker reproduces an uninterrupted one.
"""

from __future__ import annotations

import functools
import io
import itertools
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow.fs as pafs
import torch
import torch.distributed as dist
from torch import nn

from ray_fer.checkpoint import (
    CHECKPOINT_FILES,
    CHECKPOINT_PREFIX,
    META_FILE,
    Progress,
    copy_folder,
    load_checkpoint,
    save_checkpoint,
)
from ray_fer.config import Config, ConfigError, override
from ray_fer.data import stream
from ray_fer.data.augment import epoch_seed
from ray_fer.data.device_cache import CacheRecorder, DeviceCache, cache_budget
from ray_fer.data.execution import start_at
from ray_fer.data.info import DataInfo
from ray_fer.data.shards import read_manifest
from ray_fer.explain.run import Subject
from ray_fer.methods.base import Sums, TrainState
from ray_fer.methods.registry import Method, get_method, get_model, input_shape
from ray_fer.models.layers.inputs import fit_images
from ray_fer.storage import Location, check_reachable, resolve, set_endpoint
from ray_fer.train.init_from import check_init, init_modules

log = logging.getLogger(__name__)

#: Blocks per worker at least when a run has several (see :func:`open_datasets`).
BLOCKS_PER_WORKER = 8

#: The per-epoch metric: percent of the run's schedule done after the epoch.
SCHEDULE_PCT = "schedule_pct"
TENSORBOARD_DIR = "tensorboard"
SYNTHETIC_MAX_SIZE = 64


@dataclass(frozen=True)
class Plan:
    """What the driver resolved for the workers (plain values: it travels to them)."""

    config: dict
    data_uri: str
    run_uri: str
    class_names: list[str]
    image_size: int
    channels: int
    train_rows: int
    steps_per_epoch: int
    start_epoch: int
    #: Wall-clock time (``time.time()``) the driver planned the run: the start of the
    #: fixed overhead reported as ``time_startup_s`` (planning → first training step).
    created_at: float = 0.0
    #: "derived V/A" when the data's V/A targets are derived from ratings, else "".
    targets: str = ""


@dataclass(frozen=True)
class RunOutcome:
    """What a finished run left: its folder, last metrics, best and latest checkpoints."""

    run_uri: str
    metrics: dict
    history: list[dict]
    best_checkpoint: str | None
    latest_checkpoint: str | None
    targets: str = ""


# --------------------------------------------------------------------------- driver


def resolve_data_uri(cfg: Config) -> str:
    """The configured shard prefix, or the embedded synthetic set in the run's channels.

    The synthetic faces are drawn at most 64 px (larger inputs are upsampled on the worker),
    so a quick start with a 224 px model does not first draw thousands of large faces. On a
    cluster (``RAY_ADDRESS`` set) with S3 run storage, the set is written under the storage
    rather than into this node's cache, where other nodes' workers could not read it.
    """
    if cfg.data.uri:
        return cfg.data.uri
    from ray_fer.data.synthetic import ensure_default_shards, shared_default_shards

    size, channels = input_shape(cfg)
    size = min(size, SYNTHETIC_MAX_SIZE)
    if os.environ.get("RAY_ADDRESS") and resolve(cfg.run.storage, cfg.data.endpoint).is_s3:
        return shared_default_shards(cfg.run.storage, size=size, channels=channels,
                                     endpoint=cfg.data.endpoint)
    return ensure_default_shards(size=size, channels=channels)


def run_location(cfg: Config) -> Location:
    """Where the run's folder lives (``<storage>/<name>``)."""
    return resolve(cfg.run.storage.rstrip("/") + "/" + cfg.run.name, cfg.data.endpoint)


def with_run_name(cfg: Config) -> Config:
    """``cfg`` with a run name: the configured one, else ``<method>-<UTC time>``."""
    if cfg.run.name:
        return cfg
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return override(cfg, "run.name", f"{cfg.method}-{stamp}")


def latest_checkpoint_epoch(run: Location) -> int | None:
    """Epoch of the newest complete checkpoint folder of ``run`` (None when there is none).

    Complete: it holds every file a checkpoint has; an upload cut short (the files of a
    folder are copied in no set order) leaves one that does not count.
    """
    selector = pafs.FileSelector(run.path, allow_not_found=True)
    epochs = []
    for item in run.fs.get_file_info(selector):
        if item.type == pafs.FileType.Directory and item.base_name.startswith(CHECKPOINT_PREFIX):
            files = run.fs.get_file_info([run.join(item.base_name, name)
                                          for name in CHECKPOINT_FILES])
            if all(f.type == pafs.FileType.File for f in files):
                epochs.append(int(item.base_name[len(CHECKPOINT_PREFIX):]))
    return max(epochs) if epochs else None


#: Ray Train's record of the checkpoints it registered, in the run folder (Ray 2.60).
TRAIN_SNAPSHOT = "checkpoint_manager_snapshot.json"


def resumed_epoch(run: Location, planned: int) -> int:
    """The epoch a worker group that starts now resumes at: one past the checkpoint Ray
    Train registered last (the one ``ray.train.get_checkpoint()`` hands back, read from
    Ray Train's snapshot), else ``planned``."""
    try:
        with run.fs.open_input_stream(run.join(TRAIN_SNAPSHOT)) as f:
            latest = json.loads(f.read().decode()).get("latest_checkpoint_result") or {}
    except (FileNotFoundError, json.JSONDecodeError):
        return planned
    name = latest.get("checkpoint_dir_name", "")
    if not name.startswith(CHECKPOINT_PREFIX):
        return planned
    return int(name[len(CHECKPOINT_PREFIX):]) + 1


def _train_from_resumed_epoch(train, run_uri: str, endpoint: str | None, planned: int):
    """The training dataset with Ray Data's execution index at :func:`resumed_epoch`.

    Ray Train calls this factory at every worker-group start: after a worker failure the
    new group resumes at a later epoch than the driver planned, and the stream's block
    order must follow that epoch, not the index of the group that died.
    """
    return start_at(train, resumed_epoch(resolve(run_uri, endpoint), planned))


def plan_run(cfg: Config) -> tuple[Method, Plan]:
    """Check everything that can be checked before Ray starts; errors name what to fix."""
    method = get_method(cfg.method)
    method.check_config(cfg)
    set_endpoint(cfg.data.endpoint)
    data_uri = resolve_data_uri(cfg)
    data = resolve(data_uri, cfg.data.endpoint)
    check_reachable(data)
    manifest = read_manifest(data)
    for split in [*cfg.data.train_splits, *([] if cfg.data.fold is not None
                                           else [cfg.data.val_split])]:
        if split not in manifest.counts:
            raise ConfigError(f"config key 'data': split {split!r} has no rows in {data.uri} "
                              f"(it has {sorted(manifest.counts)})")
    run = run_location(cfg)
    check_reachable(run)
    exists = run.fs.get_file_info(run.join("config.yaml")).type == pafs.FileType.File
    if exists and not cfg.run.resume:
        raise ConfigError(f"run {run.uri} already exists; pass --resume to continue it or "
                          "choose another --name")
    if cfg.run.resume and not exists:
        raise ConfigError(f"--resume: no run named {cfg.run.name!r} under {cfg.run.storage}")
    done = latest_checkpoint_epoch(run) if exists else None
    size, channels = input_shape(cfg)
    if cfg.model.init:  # a checkpoint that does not fit fails now, not on every worker
        check_init(method, cfg, DataInfo(list(manifest.class_names), size, channels))
    rows = manifest.rows_in(cfg.data.train_splits)
    if cfg.data.fold is not None:
        rows -= _fold_rows(manifest, cfg.data.fold, data.uri)
    per_step = cfg.train.batch_size * cfg.resources.workers
    if rows < per_step:
        raise ConfigError(f"config key 'train.batch_size': {rows} training rows cannot fill "
                          f"one batch of {cfg.train.batch_size} per worker "
                          f"({cfg.resources.workers} workers); lower it")
    # Workers see the resolved data URI (the embedded default has none configured).
    plan = Plan(config=override(cfg, "data.uri", data.uri).to_dict(), data_uri=data.uri,
                run_uri=run.uri,
                class_names=list(manifest.class_names), image_size=size, channels=channels,
                train_rows=rows, steps_per_epoch=max(1, rows // per_step),
                start_epoch=0 if done is None else done + 1, created_at=time.time(),
                targets=method.targets_note(manifest.targets))
    return method, plan


def _fold_rows(manifest, fold: int, where: str) -> int:
    """Rows of ``fold`` (ingest records k and the rows per fold in the manifest)."""
    per_fold = manifest.folds.get("rows_per_fold") or []
    if not 0 <= fold < len(per_fold) or per_fold[fold] == 0:
        raise ConfigError(f"config key 'data.fold': {where} has no rows in fold {fold} "
                          f"(it has {len(per_fold)} folds; re-ingest with --folds K to "
                          "change k)")
    return int(per_fold[fold])


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


def build_trainer(cfg: Config, method: Method, plan: Plan, *, callbacks: list | None = None,
                  worker_fn: Callable[[dict], None] | None = None):
    """The ``TorchTrainer`` of one run (Tune trials add their reporting ``callbacks``).

    ``worker_fn`` replaces :func:`train_loop_per_worker` (it gets the plan as a dict).
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    datasets: dict = open_datasets(cfg, plan, method)
    # The stream draws each epoch's block order from (seed, Ray Data's execution index);
    # starting the index at the resumed epoch gives the order an uninterrupted run had.
    datasets["train"] = functools.partial(_train_from_resumed_epoch, datasets["train"],
                                          plan.run_uri, cfg.data.endpoint, plan.start_epoch)
    storage = resolve(cfg.run.storage, cfg.data.endpoint)
    res = cfg.resources
    scaling = ray.train.ScalingConfig(num_workers=res.workers, use_gpu=res.gpu,
                                      resources_per_worker=worker_resources(cfg),
                                      placement_strategy=res.placement)
    run_config = ray.train.RunConfig(
        name=cfg.run.name,
        storage_path=storage.path,
        storage_filesystem=storage.fs if storage.is_s3 else None,
        checkpoint_config=ray.train.CheckpointConfig(
            num_to_keep=cfg.run.keep_checkpoints, checkpoint_score_attribute=method.metric,
            checkpoint_score_order=method.mode),
        failure_config=ray.train.FailureConfig(max_failures=cfg.run.max_failures,
                                               controller_failure_limit=0),
        callbacks=callbacks,
    )
    write_run_config(cfg)
    return TorchTrainer(worker_fn or train_loop_per_worker, train_loop_config=asdict(plan),
                        scaling_config=scaling, run_config=run_config, datasets=datasets,
                        dataset_config=stream.data_config())


def worker_resources(cfg: Config) -> dict[str, float]:
    """What one worker of the run reserves: its CPUs, its GPU share, custom resources."""
    res = cfg.resources
    return {"CPU": res.cpus_per_worker, **({"GPU": res.gpus_per_worker} if res.gpu else {}),
            **res.custom}


def write_run_config(cfg: Config) -> None:
    """``config.yaml`` in the run folder: the run exists (a restart resumes it)."""
    _write_text(run_location(cfg), "config.yaml", cfg.to_yaml())


def _write_text(loc: Location, name: str, text: str | bytes) -> None:
    if not loc.is_s3:
        loc.fs.create_dir(loc.path, recursive=True)
    data = text.encode() if isinstance(text, str) else text
    with loc.fs.open_output_stream(loc.join(name)) as out:
        out.write(data)


def finish_run(cfg: Config, result, targets: str = "") -> RunOutcome:
    """After ``fit``: raise its error, write ``history.json`` and ``curves.png``
    (``targets``: "derived V/A" goes into the figure's title)."""
    from ray_fer.reports.curves import plot_curves

    if result.error is not None:
        raise result.error
    run = run_location(cfg)
    latest = result.checkpoint
    if latest is None:
        raise RuntimeError(f"run {run.uri} reported no checkpoint")
    with latest.filesystem.open_input_stream(f"{latest.path}/{META_FILE}") as f:
        meta = json.loads(f.read().decode())
    best_epoch = meta["metrics"]["best_epoch"]
    best = next((c for c, m in result.best_checkpoints or [] if m.get("epoch") == best_epoch),
                None)
    history = meta["history"]
    _write_text(run, "history.json", json.dumps(history, indent=2) + "\n")
    title = " · ".join(filter(None, (cfg.method, cfg.run.name, targets)))
    _write_text(run, "curves.png", plot_curves(history, title=title))

    def uri(ckpt) -> str | None:
        if ckpt is None:
            return None
        return ("s3://" + ckpt.path) if run.is_s3 else ckpt.path

    return RunOutcome(run_uri=run.uri, metrics=meta["metrics"], history=history,
                      best_checkpoint=uri(best), latest_checkpoint=uri(latest), targets=targets)


def train(cfg: Config) -> RunOutcome:
    """Run ``cfg`` to the end on Ray Train (local Ray, or the cluster at RAY_ADDRESS)."""
    from ray_fer.cluster.runtime import connect

    cfg = with_run_name(cfg)
    method, plan = plan_run(cfg)
    connect(cfg.resources.cpus_per_worker, cfg.resources.workers)
    trainer = build_trainer(cfg, method, plan)
    outcome = finish_run(cfg, trainer.fit(), targets=plan.targets)
    if method.after_run is not None:
        figures = method.after_run(Config.from_dict(plan.config),
                                   outcome.best_checkpoint or outcome.latest_checkpoint)
        run = run_location(cfg)
        for name, data in figures.files.items():
            _write_text(run, name, data)
        scalars = _Scalars(run.uri, cfg.data.endpoint)
        for tag, image in figures.images.items():
            scalars.writer.add_image(tag, image, cfg.train.epochs, dataformats="HWC")
        scalars.write({}, cfg.train.epochs)
        scalars.close()
    return outcome


def cross_validate(cfg: Config) -> dict:
    """Train one run per fold (``<name>-fold<f>``) and summarise the best validation metric.

    Writes ``<storage>/<name>-folds.json`` with each fold's best value and epoch and their
    mean ± standard deviation (population std over folds, as the CK+ literature reports).
    """
    from ray_fer.config import override

    cfg = with_run_name(cfg)
    manifest = read_manifest(resolve(resolve_data_uri(cfg), cfg.data.endpoint))
    k = int(manifest.folds.get("k") or 0)
    if k < 2:
        raise ConfigError(f"--fold all: {cfg.data.uri or 'the data'} has no k-fold "
                          "assignment; ingest it with --folds K")
    method = get_method(cfg.method)
    folds = []
    for fold in range(k):
        fold_cfg = override(override(cfg, "data.fold", fold), "run.name",
                            f"{cfg.run.name}-fold{fold}")
        outcome = train(fold_cfg)
        folds.append({"fold": fold, "run": outcome.run_uri,
                      "best": outcome.metrics[f"best_{method.metric}"],
                      "best_epoch": outcome.metrics["best_epoch"]})
    values = np.array([f["best"] for f in folds], dtype=np.float64)
    summary = {"method": cfg.method, "metric": method.metric, "mode": method.mode, "k": k,
               "mean": float(values.mean()), "std": float(values.std()), "folds": folds,
               "targets": outcome.targets}
    storage = resolve(cfg.run.storage, cfg.data.endpoint)
    _write_text(storage, f"{cfg.run.name}-folds.json", json.dumps(summary, indent=2) + "\n")
    return summary


# --------------------------------------------------------------------------- worker


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def wrap_module(module: nn.Module, cfg: Config, device: torch.device, world: int) -> nn.Module:
    """``module`` as it trains: in DDP across ``world`` > 1 workers, compiled on a GPU if
    configured (as CUDA graphs where :func:`cuda_graphs_on`)."""
    trainable = any(p.requires_grad for p in module.parameters())
    if world > 1 and trainable:
        module = nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.train.compile and device.type == "cuda":
        # Static shapes: training drops its last partial batch, and the STN's affine_grid
        # does not trace with dynamic shapes.
        module = torch.compile(module, dynamic=False,
                               mode="reduce-overhead" if cuda_graphs_on(cfg, device) else None)
    return module


def cuda_graphs_on(cfg: Config, device: torch.device) -> bool:
    """Whether training steps replay as CUDA graphs: ``train.cuda_graphs`` with
    ``train.compile``, on a GPU, in a one-worker run (DDP's all-reduce is not captured)."""
    return (cfg.train.cuda_graphs and cfg.train.compile and device.type == "cuda"
            and cfg.resources.workers == 1)


def train_step(method: Method, state: TrainState, batch: dict) -> Sums:
    """One optimisation step of ``method``: its sums over ``batch``."""
    if cuda_graphs_on(state.cfg, state.device):
        # Marks a new iteration for the CUDA graphs, so that replaying them may reuse the
        # memory of the last step's outputs (which the step's sums no longer reference).
        torch.compiler.cudagraph_mark_step_begin()
    return method.train_batch(state, batch)


def _all_min(value: int, group) -> int:
    """The smallest of the workers' ``value``."""
    if group is None:
        return value
    t = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=group)
    return int(t.item())


def _all_have(has: bool, group) -> bool:
    """Whether every worker ``has``."""
    return bool(_all_min(int(has), group))


def _accumulate(total: Sums, part: Sums) -> None:
    for key, value in part.items():
        value = value.detach().double()
        total[key] = total[key] + value if key in total else value


def _all_reduce(sums: Sums, group) -> Sums:
    """Sum the per-worker sums over all workers (a worker may lack keys: no rows seen)."""
    local = {k: v.cpu() for k, v in sums.items()}
    if group is None:
        return local
    gathered: list = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, local, group=group)
    total: Sums = {}
    for part in gathered:
        _accumulate(total, part)
    return total


def fit_batch(batch: dict, info: DataInfo, channels_last: bool = False) -> dict:
    """``batch`` with its images converted to the model's size and channels if needed."""
    images = batch["image"]
    if images.shape[1] != info.channels or images.shape[-1] != info.image_size:
        images = fit_images(images, info.image_size, info.channels)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        batch["image"] = images
    return batch


def _batches(it: Iterator[dict], info: DataInfo, channels_last: bool) -> Iterator[dict]:
    for batch in it:
        yield fit_batch(batch, info, channels_last)


def _epoch_batches(cfg: Config, info: DataInfo, device: torch.device, source: stream.Source,
                   epoch: int, rank: int, channels_last: bool,
                   recorder: CacheRecorder | None) -> Iterator[dict]:
    """The training batches of ``epoch`` from ``source`` (lazy: nothing is read yet)."""
    return _batches(stream.iter_train_batches(
        source, batch_size=cfg.train.batch_size, device=device, augment=cfg.augment,
        seed=cfg.train.seed, epoch=epoch, channels_last=channels_last, drop_last=True,
        shuffle_buffer=cfg.data.shuffle_buffer, rank=rank, recorder=recorder,
        num_classes=info.num_classes, soft_labels=cfg.loss.soft_labels),
        info, channels_last)


def _train_epoch(method: Method, state: TrainState, source: stream.Source,
                 batches: Iterator[dict], group) -> tuple[Sums, int, float]:
    """Sums and steps of one epoch over ``batches`` (read from ``source``), and the
    wall-clock time its first step was launched."""
    cfg = state.cfg
    for module in state.modules.values():
        module.train()
    sums: Sums = {}
    first_step_at = math.nan
    if isinstance(source, DeviceCache):
        # Each worker knows its batch count: agree on the smallest once, not every step.
        steps = _all_min(source.num_batches(cfg.train.batch_size, drop_last=True), group)
        for step, batch in enumerate(itertools.islice(batches, steps)):
            first_step_at = time.time() if step == 0 else first_step_at
            _accumulate(sums, train_step(method, state, batch))
        return sums, _some(steps, cfg), first_step_at
    steps = 0
    while True:
        batch = next(batches, None)
        if not _all_have(batch is not None, group):
            break
        first_step_at = time.time() if steps == 0 else first_step_at
        _accumulate(sums, train_step(method, state, batch))
        steps += 1
    # Drain what this worker has left so Ray Data completes the epoch's execution (its
    # execution index, hence the next epoch's block order, advances only then).
    for _ in batches:
        pass
    return sums, _some(steps, cfg), first_step_at


def _some(steps: int, cfg: Config) -> int:
    """``steps``, unless the epoch had none (every worker agrees on the count)."""
    if steps == 0:
        # Workers receive whole blocks of the train split; one may get less than a batch.
        raise ConfigError(
            f"config key 'train.batch_size': an epoch ran no training step: a worker received "
            f"fewer than {cfg.train.batch_size} training rows ({cfg.resources.workers} "
            "workers share the train split in whole blocks of rows); lower "
            "train.batch_size or resources.workers")
    return steps


@torch.no_grad()
def evaluate_shard(method: Method, state: TrainState, shard: stream.Source,
                   batch_size: int | None = None, channels_last: bool = False,
                   recorder: CacheRecorder | None = None,
                   sample: list[torch.Tensor] | None = None) -> Sums:
    """The method's summed eval statistics over every row of ``shard`` (no collectives).

    An empty ``sample`` list receives the first batch's input images (for explanations).
    """
    for module in state.modules.values():
        module.eval()
    sums: Sums = {}
    batches = stream.iter_eval_batches(shard,
                                       batch_size=batch_size or state.cfg.train.eval_batch_size,
                                       device=state.device, channels_last=channels_last,
                                       recorder=recorder)
    for batch in _batches(batches, state.info, channels_last):
        if sample is not None and not sample:
            sample.append(batch["image"].detach().clone())
        _accumulate(sums, method.eval_batch(state, batch))
    return sums


class _Scalars:
    """TensorBoard scalars of rank 0, under ``<run>/tensorboard``.

    Local storage: written in place. S3: written to a local folder and copied up after
    every epoch (event files are append-only and small), so TensorBoard can read
    ``s3://.../<run>/tensorboard`` during the run.
    """

    def __init__(self, run_uri: str, endpoint: str | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.run = resolve(run_uri, endpoint)
        self.tmp = tempfile.mkdtemp(prefix="ray_fer-tb-") if self.run.is_s3 else None
        self.logdir = self.tmp or self.run.join(TENSORBOARD_DIR)
        self.writer = SummaryWriter(self.logdir)

    def write(self, metrics: dict, epoch: int) -> None:
        for key, value in metrics.items():
            if key == "epoch" or not isinstance(value, int | float):
                continue
            split, _, name = key.partition("_")
            tag = f"{name}/{split}" if split in ("train", "val") and name else f"run/{key}"
            self.writer.add_scalar(tag, value, epoch + 1)
        self.writer.flush()
        if self.tmp:
            copy_folder(pafs.LocalFileSystem(), self.tmp, self.run.fs,
                        self.run.join(TENSORBOARD_DIR))

    def images(self, pngs: dict[str, bytes], epoch: int) -> None:
        """PNG figures under ``best/<name>`` (copied up with the next :meth:`write`)."""
        from PIL import Image

        for name, png in pngs.items():
            image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
            self.writer.add_image(f"best/{name}", image, epoch + 1, dataformats="HWC")

    def close(self) -> None:
        self.writer.close()
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)


def _explain(scalars: _Scalars, state: TrainState, images: torch.Tensor, epoch: int) -> None:
    """Grad-CAM and Guided Grad-CAM of ``images`` into TensorBoard (``best/explain``)."""
    from ray_fer.explain.run import explain_to_tensorboard

    model = get_method(state.cfg.method)
    subject = Subject(state.modules["model"], model.task,
                      model.outputs(state.info.class_names),
                      get_model(state.cfg.model_name).gradcam_layer(state.modules["model"]))
    explain_to_tensorboard(scalars.writer, subject, images, epoch + 1,
                           class_names=state.info.class_names, tag="best/explain")


def _improved(value: float, best: float | None, mode: str) -> bool:
    """Whether ``value`` is the new best; a tie goes to the later epoch, as Ray Train's
    CheckpointConfig ranks equal scores, so both name the same best checkpoint."""
    return best is None or (value >= best if mode == "max" else value <= best)


def _report(metrics: dict, state: TrainState, method: Method, progress: Progress,
            session: Session) -> None:
    name = f"{CHECKPOINT_PREFIX}{state.epoch:04d}"
    if session.rank != 0:
        session.report(metrics, None, name)
        return
    with tempfile.TemporaryDirectory(prefix="ray_fer-ckpt-") as tmp:
        save_checkpoint(tmp, cfg=state.cfg, info=state.info, modules=state.modules,
                        optimizers=state.optimizers, schedulers=state.schedulers,
                        progress=progress, metrics=metrics, metric=method.metric,
                        mode=method.mode)
        session.report(metrics, tmp, name)


def _adopt_caches(sources: dict[str, stream.Source], recorders: dict[str, CacheRecorder],
                  group, rank: int) -> None:
    """Serve a split from the device caches of its first pass if every worker filled one."""
    for name in sorted(recorders):
        cache = recorders[name].cache()
        if _all_have(cache is not None, group):
            sources[name] = cache
            if rank == 0:
                log.info("%s rows now served from device memory: %d rows, %.1f MB on rank 0",
                         name, cache.size, cache.nbytes / 2**20)


def build_state(method: Method, cfg: Config, info: DataInfo, device: torch.device,
                steps_per_epoch: int) -> TrainState:
    """Seeded modules (fresh, or from ``model.init``), optimizers and schedulers of
    ``method`` on ``device``."""
    seed_everything(cfg.train.seed)
    modules = method.build_modules(cfg, info)
    if cfg.model.init:
        init_modules(modules, cfg, info)
    for module in modules.values():
        module.to(device)
        if device.type == "cuda" and cfg.train.channels_last:
            module.to(memory_format=torch.channels_last)
    optimizers, schedulers = method.build_optimizers(cfg, modules, steps_per_epoch)
    return TrainState(cfg=cfg, info=info, device=device, modules=modules,
                      optimizers=optimizers, schedulers=schedulers)


@dataclass(frozen=True)
class Session:
    """What the epochs of a run need from the process they run in: a Ray Train worker
    (:func:`ray_train_session`) or a one-worker Tune trial
    (:func:`ray_fer.tuning.trial.trial_session`)."""

    rank: int
    world: int
    device: torch.device
    #: The checkpoint to resume from (its folder through ``as_directory()``), or None.
    checkpoint: object | None
    #: ``train`` and ``val`` rows of this worker.
    sources: dict[str, stream.Source]
    #: The epoch the training stream's block order was set for.
    ordered_epoch: int
    #: ``report(metrics, checkpoint folder or None, checkpoint name)``.
    report: Callable[[dict, str | None, str], None]
    #: Gets the rows as the run last read them (device caches where it made them) when
    #: the run ends or is stopped, e.g. to keep them for the next run in this process.
    keep_sources: Callable[[dict[str, stream.Source]], None] | None = None


def ray_train_session(plan: Plan) -> Session:
    """The session of a Ray Train worker: its rank, device, dataset shards and reports."""
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
    return Session(rank=ctx.get_world_rank(), world=ctx.get_world_size(),
                   device=ray.train.torch.get_device(), checkpoint=checkpoint,
                   sources={name: ray.train.get_dataset_shard(name) for name in ("train", "val")},
                   ordered_epoch=ordered, report=report)


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train worker entry: the epochs of one run (see the module docstring)."""
    plan = Plan(**loop_config)
    run_worker(plan, get_method(plan.config["method"]))


def run_worker(plan: Plan, method: Method, session: Session | None = None) -> None:
    """The epochs of one run in ``session`` (default: this Ray Train worker's), with
    ``method``'s steps."""
    cfg = Config.from_dict(plan.config)
    session = session or ray_train_session(plan)
    rank, world, device = session.rank, session.world, session.device
    channels_last = device.type == "cuda" and cfg.train.channels_last
    info = DataInfo(class_names=plan.class_names, image_size=plan.image_size,
                    channels=plan.channels)
    loaded = None
    progress = Progress()
    if session.checkpoint is not None:
        with session.checkpoint.as_directory() as folder:
            loaded = load_checkpoint(folder, map_location=device)
        progress = loaded.progress
        if progress.next_epoch != session.ordered_epoch:
            log.warning("resuming at epoch %d but the stream was ordered for epoch %d: the "
                        "data order of the remaining epochs differs from an uninterrupted run",
                        progress.next_epoch, session.ordered_epoch)
    first_epoch = progress.next_epoch
    sources = dict(session.sources)
    budget = cache_budget(cfg.data.cache, device, cfg.data.cache_fraction)
    # Rows augmented by Ray Data must be read anew each epoch to get new augmentations.
    cacheable = ["val"] if cfg.augment.enabled and cfg.augment.where == "data" else [
        "train", "val"]

    def epoch_input(epoch: int) -> tuple[dict[str, CacheRecorder], Iterator[dict]]:
        recorders = {name: CacheRecorder(budget) for name in cacheable
                     if budget and not isinstance(sources[name], DeviceCache)}
        return recorders, _epoch_batches(cfg, info, device, sources["train"], epoch, rank,
                                         channels_last, recorders.get("train"))

    # The data pipeline starts (tasks, first blocks, shuffle buffer) while torch sets up
    # and builds the model and optimiser: in a new process both take seconds (on a GPU
    # 6-7 s each, 4 trials starting at once).
    recorders, batches = epoch_input(first_epoch)
    if first_epoch < cfg.train.epochs:
        batches = stream.fetching_first(batches)
    torch.set_num_threads(cfg.resources.cpus_per_worker)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.backends.cudnn.benchmark = True
    state = build_state(method, cfg, info, device, plan.steps_per_epoch)
    if loaded is not None:
        loaded.restore(state.modules, state.optimizers, state.schedulers)
    state.train_modules = {k: wrap_module(m, cfg, device, world) for k, m in state.modules.items()}
    # A CPU-side group for control flags and metric sums: no GPU sync, works beside NCCL.
    group = dist.new_group(backend="gloo") if world > 1 else None
    scalars = _Scalars(plan.run_uri, cfg.data.endpoint) if rank == 0 else None
    if scalars is not None and plan.targets:
        scalars.writer.add_text("run/targets", plan.targets)
    # Rank 0 keeps a few validation faces to explain at each new best epoch.
    explain_layer = get_model(cfg.model_name).gradcam_layer(state.modules["model"])
    explainable = rank == 0 and cfg.train.explain_images > 0 and explain_layer is not None
    sample: list[torch.Tensor] | None = [] if explainable else None
    try:
        for epoch in range(first_epoch, cfg.train.epochs):
            state.epoch = epoch
            seed_everything(epoch_seed(cfg.train.seed, epoch, rank))
            if epoch > first_epoch:
                recorders, batches = epoch_input(epoch)
            started = time.perf_counter()
            cached = isinstance(sources["train"], DeviceCache)
            train_sums, steps, first_step_at = _train_epoch(
                method, state, sources["train"], batches, group)
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # time the work, not the kernel launches
            train_time = time.perf_counter() - started
            val_sums = evaluate_shard(method, state, sources["val"], channels_last=channels_last,
                                      recorder=recorders.get("val"), sample=sample)
            _adopt_caches(sources, recorders, group, rank)
            train_sums = _all_reduce(train_sums, group)
            val_sums = _all_reduce(val_sums, group)
            metrics = {"epoch": epoch,
                       **method.summarize(train_sums, "train", info),
                       **method.summarize(val_sums, "val", info),
                       "lr": state.lr(), "steps": steps,
                       "rows_train": int(train_sums.get("count", 0)),
                       "rows_val": int(val_sums.get("count", 0)),
                       # 1: the epoch's training rows came from device memory, not Ray Data.
                       "rows_cached": int(cached),
                       # Share of the run's schedule done: a search compares trials of
                       # different schedule lengths at equal shares (ray_fer.tune).
                       SCHEDULE_PCT: 100.0 * (epoch + 1) / cfg.train.epochs,
                       "time_train_s": train_time, "time_epoch_s": time.perf_counter() - started}
            if epoch == first_epoch and plan.created_at:
                # Fixed cost of a run (or a Tune trial): actors, process group, data
                # pipeline, model build, first batch. Reported once per (re)start.
                metrics["time_startup_s"] = first_step_at - plan.created_at
            value = metrics[method.metric]
            improved = _improved(value, progress.best_value, method.mode)
            if improved:
                progress.best_value, progress.best_epoch = value, epoch
            metrics["best_epoch"] = progress.best_epoch
            metrics[f"best_{method.metric}"] = progress.best_value
            progress.next_epoch = epoch + 1
            progress.history.append(metrics)
            # TensorBoard first: Tune may stop a trial as soon as it gets the report.
            if scalars is not None:
                if improved and method.figures is not None:
                    scalars.images(method.figures(val_sums, info), epoch)
                if improved and sample:
                    _explain(scalars, state, sample[0][:cfg.train.explain_images], epoch)
                scalars.write(metrics, epoch)
            _report(metrics, state, method, progress, session)
    finally:
        if session.keep_sources is not None:
            session.keep_sources(sources)
        if scalars is not None:
            scalars.close()
