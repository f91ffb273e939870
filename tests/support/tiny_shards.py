"""A tiny learnable shard set for fast training tests (no real pixels, no ingest).

Four classes, each brightening one region of a noisy 48×48 gray image (top half, bottom
half, centre, both sides), so a small CNN separates them within a few epochs; every
pattern is its own mirror image, so horizontal-flip augmentation keeps labels true. Rows
carry subject ids, and train rows 4 folds recorded in the manifest, like ingested data;
they are written in class-mixed order over several shards.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ray_fer.data.shards import FaceRow, ShardWriter
from ray_fer.storage import resolve

CLASSES = ("top", "bottom", "centre", "sides")
FOLDS = 4


def write_tiny_shards(path: Path, *, train: int = 256, val: int = 64, size: int = 48,
                      seed: int = 0) -> str:
    """Write the set under ``path``; returns its URI."""
    rng = np.random.default_rng(seed)
    writer = ShardWriter(resolve(path), (size, size, 1), CLASSES, rows_per_shard=64)
    h, q = size // 2, size // 4
    regions = [np.s_[:h, :], np.s_[h:, :], np.s_[q:size - q, q:size - q]]
    per_fold = [0] * FOLDS
    for split, n in (("train", train), ("val", val)):
        for j in range(n):
            label = int(rng.integers(len(CLASSES)))
            image = rng.normal(100, 30, (size, size))
            if label < 3:
                image[regions[label]] += 60
            else:
                image[:, :q] += 60
                image[:, size - q:] += 60
            fold = j % FOLDS if split == "train" else -1
            if fold >= 0:
                per_fold[fold] += 1
            writer.add(FaceRow(
                image=image.clip(0, 255).astype(np.uint8)[..., None], label=label,
                label_name=CLASSES[label], soft_label=np.eye(len(CLASSES))[label],
                valence=float("nan"),
                arousal=float("nan"), subject_id=f"{split}{j % 8}", split=split, fold=fold,
                dataset="tiny", source_file=f"{split}/{j}.png"))
    writer.finish(dataset="tiny", format="tiny-test",
                  folds={"k": FOLDS, "seed": seed, "by": "subject", "split": "train",
                         "rows_per_fold": per_fold})
    return str(path)
