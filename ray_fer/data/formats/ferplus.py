"""FER+ (Barsoum et al. 2016): FER2013 faces relabelled by 10 raters each.

Layout: ``<root>/FER2013Train|FER2013Valid|FER2013Test/`` with the images and a
``label.csv`` without header, one row per image: ``file, "(x, y, w, h)"``, then the votes
for neutral, happiness, surprise, sadness, anger, disgust, fear, contempt, unknown, NF.

Every kept row carries the vote distribution over the 8 emotions as its soft label and
the majority emotion as its hard label. Rows whose majority is ``unknown`` or ``NF`` (not a
face), or that have no majority under the FER+ protocol, are dropped as that protocol
does; each drop is recorded in :attr:`FerPlus.skipped` (``{"file", "reason"}``), filled
while :meth:`FerPlus.scan` runs, so ingest can list them in the manifest.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from ray_fer.data.formats._labels import CsvRows
from ray_fer.data.formats.base import DatasetFormatError, SourceItem, decode_image, listed_path
from ray_fer.data.targets import derived_targets_note, ferplus_va

EMOTIONS = (
    "neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt"
)  # fmt: skip
VOTE_COLUMNS = (*EMOTIONS, "unknown", "NF")
#: Official folder → canonical split, in the order they are read.
FOLDERS = {"FER2013Train": "train", "FER2013Valid": "val", "FER2013Test": "test"}
LABEL_FILE = "label.csv"
#: "ferplus": Microsoft's FERPlus "majority" mode (votes of 1 are outliers and removed;
#: the winner needs more than half of the remaining votes), which gives the literature's
#: 25,045 / 3,191 / 3,137 images. "argmax": the most-voted column, first one on ties.
MAJORITY_RULES = ("ferplus", "argmax")


def majority_vote(votes: Sequence[int], rule: str = "ferplus") -> int | None:
    """Index into :data:`VOTE_COLUMNS` of the majority of ``votes``; None when there is none."""
    if rule == "argmax":
        return int(np.argmax(votes))
    if rule != "ferplus":
        raise ValueError(f"unknown majority rule {rule!r}; choose one of {MAJORITY_RULES}")
    kept = [v if v > 1 else 0 for v in votes]
    top = max(kept)
    return kept.index(top) if top > 0.5 * sum(kept) else None


@dataclass
class FerPlus:
    """Reader of the FER+ folders; ``majority`` picks the rule of :data:`MAJORITY_RULES`."""

    name: ClassVar[str] = "ferplus"
    dataset: ClassVar[str] = "ferplus"

    majority: str = "ferplus"
    #: Rows dropped by the last :meth:`scan`: ``{"file": source_file, "reason": ...}``.
    skipped: list[dict] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        if self.majority not in MAJORITY_RULES:
            raise ValueError(
                f"ferplus: unknown majority rule {self.majority!r}; choose one of "
                f"{', '.join(MAJORITY_RULES)}"
            )

    def class_names(self, root: Path) -> list[str]:
        return list(EMOTIONS)

    def targets_note(self) -> dict:
        """Valence/arousal are derived from the vote shares (see :mod:`ray_fer.data.targets`)."""
        return derived_targets_note()

    def scan(self, root: Path) -> Iterator[SourceItem]:
        root = Path(root)
        self.skipped.clear()
        folders = [f for f in FOLDERS if (root / f).is_dir()]
        if not folders:
            raise DatasetFormatError(
                f"{root}: none of the FER+ folders {', '.join(FOLDERS)} is here"
            )
        for folder in folders:
            path = root / folder / LABEL_FILE
            if not path.is_file():
                raise DatasetFormatError(f"{path}: missing; every FER+ folder has a {LABEL_FILE}")
            rows = CsvRows(path)
            for row in rows:
                where = f"{path}, line {rows.line_num}"
                item = self._item(row, f"{folder}/", FOLDERS[folder], where) if row else None
                if item is not None:
                    yield item

    def _item(self, row: list[str], prefix: str, split: str, where: str) -> SourceItem | None:
        """The row's item, or None (recorded in :attr:`skipped`) when the protocol drops it."""
        if len(row) != 2 + len(VOTE_COLUMNS):
            raise DatasetFormatError(
                f"{where}: {len(row)} fields, expected {2 + len(VOTE_COLUMNS)} (file, face box, "
                f"votes for {', '.join(VOTE_COLUMNS)})"
            )
        source_file = prefix + listed_path(row[0], where)
        box = _parse_box(row[1], where)
        votes = [
            _parse_vote(text, column, where)
            for text, column in zip(row[2:], VOTE_COLUMNS, strict=True)
        ]
        if sum(votes) == 0:
            raise DatasetFormatError(f"{where}: no votes at all for {row[0]!r}")
        winner = majority_vote(votes, self.majority)
        if winner is None or winner >= len(EMOTIONS):
            reason = (
                "no majority (FER+ protocol)"
                if winner is None
                else f"majority vote is {VOTE_COLUMNS[winner]!r}"
            )
            self.skipped.append({"file": source_file, "reason": reason})
            return None
        emotion_votes = sum(votes[: len(EMOTIONS)])
        (valence,), (arousal,) = ferplus_va(np.array([votes]), VOTE_COLUMNS)
        return SourceItem(
            source_file=source_file,
            label=winner,
            label_name=EMOTIONS[winner],
            soft_label=tuple(v / emotion_votes for v in votes[: len(EMOTIONS)]),
            valence=float(valence),
            arousal=float(arousal),
            split=split,
            box=box,
        )

    def load(self, root: Path, item: SourceItem) -> np.ndarray:
        return decode_image(Path(root) / item.source_file)

    def split_source(self) -> dict[str, str]:
        return {split: folder for folder, split in FOLDERS.items()}


def _parse_box(text: str, where: str) -> tuple[float, float, float, float]:
    parts = text.strip().removeprefix("(").removesuffix(")").split(",")
    try:
        x, y, w, h = (float(p) for p in parts)
    except ValueError:
        raise DatasetFormatError(
            f"{where}, column 'face box': {text!r} is not \"(x, y, w, h)\""
        ) from None
    if w <= 0 or h <= 0:
        raise DatasetFormatError(f"{where}, column 'face box': {text!r} has no area")
    return (x, y, w, h)


def _parse_vote(text: str, column: str, where: str) -> int:
    try:
        votes = int(text)
    except ValueError:
        votes = -1
    if votes < 0:
        raise DatasetFormatError(
            f"{where}, column {column!r}: {text!r} is not a vote count (integer >= 0)"
        )
    return votes
