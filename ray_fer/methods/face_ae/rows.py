"""The shard rows the face autoencoder's stages read beside the stream: stage 1's pair
banks and the face its V/A grid is drawn from, and stage 2's under- or over-sampled
training rows. Read with pyarrow from the shards the run streams (no Ray)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ray_fer.config import Config, ConfigError
from ray_fer.data.info import DataInfo
from ray_fer.data.shards import ROW_ID_STRIDE, decode_images, read_manifest, row_mask
from ray_fer.methods.face_ae.steps import PairBank, RegressOptions, resample_counts
from ray_fer.models.layers.inputs import fit_images
from ray_fer.storage import resolve

Split = Literal["train", "val"]
#: Faces converted per chunk when a pair bank is built (bounds the float copy's memory).
_CHUNK = 4096


def _selection(cfg: Config, split: Split) -> dict:
    """The loop's choice of training or validation rows: splits, and folds when
    ``data.fold`` is set (keyword arguments of the shard reader's row mask)."""
    fold = cfg.data.fold
    if split == "train":
        return {"splits": cfg.data.train_splits, "folds": None,
                "exclude_folds": None if fold is None else [fold]}
    if fold is None:
        return {"splits": [cfg.data.val_split], "folds": None, "exclude_folds": None}
    return {"splits": cfg.data.train_splits, "folds": [fold], "exclude_folds": None}


def selected_rows(cfg: Config, columns: list[str], split: Split) -> tuple[pa.Table, np.ndarray]:
    """``columns`` of the run's training or validation rows and their stream row ids, in
    row-id order."""
    loc = resolve(cfg.data.uri, cfg.data.endpoint)
    manifest = read_manifest(loc)
    select = _selection(cfg, split)
    tables, ids = [], []
    for index, shard in enumerate(manifest.shards):
        table = pq.read_table(loc.join(shard.file), columns=[*columns, "split", "fold"],
                              filesystem=loc.fs)
        keep = np.flatnonzero(row_mask(table, **select))
        tables.append(table.select(columns).take(keep))
        ids.append(index * ROW_ID_STRIDE + keep)
    return pa.concat_tables(tables), np.concatenate(ids).astype(np.int64)


def _faces(column: pa.ChunkedArray, shape: list[int], size: int, channels: int) -> torch.Tensor:
    """Stored faces → uint8 (N, channels, size, size), converted in chunks."""
    pixels = torch.from_numpy(decode_images(column, shape))
    out = [(fit_images(part.permute(0, 3, 1, 2).float() / 255, size, channels) * 255)
           .round_().clamp_(0, 255).to(torch.uint8) for part in pixels.split(_CHUNK)]
    return torch.cat(out) if out else torch.empty(0, channels, size, size, dtype=torch.uint8)


def pair_bank(cfg: Config, info: DataInfo, split: Split) -> PairBank:
    """The :class:`PairBank` of the run's ``split`` rows at the model's input shape."""
    table, ids = selected_rows(cfg, ["image", "subject_id", "valence", "arousal"], split)
    shape = read_manifest(resolve(cfg.data.uri, cfg.data.endpoint)).image_shape
    bank = PairBank(ids, _faces(table["image"], shape, info.image_size, info.channels),
                    table["subject_id"].to_numpy(zero_copy_only=False),
                    table["valence"].to_numpy(), table["arousal"].to_numpy(), cfg.train.seed)
    if len(bank) == 0:
        raise ConfigError(
            f"config key 'data.uri': the {split} rows of {cfg.data.uri} hold no pair of one "
            "person (subject_id) with two different valence/arousal values; stage 1 of "
            "face_ae needs them (e.g. afew-va, taiwanese, jaffe or the synthetic set)")
    return bank


def first_face(cfg: Config, info: DataInfo) -> torch.Tensor:
    """The first validation face (C, S, S) in [0, 1] at the model's input shape, reading
    one row group at a time (not the whole image column)."""
    loc = resolve(cfg.data.uri, cfg.data.endpoint)
    manifest = read_manifest(loc)
    select = _selection(cfg, "val")
    for shard in manifest.shards:
        pf = pq.ParquetFile(loc.fs.open_input_file(loc.join(shard.file)))
        for group in range(pf.num_row_groups):
            keep = np.flatnonzero(row_mask(pf.read_row_group(group, columns=["split", "fold"]),
                                            **select))
            if keep.size:
                image = pf.read_row_group(group, columns=["image"])["image"].take(keep[:1])
                return _faces(image, manifest.image_shape, info.image_size,
                              info.channels)[0].float() / 255
    raise ConfigError(f"{loc.uri}: no validation row to render the V/A grid from")


def repeat_rows(batch: pa.Table, ids: np.ndarray, counts: np.ndarray) -> pa.Table:
    """``batch`` with each row repeated ``counts`` times (0: dropped), rows matched by
    their ``row`` id to the sorted ``ids``."""
    rows = batch["row"].to_numpy()
    at = np.minimum(np.searchsorted(ids, rows), len(ids) - 1)
    times = np.where(ids[at] == rows, counts[at], 0)
    return batch.take(np.repeat(np.arange(len(rows)), times))


def resampled(cfg: Config, options: RegressOptions, train):
    """The training Dataset ``train`` under-/over-sampled over the V/A grid as
    ``options.balance`` says (other balances: as it is)."""
    if options.balance not in ("under", "over"):
        return train
    table, ids = selected_rows(cfg, ["valence", "arousal"], "train")
    counts = resample_counts(table["valence"].to_numpy(), table["arousal"].to_numpy(),
                             options.balance, options.threshold, options.grid_cells,
                             cfg.train.seed)
    keep = counts > 0
    return train.map_batches(repeat_rows, fn_kwargs={"ids": ids[keep], "counts": counts[keep]},
                             batch_format="pyarrow", batch_size=None)
