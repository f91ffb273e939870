"""Per-epoch training views and per-worker batch iteration for Ray Train.

Flow: :func:`open_split` (from :mod:`ray_fer.data.shard_source`) reads a shard prefix
into a Ray Dataset of decoded columns (for training, in a seeded new block order each
epoch); :func:`apply_data_augmentation` adds CPU-side augmentation when asked; the
trainer splits datasets across workers with :func:`data_config` (no row dropped); each
Ray Train worker iterates its shard with :func:`iter_train_batches` /
:func:`iter_eval_batches`, which hand over uint8 pixels (4x fewer bytes than float),
pinned and non-blocking, then normalise and augment (:mod:`ray_fer.data.augment`) on
the worker's device. After the
first epoch a worker may serve its rows from a :class:`DeviceCache` instead
(:mod:`ray_fer.data.device_cache`).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future
from typing import TypeVar

import numpy as np
import pyarrow as pa
import ray
import ray.data
import ray.train
import torch
from ray.data.collate_fn import ArrowBatchCollateFn

from ray_fer.config import AugmentConfig
from ray_fer.data.augment import (
    apply_mix,
    augment_batch,
    class_distribution,
    denormalise,
    draw_mix,
    epoch_seed,
    mix_rng,
    normalise,
)
from ray_fer.data.device_cache import CacheRecorder, DeviceCache
from ray_fer.data.shard_source import (
    BLOCK_BYTES,
    DECODED_COLUMNS,
    PASSTHROUGH_COLUMNS,
    ROW_ID_STRIDE,
    open_split,
)

__all__ = [
    "BLOCK_BYTES", "DECODED_COLUMNS", "PASSTHROUGH_COLUMNS", "ROW_ID_STRIDE", "data_config",
    "fetching_first", "iter_eval_batches", "iter_train_batches", "open_split",
    "apply_data_augmentation", "read_in_order",
]

T = TypeVar("T")


def _augment_on_cpu(batch: dict[str, np.ndarray], cfg: AugmentConfig) -> dict[str, np.ndarray]:
    """Ray Data UDF for ``where="data"``: augments the uint8 images of a numpy batch."""
    g = torch.Generator()
    g.seed()  # unseeded on purpose: Ray Data does not tell a UDF which epoch it serves
    images = normalise(torch.from_numpy(batch["image"]))
    batch["image"] = denormalise(augment_batch(images, cfg, g)).contiguous().numpy()
    return batch


def apply_data_augmentation(ds: ray.data.Dataset, augment: AugmentConfig) -> ray.data.Dataset:
    """``ds`` with augmentation on Ray Data's CPU workers when ``augment.where == "data"``.

    Otherwise ``ds`` itself (``"worker"`` placement augments in :func:`iter_train_batches`).
    Images stay uint8 (augmented, then re-quantised) so transfers stay small. Unseeded:
    Ray Data does not tell a UDF which epoch it serves, so this placement is not
    reproducible; ``"worker"`` is.
    """
    if not (augment.enabled and augment.where == "data"):
        return ds
    return ds.map_batches(_augment_on_cpu, fn_kwargs={"cfg": augment}, batch_format="numpy",
                          batch_size=None)


# -------------------------------------------------------------------------- iteration


def tensor_columns(batch: pa.Table) -> dict[str, torch.Tensor]:
    """The numeric columns of ``batch`` (decoded rows, e.g. from :func:`open_split`) as
    writable CPU tensors; uint8 pixels stay uint8, string columns are left out."""
    out = {}
    for name in batch.column_names:
        col = batch[name]
        array = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
        values = (array.to_numpy() if isinstance(array, pa.ExtensionArray)
                  else array.to_numpy(zero_copy_only=False))
        if values.dtype == object:
            continue  # strings (passthrough columns) have no tensor form
        # Arrow memory is read-only; a copy (microseconds per batch) gives tensors
        # that callers may safely modify in place.
        writable = values.flags.writeable and values.flags.c_contiguous
        out[name] = torch.from_numpy(values if writable else np.array(values, order="C"))
    return out


class _TensorCollate(ArrowBatchCollateFn):
    """Arrow batch → dict of CPU tensors (:func:`tensor_columns`) in Ray's collate threads."""

    def __call__(self, batch: pa.Table) -> dict[str, torch.Tensor]:
        return tensor_columns(batch)


def _world_rank() -> int:
    try:
        return ray.train.get_context().get_world_rank()
    except RuntimeError:  # outside a Ray Train worker (tests, benchmarks): one process
        return 0


def _tensor_batches(shard: ray.data.DataIterator | ray.data.Dataset, *, batch_size: int,
                    device: torch.device, shuffle_buffer: int,
                    shuffle_seed: int | None, prefetch_batches: int
                    ) -> Iterable[dict[str, torch.Tensor]]:
    device = torch.device(device)
    return shard.iter_torch_batches(
        batch_size=batch_size, collate_fn=_TensorCollate(), device=device,
        pin_memory=device.type == "cuda", drop_last=False,
        prefetch_batches=prefetch_batches,
        local_shuffle_buffer_size=max(shuffle_buffer, batch_size) if shuffle_buffer else None,
        local_shuffle_seed=shuffle_seed if shuffle_buffer else None,
    )


def fetching_first(items: Iterator[T]) -> Iterator[T]:
    """``items``, its first item being fetched from now on in a daemon thread.

    Lets a new worker start its data pipeline (Ray Data schedules read tasks, fills the
    shuffle buffer) while it builds its model. The rest of ``items`` is read by the
    caller, after the first item; an error of the first fetch is raised there.
    """
    first: Future = Future()
    end = object()

    def fetch() -> None:
        try:
            first.set_result(next(items, end))
        except BaseException as exc:  # re-raised in the caller's thread by result()
            first.set_exception(exc)

    threading.Thread(target=fetch, name="ray_fer-first-batch", daemon=True).start()

    def rest() -> Iterator[T]:
        item = first.result()
        if item is end:
            return
        yield item
        yield from items

    return rest()


def _finish(batch: dict[str, torch.Tensor], images: torch.Tensor, channels_last: bool
            ) -> dict[str, torch.Tensor]:
    layout = torch.channels_last if channels_last else torch.contiguous_format
    batch["image"] = images.contiguous(memory_format=layout)
    return batch


#: What the iterators read: a worker's Ray Data shard, a Dataset, or its cached rows.
Source = ray.data.DataIterator | ray.data.Dataset | DeviceCache


def iter_train_batches(source: Source, *, batch_size: int,
                       device: torch.device, augment: AugmentConfig, seed: int, epoch: int,
                       channels_last: bool = False, drop_last: bool = False,
                       shuffle_buffer: int = 0, prefetch_batches: int = 4,
                       rank: int | None = None, recorder: CacheRecorder | None = None,
                       num_classes: int | None = None, soft_labels: bool = False
                       ) -> Iterator[dict[str, torch.Tensor]]:
    """One epoch of training batches from ``source`` on ``device``.

    ``source`` is ``ray.train.get_dataset_shard(name)``, a Dataset or a
    :class:`DeviceCache`. Yields ``image`` float (N, C, H, W) in [-1, 1] (augmented when
    ``augment.where == "worker"``), and ``label``, ``soft_label``, ``valence``,
    ``arousal``, ``row`` as they are in the dataset. From Ray Data, batches are collated
    from Arrow in Ray's prefetch threads, copied to ``device`` from pinned memory without
    blocking, and normalised there; ``shuffle_buffer`` > 0 mixes rows in a buffer of that
    many rows, and ``recorder`` keeps every row read (also those of a last partial batch
    that ``drop_last`` skips) for a cache. From a cache, rows come in a full permutation.
    Shuffle and augmentation draw from seeds of (``seed``, ``epoch``, ``rank`` (default:
    this worker's world rank)), so with a fixed input order the batches are identical run
    to run.

    When ``augment.mixing``, every batch also carries ``mix_target`` (N, ``num_classes``)
    float: its rows' target distributions (one-hot of ``label``, or ``soft_label`` with
    ``soft_labels``) mixed as its images are, unmixed (lam = 1) for a batch left as it is,
    so that compiled steps always see the same keys. ``label`` stays the row's own.
    """
    if augment.mixing and num_classes is None:
        raise ValueError("iter_train_batches: mixing (augment.mixup_alpha/cutmix_alpha) "
                         "needs num_classes")
    device = torch.device(device)
    rank = _world_rank() if rank is None else rank
    worker_seed = epoch_seed(seed, epoch, rank)
    generator = torch.Generator(device=device)
    generator.manual_seed(worker_seed)
    on_worker = augment.enabled and augment.where == "worker"
    rng = mix_rng(generator) if augment.mixing else None
    if isinstance(source, DeviceCache):
        raw = source.batches(batch_size, drop_last=drop_last, generator=generator)
    else:
        raw = _tensor_batches(source, batch_size=batch_size, device=device,
                              shuffle_buffer=shuffle_buffer, shuffle_seed=worker_seed % 2**32,
                              prefetch_batches=prefetch_batches)
        raw = recorder.record(raw) if recorder is not None else raw
    for batch in raw:
        if drop_last and len(batch["image"]) < batch_size:
            continue  # the last partial batch (kept by the recorder, never trained on)
        images = normalise(batch["image"])
        if on_worker:
            images = augment_batch(images, augment, generator)
        if rng is not None:
            soft = batch.get("soft_label") if soft_labels else None
            targets = class_distribution(batch["label"], soft, num_classes)
            mix = draw_mix(len(images), images.shape[-2], images.shape[-1], augment,
                           generator, rng)
            images, batch["mix_target"] = apply_mix(images, targets, mix)
        yield _finish(batch, images, channels_last)


def iter_eval_batches(source: Source, *, batch_size: int,
                      device: torch.device, channels_last: bool = False,
                      prefetch_batches: int = 4, recorder: CacheRecorder | None = None
                      ) -> Iterator[dict[str, torch.Tensor]]:
    """Evaluation batches from ``source``: like :func:`iter_train_batches`, no augmentation,
    no shuffling, every row (no ``drop_last``)."""
    if isinstance(source, DeviceCache):
        raw = source.batches(batch_size, drop_last=False)
    else:
        raw = _tensor_batches(source, batch_size=batch_size, device=device,
                              shuffle_buffer=0, shuffle_seed=None,
                              prefetch_batches=prefetch_batches)
        raw = recorder.record(raw) if recorder is not None else raw
    for batch in raw:
        yield _finish(batch, normalise(batch["image"]), channels_last)


# ------------------------------------------------------------------- worker splitting


class FullCoverageDataConfig(ray.train.DataConfig):
    """Ray Train's DataConfig, but splitting with ``streaming_split(equal=False)``.

    Ray 2.60's ``DataConfig.configure`` calls ``streaming_split(n, equal=True)``, which
    drops rows (up to ``n - 1`` per epoch) to give every worker exactly as many rows.
    Here no row is dropped: each worker receives whole blocks, greedily to the worker
    with the fewest rows so far, so shares differ by at most about one block.

    It keeps its own settings: the ones its base class holds are private to Ray.
    """

    def __init__(self, *, datasets_to_split: list[str] | str,
                 execution_options: ray.data.ExecutionOptions,
                 enable_shard_locality: bool = True) -> None:
        super().__init__(datasets_to_split=datasets_to_split,
                         execution_options=execution_options,
                         enable_shard_locality=enable_shard_locality)
        self.split_names = datasets_to_split
        self.options = execution_options
        self.shard_locality = enable_shard_locality

    def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
        output = [{} for _ in range(world_size)]
        split_names = set(datasets) if self.split_names == "all" else set(self.split_names)
        hints = worker_node_ids if self.shard_locality else None
        for name, ds in datasets.items():
            if ds.name is None:
                ds.set_name(name)
            ds = ds.copy(ds)
            # A copy per dataset: the options must not alias another dataset's or ours.
            ds.context.execution_options = copy.deepcopy(self.options)
            if name in split_names:
                for i, it in enumerate(ds.streaming_split(world_size, equal=False,
                                                          locality_hints=hints)):
                    output[i][name] = it
            else:
                for i in range(world_size):
                    output[i][name] = ds.iterator()
        return output


def read_in_order(ds: ray.data.Dataset) -> ray.data.Dataset:
    """``ds`` emitting its blocks in order, as :func:`data_config` has Ray Train read them,
    for one process that iterates it directly (a one-worker Tune trial)."""
    ds.context.execution_options.preserve_order = True
    return ds


def data_config(*, datasets_to_split: Sequence[str] | str = "all",
                preserve_order: bool = True) -> ray.train.DataConfig:
    """How the trainer splits datasets across workers: disjoint, complete, no row dropped.

    Each worker's ``get_dataset_shard(name)`` yields a disjoint part of the dataset, and
    together the workers see every row exactly once per epoch, for ``train`` and ``val``
    alike. Consequence for DDP: workers may get a different number of rows, hence of
    batches (at most about one block, :data:`BLOCK_BYTES`, apart), so the training loop
    must not assume equal step counts: wrap the epoch in
    ``torch.distributed.algorithms.Join([model])`` (DDP supports it) or all-reduce the
    step count and stop collectives together; evaluation must all-reduce sums (correct,
    count), never average per-worker means. ``open_split(min_blocks=...)`` cuts a small
    split into enough blocks for each worker to get rows; with more workers than blocks,
    some get none. Every worker must still iterate every split it was given
    once per epoch (to the end or not at all, like the others): an epoch of a split starts
    only when all workers ask for it. On a small node, give the train workers fewer CPUs
    than the node has (e.g. ``resources_per_worker={"CPU": 0.5}`` on 2 CPUs), else Ray
    Data's read tasks get none and training waits forever.

    ``preserve_order=True`` (default) makes Ray Data emit blocks in order and disables
    locality-based dispatch, so which rows each worker gets, and in which order, is the
    same run to run for a fixed number of workers (with ``open_split(shuffle_seed=...)``
    and the seeded ``shuffle_buffer``, batches are reproducible). Set it to False
    for throughput on multi-node clusters; then coverage still holds, the assignment
    does not.
    """
    from ray.data import ExecutionOptions

    to_split = "all" if datasets_to_split == "all" else list(datasets_to_split)
    base = ray.data.DataContext.get_current().execution_options
    options = ExecutionOptions(resource_limits=base.resource_limits,
                               exclude_resources=base.exclude_resources,
                               preserve_order=preserve_order)
    return FullCoverageDataConfig(datasets_to_split=to_split, execution_options=options)
