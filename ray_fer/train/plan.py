"""What a run is before Ray starts: its config checked, its data and run folder found, and
the :class:`Plan` its workers receive.

Everything that can fail on a user's input fails here, with an error naming what to fix,
before any worker starts: the method's declared checks, the data's splits and folds, the
run folder (new, or one to ``--resume``), ``model.init``, the batch size. Needs no Ray.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow.fs as pafs

from ray_fer.checkpoint import CHECKPOINT_FILES, checkpoint_epoch
from ray_fer.config import Config, ConfigError, override
from ray_fer.data.info import DataInfo
from ray_fer.data.shards import check_shard_files, read_manifest
from ray_fer.methods.registry import Method, get_method, input_shape
from ray_fer.storage import Location, check_reachable, resolve, set_endpoint
from ray_fer.train.init_from import check_init

#: The largest size the embedded synthetic faces are drawn at (see :func:`resolve_data_uri`).
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
        epoch = checkpoint_epoch(item.base_name)
        if item.type == pafs.FileType.Directory and epoch is not None:
            files = run.fs.get_file_info([run.join(item.base_name, name)
                                          for name in CHECKPOINT_FILES])
            if all(f.type == pafs.FileType.File for f in files):
                epochs.append(epoch)
    return max(epochs) if epochs else None


def check_data_files(data_uri: str, endpoint: str | None) -> None:
    """Before Ray starts: every shard the data's manifest lists is there, at its size
    (ShardError naming the first that is not)."""
    data = resolve(data_uri, endpoint)
    check_shard_files(data, read_manifest(data))


def plan_run(cfg: Config) -> tuple[Method, Plan]:
    """Check everything that can be checked before Ray starts; errors name what to fix."""
    method = get_method(cfg.method)
    method.check_config(cfg)
    set_endpoint(cfg.data.endpoint)
    data = resolve(resolve_data_uri(cfg), cfg.data.endpoint)
    check_reachable(data)
    manifest = read_manifest(data)
    _check_splits(cfg, manifest, data.uri)
    start_epoch = _start_epoch(cfg)
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
                run_uri=run_location(cfg).uri,
                class_names=list(manifest.class_names), image_size=size, channels=channels,
                train_rows=rows, steps_per_epoch=max(1, rows // per_step),
                start_epoch=start_epoch, created_at=time.time(),
                targets=method.targets_note(manifest.targets))
    return method, plan


def _check_splits(cfg: Config, manifest, where: str) -> None:
    """ConfigError naming a training or validation split the data has no rows in."""
    for split in [*cfg.data.train_splits, *([] if cfg.data.fold is not None
                                           else [cfg.data.val_split])]:
        if split not in manifest.counts:
            raise ConfigError(f"config key 'data': split {split!r} has no rows in {where} "
                              f"(it has {sorted(manifest.counts)})")


def _start_epoch(cfg: Config) -> int:
    """The epoch the run starts at: 0 for a new run, one past the latest complete
    checkpoint of a resumed one; ConfigError for a new run whose folder exists or a
    resumed one whose folder does not."""
    run = run_location(cfg)
    check_reachable(run)
    exists = run.fs.get_file_info(run.join("config.yaml")).type == pafs.FileType.File
    if exists and not cfg.run.resume:
        raise ConfigError(f"run {run.uri} already exists; pass --resume to continue it or "
                          "choose another --name")
    if cfg.run.resume and not exists:
        raise ConfigError(f"--resume: no run named {cfg.run.name!r} under {cfg.run.storage}")
    done = latest_checkpoint_epoch(run) if exists else None
    return 0 if done is None else done + 1


def _fold_rows(manifest, fold: int, where: str) -> int:
    """Rows of ``fold`` (ingest records k and the rows per fold in the manifest)."""
    per_fold = manifest.folds.get("rows_per_fold") or []
    if not 0 <= fold < len(per_fold) or per_fold[fold] == 0:
        raise ConfigError(f"config key 'data.fold': {where} has no rows in fold {fold} "
                          f"(it has {len(per_fold)} folds; re-ingest with --folds K to "
                          "change k)")
    return int(per_fold[fold])


def write_run_config(cfg: Config) -> None:
    """``config.yaml`` in the run folder: the run exists (a restart resumes it)."""
    write_file(run_location(cfg), "config.yaml", cfg.to_yaml())


def write_file(loc: Location, name: str, text: str | bytes) -> None:
    """``name`` under ``loc`` (local or S3) holding ``text``."""
    if not loc.is_s3:
        loc.fs.create_dir(loc.path, recursive=True)
    data = text.encode() if isinstance(text, str) else text
    with loc.fs.open_output_stream(loc.join(name)) as out:
        out.write(data)
