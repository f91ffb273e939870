"""The worker loop: the epochs of one run, in a Ray Train worker
(:func:`train_loop_per_worker`) or in a one-worker Tune trial's own process, whichever
:class:`~ray_fer.train.runtime.Runtime` it is given.

Per epoch: reseed from (seed, epoch, rank); train on this worker's disjoint part of the
training rows; evaluate every validation row once across workers; all-reduce the method's
sums (:mod:`ray_fer.train.epoch`, :mod:`ray_fer.train.collectives`); from rank 0, write
TensorBoard (:mod:`ray_fer.train.tensorboard`); report the metrics (with ``lr``,
``best_epoch``) and a checkpoint through the runtime. Everything method-specific comes
from the method (:class:`ray_fer.methods.registry.Method`); the loop names none.

Resume: the runtime hands back the latest checkpoint of a run when a run with the same
storage and name starts again (``--resume``) or a failed worker group or trial restarts;
the loop loads modules, optimizers, schedulers and progress and continues at the next
epoch. Augmentation and local shuffling are seeded by (seed, epoch, rank) and the
stream's block order by the epoch the runtime ordered it for, so a resumed or restarted
run on one CPU worker reproduces an uninterrupted one.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterator

import torch

from ray_fer.checkpoint import Loaded, Progress, checkpoint_name, load_checkpoint, save_checkpoint
from ray_fer.config import Config
from ray_fer.data import stream
from ray_fer.data.augment import epoch_seed
from ray_fer.data.device_cache import CacheRecorder, DeviceCache, cache_budget
from ray_fer.data.info import DataInfo
from ray_fer.explain.run import Subject
from ray_fer.methods.base import Sums
from ray_fer.methods.registry import Method, get_method, get_model
from ray_fer.train.collectives import all_have, all_reduce, cpu_group
from ray_fer.train.epoch import (
    build_state,
    epoch_batches,
    evaluate_shard,
    seed_everything,
    train_epoch,
    wrap_module,
)
from ray_fer.train.plan import Plan
from ray_fer.train.runtime import Runtime, ray_train_runtime
from ray_fer.train.tensorboard import RunBoard

log = logging.getLogger(__name__)

#: The per-epoch metric: percent of the run's schedule done after the epoch.
SCHEDULE_PCT = "schedule_pct"


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train worker entry: the epochs of one run (see the module docstring)."""
    plan = Plan(**loop_config)
    run_worker(plan, get_method(plan.config["method"]))


def run_worker(plan: Plan, method: Method, runtime: Runtime | None = None) -> None:
    """The epochs of one run in ``runtime`` (default: this Ray Train worker's), with
    ``method``'s steps."""
    worker = _Worker(plan, method, runtime or ray_train_runtime(plan))
    try:
        worker.run()
    finally:
        worker.close()


def resume_from(runtime: Runtime) -> Loaded | None:
    """The checkpoint ``runtime`` resumes from, loaded onto its device (None: a new run)."""
    if runtime.checkpoint is None:
        return None
    with runtime.checkpoint.as_directory() as folder:
        loaded = load_checkpoint(folder, map_location=runtime.device)
    if loaded.progress.next_epoch != runtime.ordered_epoch:
        log.warning("resuming at epoch %d but the stream was ordered for epoch %d: the data "
                    "order of the remaining epochs differs from an uninterrupted run",
                    loaded.progress.next_epoch, runtime.ordered_epoch)
    return loaded


def improved(value: float, best: float | None, mode: str) -> bool:
    """Whether ``value`` is the new best; a tie goes to the later epoch, as Ray Train's
    CheckpointConfig ranks equal scores, so both name the same best checkpoint."""
    return best is None or (value >= best if mode == "max" else value <= best)


class _Worker:
    """One worker's run: the objects its epochs share and the steps of an epoch."""

    def __init__(self, plan: Plan, method: Method, runtime: Runtime) -> None:
        self.plan, self.method, self.runtime = plan, method, runtime
        self.cfg = cfg = Config.from_dict(plan.config)
        self.info = DataInfo(plan.class_names, plan.image_size, plan.channels)
        self.device = runtime.device
        self.channels_last = self.device.type == "cuda" and cfg.train.channels_last
        self.sources = dict(runtime.sources)
        self.budget = cache_budget(cfg.data.cache, self.device, cfg.data.cache_fraction)
        # Rows augmented by Ray Data must be read anew each epoch to get new augmentations.
        by_data = cfg.augment.enabled and cfg.augment.where == "data"
        self.cacheable = ["val"] if by_data else ["train", "val"]
        self.loaded = resume_from(runtime)
        self.progress = self.loaded.progress if self.loaded is not None else Progress()
        self.first_epoch = self.progress.next_epoch
        self.state = self.group = self.board = None
        #: Rank 0's first validation batch, explained at each new best epoch (None: not).
        self.sample: list[dict[str, torch.Tensor]] | None = None
        self.explain_layer: str | None = None

    def run(self) -> None:
        # The data pipeline starts (tasks, first blocks, shuffle buffer) while torch sets up
        # and builds the model and optimiser: in a new process both take seconds (on a GPU
        # 6-7 s each, 4 trials starting at once).
        recorders, batches = self.epoch_input(self.first_epoch)
        if self.first_epoch < self.cfg.train.epochs:
            batches = stream.fetching_first(batches)
        self.start()
        for epoch in range(self.first_epoch, self.cfg.train.epochs):
            if epoch > self.first_epoch:
                recorders, batches = self.epoch_input(epoch)
            self.epoch(epoch, recorders, batches)

    def epoch_input(self, epoch: int) -> tuple[dict[str, CacheRecorder], Iterator[dict]]:
        """Cache recorders for the splits still streamed, and ``epoch``'s training batches
        (lazy: nothing is read yet)."""
        recorders = {name: CacheRecorder(self.budget) for name in self.cacheable
                     if self.budget and not isinstance(self.sources[name], DeviceCache)}
        return recorders, epoch_batches(self.cfg, self.info, self.device, self.sources["train"],
                                        epoch, self.runtime.rank, self.channels_last,
                                        recorders.get("train"))

    def start(self) -> None:
        """Torch's settings, the method's state (restored on resume), the CPU group and,
        on rank 0, TensorBoard."""
        cfg, device, runtime = self.cfg, self.device, self.runtime
        torch.set_num_threads(cfg.resources.cpus_per_worker)
        if device.type == "cpu":
            torch.use_deterministic_algorithms(True, warn_only=True)
        else:
            torch.backends.cudnn.benchmark = True
        self.state = state = build_state(self.method, cfg, self.info, device,
                                         self.plan.steps_per_epoch)
        if self.loaded is not None:
            self.loaded.restore(state.modules, state.optimizers, state.schedulers)
        state.train_modules = {k: wrap_module(m, cfg, device, runtime.world)
                               for k, m in state.modules.items()}
        self.group = cpu_group(runtime.world)
        if runtime.rank != 0:
            return
        self.board = RunBoard(self.plan.run_uri, cfg.data.endpoint)
        if self.plan.targets:
            self.board.text("run/targets", self.plan.targets)
        if cfg.train.explain_images > 0:
            model = get_model(cfg.model_name)
            self.explain_layer = model.gradcam_layer(state.modules["model"])
            self.sample = [] if self.explain_layer is not None else None

    def epoch(self, epoch: int, recorders: dict[str, CacheRecorder],
              batches: Iterator[dict]) -> None:
        """Train, validate, all-reduce, log and report epoch ``epoch``."""
        state, cfg = self.state, self.cfg
        state.epoch = epoch
        seed_everything(epoch_seed(cfg.train.seed, epoch, self.runtime.rank))
        started = time.perf_counter()
        cached = isinstance(self.sources["train"], DeviceCache)
        train_sums, steps, first_step_at = train_epoch(self.method, state, self.sources["train"],
                                                       batches, self.group)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # time the work, not the kernel launches
        train_time = time.perf_counter() - started
        val_sums = evaluate_shard(self.method, state, self.sources["val"],
                                  channels_last=self.channels_last,
                                  recorder=recorders.get("val"), sample=self.sample)
        self.adopt_caches(recorders)
        train_sums = all_reduce(train_sums, self.group)
        val_sums = all_reduce(val_sums, self.group)
        metrics = self.metrics(epoch, train_sums, val_sums, steps=steps, cached=cached,
                               train_time=train_time, started=started)
        if epoch == self.first_epoch and self.plan.created_at:
            # Fixed cost of a run (or a Tune trial): actors, process group, data pipeline,
            # model build, first batch. Reported once per (re)start.
            metrics["time_startup_s"] = first_step_at - self.plan.created_at
        better = self.record(metrics, epoch)
        # TensorBoard first: Tune may stop a trial as soon as it gets the report.
        if self.board is not None:
            self.log(metrics, val_sums, better, epoch)
        self.report(metrics)

    def adopt_caches(self, recorders: dict[str, CacheRecorder]) -> None:
        """Serve a split from the device caches of its first pass if every worker filled
        one."""
        for name in sorted(recorders):
            cache = recorders[name].cache()
            if all_have(cache is not None, self.group):
                self.sources[name] = cache
                if self.runtime.rank == 0:
                    log.info("%s rows now served from device memory: %d rows, %.1f MB on "
                             "rank 0", name, cache.size, cache.nbytes / 2**20)

    def metrics(self, epoch: int, train_sums: Sums, val_sums: Sums, *, steps: int,
                cached: bool, train_time: float, started: float) -> dict:
        """The method's epoch metrics and the loop's own (``started``: the epoch's
        ``perf_counter``)."""
        method, info = self.method, self.info
        return {"epoch": epoch,
                **method.summarize(train_sums, "train", info),
                **method.summarize(val_sums, "val", info),
                "lr": self.state.lr(), "steps": steps,
                "rows_train": int(train_sums.get("count", 0)),
                "rows_val": int(val_sums.get("count", 0)),
                # 1: the epoch's training rows came from device memory, not Ray Data.
                "rows_cached": int(cached),
                # Share of the run's schedule done: a search compares trials of different
                # schedule lengths at equal shares (ray_fer.tune).
                SCHEDULE_PCT: 100.0 * (epoch + 1) / self.cfg.train.epochs,
                "time_train_s": train_time, "time_epoch_s": time.perf_counter() - started}

    def record(self, metrics: dict, epoch: int) -> bool:
        """Add the best value and epoch so far to ``metrics`` and the history; whether the
        epoch is the new best."""
        method, progress = self.method, self.progress
        value = metrics[method.metric]
        better = improved(value, progress.best_value, method.mode)
        if better:
            progress.best_value, progress.best_epoch = value, epoch
        metrics["best_epoch"] = progress.best_epoch
        metrics[f"best_{method.metric}"] = progress.best_value
        progress.next_epoch = epoch + 1
        progress.history.append(metrics)
        return better

    def log(self, metrics: dict, val_sums: Sums, better: bool, epoch: int) -> None:
        """The epoch's scalars; at a new best epoch the method's figures and the
        explanation of the sampled validation faces."""
        board = self.board
        if better and self.method.figures is not None:
            board.figures(self.method.figures(val_sums, self.info), epoch)
        if better and self.sample:
            board.explain(*self.explained(), class_names=self.info.class_names, epoch=epoch)
        board.scalars(metrics, epoch)
        board.flush()

    def explained(self) -> tuple[Subject, torch.Tensor, list[int] | None]:
        """The network as explain sees it, the sampled faces and their true classes."""
        n = self.cfg.train.explain_images
        network = self.state.modules["model"]
        subject = Subject(network, self.method.task, self.method.outputs(self.info.class_names),
                          self.explain_layer)
        first = self.sample[0]
        labels = (first["label"][:n].tolist()
                  if self.method.task == "classify" and "label" in first else None)
        return subject, first["image"][:n], labels

    def report(self, metrics: dict) -> None:
        """The epoch's metrics, and from rank 0 its checkpoint, to the runtime."""
        state, method = self.state, self.method
        name = checkpoint_name(state.epoch)
        if self.runtime.rank != 0:
            self.runtime.report(metrics, None, name)
            return
        with tempfile.TemporaryDirectory(prefix="ray_fer-ckpt-") as tmp:
            save_checkpoint(tmp, cfg=state.cfg, info=state.info, modules=state.modules,
                            optimizers=state.optimizers, schedulers=state.schedulers,
                            progress=self.progress, metrics=metrics, metric=method.metric,
                            mode=method.mode)
            self.runtime.report(metrics, tmp, name)

    def close(self) -> None:
        if self.runtime.keep_sources is not None:
            self.runtime.keep_sources(self.sources)
        if self.board is not None:
            self.board.close()
