"""Face shards as a Ray Dataset: one read task per shard, rows filtered and decoded there.

Kept free of torch so Ray Data's read workers start fast (they import only this module,
pyarrow and numpy). Decoding happens in the read task: the ``fixed_size_binary`` pixel
column becomes an (N, H, W, C) uint8 array with ``np.frombuffer`` and Ray's tensor column
without copying, so it costs the same on a CPU worker as it would in the train worker,
and the dataset stays usable (``take_batch``, ``map_batches``) without knowing the
shard format.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray.data
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask
from ray.data.extensions import ArrowTensorArray

from ray_fer.data.execution import execution_index
from ray_fer.data.shards import (
    ROW_ID_STRIDE,
    Manifest,
    ShardError,
    check_shard_data,
    decode_images,
    read_manifest,
    row_mask,
)
from ray_fer.storage import resolve, s3_endpoint

#: Columns every dataset from :func:`open_split` can produce, decoded from the stored ones.
DECODED_COLUMNS = ("image", "label", "soft_label", "valence", "arousal", "row")
#: Stored string/int columns that can be passed through unchanged.
PASSTHROUGH_COLUMNS = ("label_name", "subject_id", "split", "fold", "dataset", "source_file")
#: Bytes per Ray block: small blocks keep the split across workers balanced (a worker
#: gets whole blocks) at a negligible per-block cost.
BLOCK_BYTES = 2 * 2**20


def _soft_labels(column: pa.ChunkedArray, labels: np.ndarray, k: int) -> np.ndarray:
    """(N, K) float32 soft labels; rows stored without one get the one-hot of their label.

    "Without one" is a null list or a list of NaNs: pyarrow 25 cannot read null entries of
    a fixed-size list column back from Parquet, so writers may store NaNs instead.
    """
    col = column.combine_chunks()
    n = len(col)
    width = col.type.list_size
    values = col.values.to_numpy(zero_copy_only=False)
    soft = np.array(values[col.offset * width:(col.offset + n) * width], dtype=np.float32)
    soft = soft.reshape(n, width)
    missing = col.is_null().to_numpy(zero_copy_only=False) | np.isnan(soft).all(axis=1)
    if missing.any():
        one_hot = np.zeros((int(missing.sum()), width), np.float32)
        lab = labels[missing]
        ok = (lab >= 0) & (lab < min(k, width))
        one_hot[np.flatnonzero(ok), lab[ok]] = 1.0
        soft[missing] = one_hot
    return soft


def decode_table(table: pa.Table, row_ids: np.ndarray, image_shape: Sequence[int],
                 num_classes: int, columns: Sequence[str]) -> pa.Table:
    """Stored shard rows → the decoded ``columns`` (see :data:`DECODED_COLUMNS`)."""
    out: dict[str, pa.Array] = {}
    labels = table["label"].to_numpy().astype(np.int64)
    for name in columns:
        if name == "image":
            out[name] = ArrowTensorArray.from_numpy(decode_images(table["image"], image_shape))
        elif name == "label":
            out[name] = pa.array(labels)
        elif name == "soft_label":
            out[name] = ArrowTensorArray.from_numpy(
                _soft_labels(table["soft_label"], labels, num_classes))
        elif name in ("valence", "arousal"):
            out[name] = pa.array(table[name].to_numpy().astype(np.float32, copy=False))
        elif name == "row":
            out[name] = pa.array(row_ids.astype(np.int64, copy=False))
        else:
            out[name] = table[name].combine_chunks()
    return pa.table(out)


def _stored_columns(columns: Sequence[str]) -> list[str]:
    need = {"label"}
    for name in columns:
        if name in PASSTHROUGH_COLUMNS or name in ("image", "soft_label", "valence", "arousal"):
            need.add(name)
    return sorted(need)


@dataclass(frozen=True)
class _ShardRead:
    """Everything a read task needs; plain values so it pickles without credentials."""

    uri: str
    endpoint: str | None
    shard_index: int
    file: str
    #: The manifest's sha256 and size of the file: a damaged shard fails its read.
    sha256: str
    bytes: int
    image_shape: tuple[int, int, int]
    num_classes: int
    columns: tuple[str, ...]
    splits: tuple[str, ...] | None
    folds: tuple[int, ...] | None
    exclude_folds: tuple[int, ...] | None
    #: (shuffle seed, epoch): read row groups in this seeded order; None = as stored.
    order_seed: tuple[int, int] | None = None

    def __call__(self) -> Iterator[pa.Table]:
        loc = resolve(self.uri, self.endpoint)
        path = loc.join(self.file)
        filtered = self.splits is not None or self.folds is not None or (
            self.exclude_folds is not None)
        try:
            # One whole-file read (a single GET on S3), checked against the manifest before
            # Parquet sees it: a flipped pixel bit would otherwise decode silently.
            with loc.fs.open_input_stream(path) as f:
                data = f.read()
            check_shard_data(loc.child_uri(self.file), data, self.sha256, self.bytes)
            pf = pq.ParquetFile(pa.BufferReader(data))
        except (OSError, pa.ArrowInvalid) as exc:
            raise ShardError(f"{loc.child_uri(self.file)}: listed in the manifest but "
                             f"unreadable ({exc})") from exc
        width = pf.schema_arrow.field("image").type.byte_width
        if width != math.prod(self.image_shape):
            raise ShardError(f"{loc.child_uri(self.file)}: image column holds {width} bytes "
                             f"per face, the manifest's shape {list(self.image_shape)} needs "
                             f"{math.prod(self.image_shape)}. Re-run ingest.")
        stored = _stored_columns(self.columns)
        starts = np.cumsum([0] + [pf.metadata.row_group(g).num_rows
                                  for g in range(pf.num_row_groups)])
        groups = range(pf.num_row_groups)
        if self.order_seed is not None:
            groups = np.random.default_rng([*self.order_seed, self.shard_index]).permutation(
                pf.num_row_groups)
        for group in groups:
            n = int(starts[group + 1] - starts[group])
            index = np.arange(starts[group], starts[group] + n)
            if filtered:
                keys = pf.read_row_group(group, columns=["split", "fold"])
                keep = np.flatnonzero(row_mask(keys, self.splits, self.folds,
                                                self.exclude_folds))
                index = index[keep]
            if not index.size:
                continue
            table = pf.read_row_group(group, columns=stored)
            if filtered and index.size < n:
                table = table.take(keep)
            # Ray slices this into blocks of the dataset's target_max_block_size.
            yield decode_table(table, self.shard_index * ROW_ID_STRIDE + index,
                               self.image_shape, self.num_classes, self.columns)


class FaceShardDatasource(Datasource):
    """One Ray read task per shard listed in a manifest; rows filtered and decoded there.

    A custom datasource rather than ``read_parquet`` because each row's id needs its
    position in its shard, which ``read_parquet`` does not expose.
    """

    def __init__(self, reads: list[_ShardRead], rows: list[int], row_bytes: int,
                 shuffle_seed: int | None) -> None:
        super().__init__()
        self._reads = reads
        self._rows = rows
        self._row_bytes = row_bytes
        self._shuffle_seed = shuffle_seed

    def estimate_inmemory_data_size(self) -> int:
        return sum(self._rows) * self._row_bytes

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: Any = None) -> list[ReadTask]:
        tasks = list(zip(self._reads, self._rows, strict=True))
        if self._shuffle_seed is not None:
            # Ray bumps the execution index after each complete execution (each epoch).
            epoch = execution_index(data_context)
            order = np.random.default_rng([self._shuffle_seed, epoch]).permutation(len(tasks))
            tasks = [(replace(tasks[i][0], order_seed=(self._shuffle_seed, epoch)),
                      tasks[i][1]) for i in order]
        return [
            ReadTask(read, BlockMetadata(num_rows=None, size_bytes=rows * self._row_bytes,
                                         input_files=[read.file], exec_stats=None),
                     per_task_row_limit=per_task_row_limit)
            for read, rows in tasks
        ]


def _check_selection(manifest: Manifest, where: str, splits: Sequence[str] | None,
                     folds: Sequence[int] | None, exclude_folds: Sequence[int] | None,
                     columns: Sequence[str]) -> None:
    known = set(DECODED_COLUMNS) | set(PASSTHROUGH_COLUMNS)
    unknown = [c for c in columns if c not in known]
    if unknown:
        raise ValueError(f"unknown column(s) {unknown}; choose from {sorted(known)}")
    if splits is not None:
        missing = [s for s in splits if s not in manifest.counts]
        if missing:
            raise ShardError(f"{where}: no rows in split(s) {missing}; this prefix has "
                             f"{sorted(manifest.counts)}")
    if folds is not None and exclude_folds is not None and set(folds) & set(exclude_folds):
        raise ValueError(f"folds {sorted(folds)} and exclude_folds {sorted(exclude_folds)} "
                         "overlap")


def open_split(uri: str, *, splits: Sequence[str] | None = None,
               folds: Sequence[int] | None = None, exclude_folds: Sequence[int] | None = None,
               endpoint: str | None = None, columns: Sequence[str] | None = None,
               shuffle_seed: int | None = None, preserve_order: bool = True,
               block_bytes: int = BLOCK_BYTES, min_blocks: int = 1
               ) -> tuple[ray.data.Dataset, Manifest]:
    """The rows of ``uri``'s shards in ``splits`` (and ``folds``, minus ``exclude_folds``).

    Refuses a prefix without a valid manifest and reads only the shards it lists. Columns
    (default :data:`DECODED_COLUMNS`): ``image`` uint8 (N, H, W, C), ``label`` int64,
    ``soft_label`` float32 (N, K) (one-hot of ``label`` where a row has none),
    ``valence``/``arousal`` float32 (NaN when absent), ``row`` int64 = shard index *
    2**32 + row index in the shard (stable across runs and selections); stored columns
    of :data:`PASSTHROUGH_COLUMNS` may be asked for too.

    Blocks hold about ``block_bytes``, less where the selection would make fewer than
    ``min_blocks`` of them (at least a row each): DDP workers receive whole blocks, so a
    small split (CK+: one 2 MiB block) must be cut finer for every worker to get rows.
    Row order is shard order; with ``shuffle_seed``
    (for training splits) every epoch reads shards and their row groups in a new order
    drawn from (``shuffle_seed``, epoch), streaming (no epoch-wide materialisation); rows
    inside a row group keep their order (mix them with
    ``iter_train_batches(shuffle_buffer=...)``). ``preserve_order`` makes Ray Data emit
    blocks in that order whatever finishes first, so a fixed seed gives a fixed stream.
    """
    loc = resolve(uri, endpoint)
    manifest = read_manifest(loc)
    columns = tuple(columns or DECODED_COLUMNS)
    _check_selection(manifest, loc.uri, splits, folds, exclude_folds, columns)
    shape = tuple(int(x) for x in manifest.image_shape)
    row_bytes = math.prod(shape)
    reads = [
        _ShardRead(uri=loc.uri, endpoint=s3_endpoint(endpoint) if loc.is_s3 else None,
                   shard_index=i, file=s.file, sha256=s.sha256, bytes=s.bytes,
                   image_shape=shape,
                   num_classes=manifest.num_classes, columns=columns,
                   splits=tuple(splits) if splits is not None else None,
                   folds=tuple(int(f) for f in folds) if folds is not None else None,
                   exclude_folds=(tuple(int(f) for f in exclude_folds)
                                  if exclude_folds is not None else None))
        for i, s in enumerate(manifest.shards)
    ]
    source = FaceShardDatasource(reads, [s.rows for s in manifest.shards], row_bytes,
                                 None if shuffle_seed is None else int(shuffle_seed))
    ds = ray.data.read_datasource(source, override_num_blocks=len(reads))
    ds.context.execution_options.preserve_order = preserve_order
    rows = manifest.num_rows if splits is None else manifest.rows_in(splits)
    ds.context.target_max_block_size = max(row_bytes, min(int(block_bytes),
                                                          rows * row_bytes // min_blocks))
    return ds, manifest


