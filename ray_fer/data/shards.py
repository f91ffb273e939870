"""The on-disk contract between ingestion and training: Parquet face shards + manifest.

A shard prefix (local folder or ``s3://bucket/prefix``) holds ``shard-NNNNN.parquet`` files,
one row per face, and ``manifest.json``, written last. A prefix without a valid manifest is
refused by every reader, so a failed or interrupted ingest is never mistaken for data.

Pixels are one ``fixed_size_binary(H*W*C)`` column (shape in the schema metadata and the
manifest): Arrow hands the whole column to numpy as one buffer, so decoding a batch is a
``np.frombuffer(...).reshape`` with no per-row Python objects.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ray_fer.errors import UserError
from ray_fer.storage import Location, StorageError, resolve, storage_error

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
SHARD_PATTERN = "shard-{:05d}.parquet"
#: Target uncompressed bytes of pixels per shard: big enough for efficient S3 reads,
#: small enough that a writer holds only one shard in memory.
TARGET_SHARD_BYTES = 64 * 2**20
#: Row ids are ``shard index * ROW_ID_STRIDE + row index in the shard``.
ROW_ID_STRIDE = 2**32


class ShardError(UserError, RuntimeError):
    """A shard prefix is missing, incomplete or corrupt; the message names the file."""


def image_shape_of(size: int, channels: int) -> tuple[int, int, int]:
    """Stored image shape (H, W, C) for a square ``size`` and 1 or 3 ``channels``."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (gray) or 3 (RGB), got {channels}")
    return (size, size, channels)


def shard_schema(image_shape: Sequence[int], num_classes: int) -> pa.Schema:
    """Arrow schema of a shard for faces of ``image_shape`` and ``num_classes`` labels."""
    h, w, c = image_shape
    return pa.schema(
        [
            pa.field("image", pa.binary(h * w * c), nullable=False),
            pa.field("label", pa.int16(), nullable=False),
            pa.field("label_name", pa.string(), nullable=False),
            pa.field("soft_label", pa.list_(pa.float32(), max(num_classes, 1))),
            pa.field("valence", pa.float32(), nullable=False),
            pa.field("arousal", pa.float32(), nullable=False),
            pa.field("subject_id", pa.string(), nullable=False),
            pa.field("split", pa.string(), nullable=False),
            pa.field("fold", pa.int16(), nullable=False),
            pa.field("dataset", pa.string(), nullable=False),
            pa.field("source_file", pa.string(), nullable=False),
        ],
        metadata={
            "ray_fer.schema_version": str(SCHEMA_VERSION),
            "ray_fer.image_shape": json.dumps(list(image_shape)),
        },
    )


@dataclass
class FaceRow:
    """One preprocessed face ready to be written (pixels already at the stored shape)."""

    image: np.ndarray
    label: int
    label_name: str
    soft_label: Sequence[float] | None
    valence: float
    arousal: float
    subject_id: str
    split: str
    fold: int
    dataset: str
    source_file: str


@dataclass
class ShardInfo:
    file: str
    rows: int
    sha256: str
    bytes: int


@dataclass
class Manifest:
    """What a shard prefix holds. Written last; its presence means the prefix is complete."""

    dataset: str
    format: str
    class_names: list[str]
    image_shape: list[int]
    shards: list[ShardInfo]
    counts: dict[str, dict[str, int]]
    split_source: dict[str, str] = field(default_factory=dict)
    folds: dict = field(default_factory=dict)
    face_detection: dict = field(default_factory=dict)
    skipped: list[dict] = field(default_factory=list)
    targets: dict = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def num_rows(self) -> int:
        return sum(s.rows for s in self.shards)

    def rows_in(self, splits: Sequence[str]) -> int:
        """Rows of ``splits`` (0 for a split the prefix lacks)."""
        return sum(sum(self.counts.get(s, {}).values()) for s in splits)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str) -> Manifest:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ShardError(f"{where}: manifest is not valid JSON ({exc})") from exc
        if not isinstance(raw, dict) or raw.get("schema_version") != SCHEMA_VERSION:
            raise ShardError(
                f"{where}: unsupported manifest (schema_version "
                f"{raw.get('schema_version') if isinstance(raw, dict) else '?'}, "
                f"expected {SCHEMA_VERSION}); re-run `python -m ray_fer.ingest`"
            )
        try:
            raw["shards"] = [ShardInfo(**s) for s in raw["shards"]]
            return cls(**raw)
        except (KeyError, TypeError) as exc:
            raise ShardError(f"{where}: manifest is missing or has bad fields ({exc})") from exc


def _ensure_dir(loc: Location) -> None:
    if not loc.is_s3:
        loc.fs.create_dir(loc.path, recursive=True)


@contextlib.contextmanager
def _storage(loc: Location, name: str, action: str) -> Iterator[None]:
    """Turn an I/O failure on ``name`` into a StorageError naming it (and the endpoint)."""
    try:
        yield
    except OSError as exc:
        where = f" at endpoint {loc.endpoint}" if loc.endpoint else ""
        raise StorageError(f"{loc.child_uri(name)}{where}: cannot {action} ({exc})") from exc


def _write_bytes(loc: Location, name: str, data: bytes) -> None:
    with _storage(loc, name, "write"), loc.fs.open_output_stream(loc.join(name)) as out:
        out.write(data)


def _exists(loc: Location, name: str) -> bool:
    with _storage(loc, name, "check"):
        return loc.fs.get_file_info(loc.join(name)).type == pafs.FileType.File


def _delete(loc: Location, name: str) -> None:
    if _exists(loc, name):
        with _storage(loc, name, "delete"):
            loc.fs.delete_file(loc.join(name))


def invalidate(loc: Location) -> None:
    """Remove ``loc``'s manifest, so readers refuse the prefix until a new one is written."""
    _delete(loc, MANIFEST)


def list_shard_files(loc: Location) -> list[str]:
    """Names of ``shard-*.parquet`` files directly under ``loc`` (sorted)."""
    selector = pafs.FileSelector(loc.path, allow_not_found=True, recursive=False)
    names = [i.base_name for i in loc.fs.get_file_info(selector) if i.type == pafs.FileType.File]
    return sorted(n for n in names if n.startswith("shard-") and n.endswith(".parquet"))


class ShardWriter:
    """Streams rows into size-bounded Parquet shards under ``loc``; ``finish`` writes the manifest.

    Only one shard's rows are in memory at a time. Opening a writer removes an existing
    manifest first, so a run that fails part-way leaves a prefix that readers refuse;
    ``finish`` removes shards a previous, larger run left behind, then writes the manifest.
    Shard names and bytes depend only on the rows, so re-ingesting the same source is
    idempotent (same files, same hashes).
    """

    def __init__(self, loc: Location, image_shape: Sequence[int], class_names: Sequence[str],
                 rows_per_shard: int | None = None) -> None:
        self.loc = loc
        self.image_shape = tuple(int(x) for x in image_shape)
        self.class_names = list(class_names)
        self.schema = shard_schema(self.image_shape, len(self.class_names))
        row_bytes = int(np.prod(self.image_shape))
        self.rows_per_shard = rows_per_shard or max(256, TARGET_SHARD_BYTES // row_bytes)
        self.shards: list[ShardInfo] = []
        self.counts: dict[str, Counter] = {}
        self._rows: list[FaceRow] = []
        _ensure_dir(loc)
        invalidate(loc)

    def add(self, row: FaceRow) -> None:
        """Append one face; flushes a shard when it is full."""
        if row.image.dtype != np.uint8 or row.image.size != np.prod(self.image_shape):
            raise ValueError(
                f"{row.source_file}: image {row.image.shape} {row.image.dtype} does not match "
                f"the shard shape {self.image_shape} uint8"
            )
        for name in ("label_name", "subject_id", "split", "dataset", "source_file"):
            try:
                getattr(row, name).encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate: Arrow would fail on it later
                raise ValueError(f"{row.source_file!r}: {name} {getattr(row, name)!r} is not "
                                 "valid UTF-8 text") from None
        self._rows.append(row)
        self.counts.setdefault(row.split, Counter())[row.label_name] += 1
        if len(self._rows) >= self.rows_per_shard:
            self._flush()

    def _flush(self) -> None:
        if not self._rows:
            return
        rows, self._rows = self._rows, []
        k = len(self.class_names) or 1
        # "No soft label" is stored as NaNs, not null: older pyarrow releases (25.x) cannot
        # read null entries of a fixed-size-list column back from Parquet.
        soft = [
            [math.nan] * k if r.soft_label is None else [float(x) for x in r.soft_label]
            for r in rows
        ]
        for r, s in zip(rows, soft, strict=True):
            if s is not None and len(s) != k:
                raise ValueError(f"{r.source_file}: soft label has {len(s)} values, expected {k}")
        table = pa.table(
            {
                "image": _image_array(rows, self.schema.field("image").type),
                "label": pa.array([r.label for r in rows], pa.int16()),
                "label_name": [r.label_name for r in rows],
                "soft_label": pa.array(soft, self.schema.field("soft_label").type),
                "valence": pa.array([r.valence for r in rows], pa.float32()),
                "arousal": pa.array([r.arousal for r in rows], pa.float32()),
                "subject_id": [r.subject_id for r in rows],
                "split": [r.split for r in rows],
                "fold": pa.array([r.fold for r in rows], pa.int16()),
                "dataset": [r.dataset for r in rows],
                "source_file": [r.source_file for r in rows],
            },
            schema=self.schema,
        )
        buf = io.BytesIO()
        # Pixels barely compress with zstd/snappy but cost CPU to decode; leave them plain.
        pq.write_table(table, buf, compression={"image": "none"} | {
            n: "zstd" for n in self.schema.names if n != "image"},
            use_dictionary=["label_name", "split", "dataset", "subject_id"],
            row_group_size=min(len(rows), 4096))
        data = buf.getvalue()
        name = SHARD_PATTERN.format(len(self.shards))
        _write_bytes(self.loc, name, data)
        self.shards.append(ShardInfo(name, len(rows), hashlib.sha256(data).hexdigest(), len(data)))

    def finish(self, *, dataset: str, format: str, split_source: dict[str, str] | None = None,
               folds: dict | None = None, face_detection: dict | None = None,
               skipped: list[dict] | None = None, targets: dict | None = None) -> Manifest:
        """Flush the last shard, drop stale shards, write ``manifest.json``; return it."""
        self._flush()
        if not self.shards:
            raise ShardError(f"{self.loc.uri}: no faces to write (every input was skipped)")
        keep = {s.file for s in self.shards}
        for stale in list_shard_files(self.loc):
            if stale not in keep:
                self.loc.fs.delete_file(self.loc.join(stale))
        manifest = Manifest(
            dataset=dataset, format=format, class_names=self.class_names,
            image_shape=list(self.image_shape), shards=self.shards,
            counts={s: dict(sorted(c.items())) for s, c in sorted(self.counts.items())},
            split_source=split_source or {}, folds=folds or {},
            face_detection=face_detection or {}, skipped=skipped or [], targets=targets or {},
        )
        _write_bytes(self.loc, MANIFEST, manifest.to_json().encode())
        return manifest


def _image_array(rows: Sequence[FaceRow], image_type: pa.DataType) -> pa.Array:
    """The rows' pixels as one fixed-size binary array built from one contiguous buffer."""
    pixels = np.stack([r.image.reshape(-1) for r in rows])
    return pa.Array.from_buffers(image_type, len(rows), [None, pa.py_buffer(pixels)])


def read_manifest(loc: Location) -> Manifest:
    """Load and validate the manifest of ``loc``; refuse a prefix without one."""
    where = loc.child_uri(MANIFEST)
    try:
        with loc.fs.open_input_stream(loc.join(MANIFEST)) as f:
            text = f.read().decode()
    except FileNotFoundError as exc:
        raise ShardError(
            f"{where} not found: {loc.uri} is not a complete shard prefix (ingest may have "
            "failed part-way). Run `python -m ray_fer.ingest ... --out " + loc.uri + "` first."
        ) from exc
    except OSError as exc:
        raise storage_error(loc, exc, "read") from exc
    manifest = Manifest.from_json(text, where)
    if not manifest.shards:
        raise ShardError(f"{where}: lists no shards")
    return manifest


def verify_shards(loc: Location, manifest: Manifest) -> None:
    """Check every shard's size and sha256 against the manifest; the error names the shard."""
    for s in manifest.shards:
        try:
            with loc.fs.open_input_stream(loc.join(s.file)) as f:
                data = f.read()
        except (FileNotFoundError, OSError) as exc:
            raise ShardError(f"{loc.child_uri(s.file)}: listed in the manifest but unreadable "
                             f"({exc})") from exc
        check_shard_data(loc.child_uri(s.file), data, s.sha256, s.bytes)


def check_shard_files(loc: Location, manifest: Manifest) -> None:
    """ShardError naming the first shard of the manifest that is missing or not of its
    recorded size (truncated, replaced). Cheap: file sizes only, no data read, so a
    driver checks it before Ray starts; a damaged byte is caught by the read itself
    (:func:`check_shard_data`)."""
    try:
        infos = loc.fs.get_file_info([loc.join(s.file) for s in manifest.shards])
    except OSError as exc:
        raise ShardError(f"{loc.uri}: cannot list the shards ({exc})") from exc
    for shard, info in zip(manifest.shards, infos, strict=True):
        if info.type != pafs.FileType.File:
            raise ShardError(f"{loc.child_uri(shard.file)}: listed in the manifest but "
                             "missing. Re-run ingest.")
        if info.size != shard.bytes:
            raise ShardError(f"{loc.child_uri(shard.file)}: {info.size} bytes, the manifest "
                             f"says {shard.bytes} (truncated or replaced). Re-run ingest.")


def check_shard_data(uri: str, data: bytes, sha256: str, size: int) -> None:
    """Raise ShardError naming ``uri`` unless ``data`` has the manifest's size and sha256."""
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != size or digest != sha256:
        raise ShardError(f"{uri}: corrupt (sha256 {digest[:12]}…, {len(data)} bytes; manifest "
                         f"says {sha256[:12]}…, {size} bytes). Re-run ingest.")


def decode_images(column: pa.Array | pa.ChunkedArray, image_shape: Sequence[int]) -> np.ndarray:
    """The ``image`` column as one uint8 array (N, H, W, C), without per-row copies."""
    if isinstance(column, pa.ChunkedArray):
        # combine_chunks copies even a single chunk; take that chunk as it is.
        column = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    n = len(column)
    h, w, c = image_shape
    width = h * w * c
    # A slice of a fixed-size binary array shares its parent's buffer from ``offset`` on.
    flat = np.frombuffer(column.buffers()[1], dtype=np.uint8, count=n * width,
                         offset=column.offset * width)
    return flat.reshape(n, h, w, c)


def read_columns(loc: Location, manifest: Manifest, columns: Sequence[str]) -> pa.Table:
    """The given (non-pixel) columns of every shard: Parquet reads only those columns."""
    return pa.concat_tables([
        pq.read_table(loc.join(s.file), columns=list(columns), filesystem=loc.fs)
        for s in manifest.shards
    ])


def read_split_faces(uri: str, split: str, *, per_class: int, endpoint: str | None = None
                     ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Up to ``per_class`` faces of each class of ``split`` in shard order:
    (uint8 (n, H, W, C), labels (n,), class names). Reads shard by shard, no Ray."""
    loc = resolve(uri, endpoint)
    manifest = read_manifest(loc)
    if split not in manifest.counts:
        raise ValueError(f"{loc.uri} has no split {split!r} (it has "
                         f"{', '.join(sorted(manifest.counts))})")
    k = manifest.num_classes
    taken = np.zeros(k, int)
    faces, labels = [], []
    for shard in manifest.shards:
        if (taken >= per_class).all():
            break
        table = pq.read_table(loc.join(shard.file), columns=["image", "label", "split"],
                              filesystem=loc.fs)
        table = table.filter(pc.equal(table["split"], split))
        shard_labels = table["label"].to_numpy().astype(np.int64)
        keep = []
        for row, label in enumerate(shard_labels):
            if 0 <= label < k and taken[label] < per_class:
                taken[label] += 1
                keep.append(row)
        if keep:
            images = decode_images(table["image"], manifest.image_shape)
            faces.append(images[keep])
            labels.append(shard_labels[keep])
    if not faces:
        raise ValueError(f"{loc.uri}: split {split!r} has no labelled rows")
    return np.concatenate(faces), np.concatenate(labels), list(manifest.class_names)


def row_mask(table: pa.Table, splits: Sequence[str] | None, folds: Sequence[int] | None,
             exclude_folds: Sequence[int] | None) -> np.ndarray:
    """Which rows of ``table`` (with ``split`` and ``fold`` columns) a selection keeps."""
    mask = np.ones(table.num_rows, bool)
    if splits is not None:
        mask &= pc.is_in(table["split"], pa.array(list(splits), pa.string())).to_numpy(
            zero_copy_only=False)
    if folds is not None or exclude_folds is not None:
        fold = table["fold"].to_numpy()
        if folds is not None:
            mask &= np.isin(fold, list(folds))
        if exclude_folds is not None:
            mask &= ~np.isin(fold, list(exclude_folds))
    return mask
