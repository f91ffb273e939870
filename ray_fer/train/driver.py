"""The driver of a run: plan it, open its datasets, build its trainer, fit, finish.

:func:`train` checks the config and the data before Ray starts (:mod:`ray_fer.train.plan`),
builds a ``TorchTrainer`` whose run lives at ``<run.storage>/<run.name>`` (local folder or
s3://) and whose workers run :func:`ray_fer.train.worker.train_loop_per_worker`, fits,
then writes ``history.json``, ``curves.png`` and the method's after-run figures next to
the checkpoints. :func:`cross_validate` trains one run per fold of a k-fold protocol.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow.fs as pafs

from ray_fer.checkpoint import META_FILE
from ray_fer.config import Config, ConfigError, override
from ray_fer.data import stream
from ray_fer.data.shards import read_manifest
from ray_fer.methods.base import RunFigures
from ray_fer.methods.registry import Method, get_method
from ray_fer.storage import Location, resolve
from ray_fer.train.plan import (
    Plan,
    check_data_files,
    latest_checkpoint_epoch,
    plan_run,
    resolve_data_uri,
    run_location,
    with_run_name,
    write_file,
    write_run_config,
)
from ray_fer.train.runtime import trainer_datasets
from ray_fer.train.tensorboard import RunBoard
from ray_fer.train.worker import train_loop_per_worker


@dataclass(frozen=True)
class RunOutcome:
    """What a finished run left: its folder, last metrics, best and latest checkpoints."""

    run_uri: str
    metrics: dict
    history: list[dict]
    best_checkpoint: str | None
    latest_checkpoint: str | None
    targets: str = ""


def build_trainer(cfg: Config, method: Method, plan: Plan, *, callbacks: list | None = None,
                  worker_fn: Callable[[dict], None] | None = None):
    """The ``TorchTrainer`` of one run (Tune trials add their reporting ``callbacks``).

    ``worker_fn`` replaces :func:`train_loop_per_worker` (it gets the plan as a dict).
    """
    import ray.train
    from ray.train.torch import TorchTrainer

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
                        scaling_config=scaling, run_config=run_config,
                        datasets=trainer_datasets(cfg, plan, method),
                        dataset_config=stream.data_config())


def worker_resources(cfg: Config) -> dict[str, float]:
    """What one worker of the run reserves: its CPUs, its GPU share, custom resources."""
    res = cfg.resources
    return {"CPU": res.cpus_per_worker, **({"GPU": res.gpus_per_worker} if res.gpu else {}),
            **res.custom}


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
    write_file(run, "history.json", json.dumps(history, indent=2) + "\n")
    title = " · ".join(filter(None, (cfg.method, cfg.run.name, targets)))
    write_file(run, "curves.png", plot_curves(history, title=title))

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
    check_data_files(plan.data_uri, cfg.data.endpoint)
    run = run_location(cfg)
    # Only a folder this run creates may be removed (--name may name one that exists).
    new = run.fs.get_file_info(run.path).type == pafs.FileType.NotFound
    connect(cfg.resources.cpus_per_worker, cfg.resources.workers)
    trainer = build_trainer(cfg, method, plan)
    try:
        outcome = finish_run(cfg, trainer.fit(), targets=plan.targets)
    except BaseException:
        if new:
            remove_untrained_run(run)
        raise
    if method.after_run is not None:
        figures = method.after_run(Config.from_dict(plan.config),
                                   outcome.best_checkpoint or outcome.latest_checkpoint)
        write_figures(cfg, figures)
    return outcome


def remove_untrained_run(run: Location) -> None:
    """Delete the folder of a new run that failed before its first checkpoint: it holds
    no training, and its ``config.yaml`` would refuse the next run of that name."""
    with contextlib.suppress(OSError):  # e.g. the storage is what failed the run
        if latest_checkpoint_epoch(run) is None:
            run.fs.delete_dir(run.path)


def write_figures(cfg: Config, figures: RunFigures) -> None:
    """A method's after-run figures: files into the run folder, images into its
    TensorBoard at the last epoch."""
    run = run_location(cfg)
    for name, data in figures.files.items():
        write_file(run, name, data)
    board = RunBoard(run.uri, cfg.data.endpoint)
    board.images(figures.images, cfg.train.epochs - 1)
    board.close()


def cross_validate(cfg: Config) -> dict:
    """Train one run per fold (``<name>-fold<f>``) and summarise the best validation metric.

    Writes ``<storage>/<name>-folds.json`` with each fold's best value and epoch and their
    mean ± standard deviation (population std over folds, as the CK+ literature reports).
    """
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
    write_file(storage, f"{cfg.run.name}-folds.json", json.dumps(summary, indent=2) + "\n")
    return summary
