"""The Taiwanese facial expression image database, front views at 256x256.

Layout: ``<root>/faces_256x256/<performer:2><type:1><view:1><expr:1><serial:2>.jpg`` and
``<root>/image_info.csv`` (converted from ``Image_info.xls``; see the set's
``Readme.txt``). ``expr`` is a neutral, b happy, c sad, d angry, e disgusted, f fearful,
g surprised. Type 0, not in the Readme, is the calm baseline; in nine such names the
expression letter is missing and the serial has three digits (``1201002.jpg``): those
are calm (neutral) too.

``image_info.csv`` has, per image, the share of observers choosing each of six emotions
(``prop_happy`` ... ``prop_surprised``) and their mean rated intensity per emotion
(``intensity_*``); it also lists images of other views that are not in this folder.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ray_fer.data.formats._labels import csv_records, emotion_soft_label, parse_float
from ray_fer.data.formats.base import (
    NAN,
    DatasetFormatError,
    SourceItem,
    decode_image,
)
from ray_fer.data.formats.fer2013 import CLASS_NAMES
from ray_fer.data.targets import derived_targets_note, taiwanese_va

IMAGES_DIR = "faces_256x256"
INFO_FILE = "image_info.csv"
#: Expression letter → class name (FER2013's names and order).
EXPRESSIONS = {
    "a": "neutral", "b": "happy", "c": "sad", "d": "angry",
    "e": "disgust", "f": "fear", "g": "surprise",
}
#: The rated emotions as named in ``image_info.csv`` columns, and their classes.
EMOTIONS = ("happy", "sad", "angry", "disgusted", "fearful", "surprised")
RATED_CLASS = dict(zip(EMOTIONS, ("happy", "sad", "angry", "disgust", "fear", "surprise"),
                       strict=True))
SHARE_COLUMNS = tuple(f"prop_{e}" for e in EMOTIONS)
INTENSITY_COLUMNS = tuple(f"intensity_{e}" for e in EMOTIONS)
_NAME = re.compile(r"^(\d{2})([0-3])([1-3])([a-g])(\d{2})\.jpg$", re.IGNORECASE)
_CALM_NO_LETTER = re.compile(r"^(\d{2})(0)([1-3])(\d{3})\.jpg$", re.IGNORECASE)
_LABEL_OF = {name: i for i, name in enumerate(CLASS_NAMES)}


class ObserverRatings(NamedTuple):
    """One image's ratings, in :data:`EMOTIONS` order."""

    #: Fraction of observers choosing each emotion (sums to ~1).
    shares: tuple[float, ...]
    #: Mean rated intensity of each emotion.
    intensities: tuple[float, ...]


class Taiwanese:
    """Taiwanese front-view faces with performer ids and observer soft labels.

    ``subject_id`` is the performer id. Soft label: the observer shares over the six
    emotions, normalised, neutral 0 (observers could not choose neutral); None for the
    images ``image_info.csv`` does not rate. The raw shares and intensities are
    :meth:`ratings`.
    """

    name = "taiwanese"
    dataset = "taiwanese"

    def class_names(self, root: Path) -> list[str]:
        return list(CLASS_NAMES)

    def targets_note(self) -> dict:
        """Valence/arousal are derived from observer shares and intensities
        (see :mod:`ray_fer.data.targets`)."""
        return derived_targets_note()

    def scan(self, root: Path) -> Iterator[SourceItem]:
        root = Path(root)
        images = _images(root)
        ratings = self.ratings(root)
        for path in images:
            performer, expression = _parse_name(path)
            rated = ratings.get(path.name)
            valence, arousal = (NAN, NAN) if rated is None else _derived_va(rated)
            yield SourceItem(
                source_file=f"{IMAGES_DIR}/{path.name}",
                label=_LABEL_OF[expression],
                label_name=expression,
                soft_label=None if rated is None else _soft_label(rated.shares),
                valence=valence,
                arousal=arousal,
                subject_id=performer,
                needs_detection=True,
            )

    def ratings(self, root: Path) -> dict[str, ObserverRatings]:
        """Image file name → its observer ratings, for every row of ``image_info.csv``
        (empty when the file is absent)."""
        path = Path(root) / INFO_FILE
        if not path.is_file():
            return {}
        ratings: dict[str, ObserverRatings] = {}
        for record in csv_records(path, ("file_name", *SHARE_COLUMNS, *INTENSITY_COLUMNS)):
            row, where = record.fields, record.where
            values = {c: parse_float(row[c], where, c)
                      for c in (*SHARE_COLUMNS, *INTENSITY_COLUMNS)}
            bad = [c for c in SHARE_COLUMNS if not 0 <= values[c] <= 1]
            if bad:
                raise DatasetFormatError(
                    f"{where}, column {bad[0]!r}: share {values[bad[0]]} outside 0-1"
                )
            ratings[row["file_name"].strip()] = ObserverRatings(
                tuple(values[c] for c in SHARE_COLUMNS),
                tuple(values[c] for c in INTENSITY_COLUMNS),
            )
        return ratings

    def load(self, root: Path, item: SourceItem) -> np.ndarray:
        return decode_image(Path(root) / item.source_file)

    def split_source(self) -> dict[str, str]:
        return {}


def _images(root: Path) -> list[Path]:
    folder = root / IMAGES_DIR
    if not folder.is_dir():
        raise DatasetFormatError(
            f"{folder}: not a folder; pass the Taiwanese set's root, the folder holding "
            f"{IMAGES_DIR}/ and {INFO_FILE}"
        )
    images = sorted(
        p for p in folder.iterdir() if p.suffix.lower() == ".jpg" and not p.name.startswith(".")
    )
    if not images:
        raise DatasetFormatError(f"{folder}: no .jpg images")
    for image in images:
        _parse_name(image)
    return images


def _parse_name(path: Path) -> tuple[str, str]:
    """(performer id, class name) from a file name."""
    m = _NAME.match(path.name)
    if m:
        return m[1], EXPRESSIONS[m[4].lower()]
    m = _CALM_NO_LETTER.match(path.name)
    if m:
        return m[1], EXPRESSIONS["a"]
    raise DatasetFormatError(
        f"{path}: not a Taiwanese-set file name; expected <performer:2><type:1><view:1>"
        "<expression a-g><serial:2>.jpg such as 0111b01.jpg"
    )


def _soft_label(shares: tuple[float, ...]) -> tuple[float, ...] | None:
    return emotion_soft_label(
        {RATED_CLASS[e]: s for e, s in zip(EMOTIONS, shares, strict=True)}, CLASS_NAMES
    )


def _derived_va(rated: ObserverRatings) -> tuple[float, float]:
    (valence,), (arousal,) = taiwanese_va(np.array([rated.shares]), np.array([rated.intensities]),
                                          [RATED_CLASS[e] for e in EMOTIONS])
    return float(valence), float(arousal)
