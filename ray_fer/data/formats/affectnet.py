"""AffectNet's manually annotated set, as published: CSV lists plus image folders.

``training.csv`` (→ train) and ``validation.csv`` (→ val), found in the root or in
``Manually_Annotated_file_lists/``, with the columns::

    subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,
    expression,valence,arousal

Images live at ``<images>/<subDirectory_filePath>`` where ``<images>`` is
``Manually_Annotated_Images/`` (or ``Manually_Annotated/Manually_Annotated_Images/``)
under the root, or the root itself when it is that folder. Expression ids 0-7 are the
classes; 8 None, 9 Uncertain and 10 No-Face are not emotions and are skipped (listed in
:attr:`AffectNet.skipped` with the reason). Valence and arousal are in [-1, 1]; -2 marks
a missing value (stored as NaN). The face box is given, so no detection runs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ray_fer.data.formats._labels import csv_records, parse_float
from ray_fer.data.formats.base import (
    DatasetFormatError,
    SourceItem,
    decode_image,
    listed_path,
)

#: Canonical split → the CSV that lists it.
CSV_FILES = {"train": "training.csv", "val": "validation.csv"}
LISTS_DIR = "Manually_Annotated_file_lists"
IMAGE_DIRS = ("Manually_Annotated_Images", "Manually_Annotated/Manually_Annotated_Images")
COLUMNS = (
    "subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
    "expression", "valence", "arousal",
)
#: Expression ids 0-7 in AffectNet's order, named as FER2013 names them.
CLASS_NAMES = ("neutral", "happy", "sad", "surprise", "fear", "disgust", "angry", "contempt")
#: Expression ids that are not an emotion: skipped.
NOT_EMOTIONS = {8: "None", 9: "Uncertain", 10: "No-Face"}
MISSING_VA = -2.0


class AffectNet:
    """AffectNet rows with face boxes, expression labels and valence/arousal.

    ``skipped`` lists ``{"file", "reason"}`` for every row of the last :meth:`scan` that
    gave no item (non-emotion expression ids, empty face boxes); ingest records them in
    the manifest. There are no subject ids (AffectNet has none), so each row is its own
    group in k-fold assignment.
    """

    name = "affectnet"
    dataset = "affectnet"

    def __init__(self) -> None:
        self.skipped: list[dict[str, str]] = []

    def __getstate__(self) -> dict:
        # Ingest workers only load pixels; the skip list (~10^5 rows on the full
        # training.csv) would otherwise be pickled with every chunk of work.
        return {**self.__dict__, "skipped": []}

    def class_names(self, root: Path) -> list[str]:
        return list(CLASS_NAMES)

    def scan(self, root: Path) -> Iterator[SourceItem]:
        root = Path(root)
        self.skipped = []
        lists = {split: _find_csv(root, name) for split, name in CSV_FILES.items()}
        if not any(lists.values()):
            raise DatasetFormatError(
                f"{root}: no {' or '.join(CSV_FILES.values())} here or in {LISTS_DIR}/; pass "
                "the AffectNet folder that holds the CSV lists and Manually_Annotated_Images/"
            )
        prefix = _images_prefix(root)
        for split, path in lists.items():
            if path is not None:
                yield from self._rows(path, prefix, split)

    def _rows(self, path: Path, prefix: str, split: str) -> Iterator[SourceItem]:
        for record in csv_records(path, COLUMNS):
            where = record.where
            file, x, y, w, h, expression, valence, arousal = (
                record.fields[c].strip() for c in COLUMNS)
            source = prefix + listed_path(file, where)
            label = _expression(expression, where)
            if label in NOT_EMOTIONS:
                self.skipped.append(
                    {"file": source, "reason": f"expression {label} ({NOT_EMOTIONS[label]})"}
                )
                continue
            box = tuple(parse_float(text, where, column)
                        for text, column in zip((x, y, w, h), COLUMNS[1:5], strict=True))
            if not (box[2] > 0 and box[3] > 0):
                self.skipped.append(
                    {"file": source, "reason": f"empty face box {box[2]:g}x{box[3]:g}"}
                )
                continue
            yield SourceItem(
                source_file=source,
                label=label,
                label_name=CLASS_NAMES[label],
                valence=_va(valence, where, "valence"),
                arousal=_va(arousal, where, "arousal"),
                split=split,
                box=box,
            )

    def load(self, root: Path, item: SourceItem) -> np.ndarray:
        path = Path(root) / item.source_file
        if not path.is_file():
            raise DatasetFormatError(
                f"{path}: image listed in {CSV_FILES.get(item.split, 'the CSV')} not found; "
                "check that Manually_Annotated_Images/ is complete"
            )
        return decode_image(path)

    def split_source(self) -> dict[str, str]:
        return dict(CSV_FILES)


def _find_csv(root: Path, name: str) -> Path | None:
    for path in (root / name, root / LISTS_DIR / name):
        if path.is_file():
            return path
    return None


def _images_prefix(root: Path) -> str:
    """Where ``subDirectory_filePath`` starts, relative to the root ('' for the root)."""
    for folder in IMAGE_DIRS:
        if (root / folder).is_dir():
            return f"{folder}/"
    return ""


def _expression(text: str, where: str) -> int:
    try:
        label = int(text)
    except ValueError:
        raise DatasetFormatError(
            f"{where}, column 'expression': {text!r} is not an integer"
        ) from None
    if not 0 <= label < len(CLASS_NAMES) + len(NOT_EMOTIONS):
        raise DatasetFormatError(
            f"{where}, column 'expression': {label} is not an AffectNet expression id (0-10)"
        )
    return label


def _va(text: str, where: str, column: str) -> float:
    value = parse_float(text, where, column)
    if value == MISSING_VA:
        return math.nan
    if not -1.0 <= value <= 1.0:
        raise DatasetFormatError(
            f"{where}, column {column!r}: {value} outside [-1, 1] (and not -2, AffectNet's "
            "mark for a missing value)"
        )
    return value
