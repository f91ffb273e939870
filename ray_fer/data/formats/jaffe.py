"""JAFFE: ``<root>/<subject>.<EXPR><n>.<id>.tiff`` plus the semantic ratings file.

Ten Japanese female subjects posing seven expressions (213 images, 256x256, whole
photos: faces are detected at ingest). ``JAFFE_labels.txt`` holds the mean ratings of 60
raters on a 1-5 scale (1 = not at all) for six emotions, one line per image::

    1 2.87 2.52 2.10 1.97 1.97 2.06 KM-NE1

(line id, HAP SAD SUR ANG DIS FEA, key ``<subject>-<EXPR><n>``; ``#`` lines are comments,
and a header naming the six columns, if present, sets their order).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ray_fer.data.formats._labels import emotion_soft_label, parse_float, utf8_lines
from ray_fer.data.formats.base import NAN, DatasetFormatError, SourceItem, decode_image
from ray_fer.data.formats.fer2013 import CLASS_NAMES
from ray_fer.data.targets import JAFFE_RATING_RANGE, derived_targets_note, jaffe_va

LABELS_FILE = "JAFFE_labels.txt"
#: Expression code in file names → class name (FER2013's names and order).
EXPRESSIONS = {
    "AN": "angry", "DI": "disgust", "FE": "fear", "HA": "happy",
    "NE": "neutral", "SA": "sad", "SU": "surprise",
}
#: The ratings file's columns and the class each rates (no neutral column).
RATING_COLUMNS = ("HAP", "SAD", "SUR", "ANG", "DIS", "FEA")
RATED_CLASS = dict(zip(RATING_COLUMNS, ("happy", "sad", "surprise", "angry", "disgust", "fear"),
                       strict=True))
_FILE = re.compile(r"^([A-Za-z]{2})\.([A-Za-z]{2})(\d+)\.(\d+)\.tiff?$")
_KEY = re.compile(r"^([A-Za-z]{2})-([A-Za-z]{2})(\d+)$")
_LABEL_OF = {name: i for i, name in enumerate(CLASS_NAMES)}


@dataclass(frozen=True)
class _Rating:
    line_id: int
    key: str
    values: tuple[float, ...]  # in RATING_COLUMNS order


class Jaffe:
    """JAFFE images with subject ids and, from ``JAFFE_labels.txt``, soft labels.

    Soft label: each mean rating r (1-5) becomes a strength (r - 1) / 4 in [0, 1] (1 means
    "not at all" on JAFFE's scale), and the strengths normalised to sum 1 are the
    distribution over the 7 classes, neutral 0 (the raters had no neutral column) —
    the same shares :func:`ray_fer.data.targets.jaffe_va` uses. The raw ratings are
    :meth:`ratings`. A rating line is matched to its image by key (``KM-NE1`` for
    ``KM.NE1.1.tiff``), else by the line id (the image's number) when subject and
    expression agree, which covers copies whose expression numbering differs. Images
    without a rating line, or a copy without the file, get no soft label.
    """

    name = "jaffe"
    dataset = "jaffe"

    def class_names(self, root: Path) -> list[str]:
        return list(CLASS_NAMES)

    def targets_note(self) -> dict:
        """Valence/arousal are derived from the mean ratings (see :mod:`ray_fer.data.targets`)."""
        return derived_targets_note()

    def scan(self, root: Path) -> Iterator[SourceItem]:
        root = Path(root)
        images = _images(root)
        ratings = self.ratings(root)
        for path in images:
            subject, code, _, _ = _parse_name(path)
            name = EXPRESSIONS[code]
            values = ratings.get(path.name)
            valence, arousal = (NAN, NAN) if values is None else _derived_va(values)
            yield SourceItem(
                source_file=path.name,
                label=_LABEL_OF[name],
                label_name=name,
                soft_label=None if values is None else _soft_label(values),
                valence=valence,
                arousal=arousal,
                subject_id=subject,
                needs_detection=True,
            )

    def ratings(self, root: Path) -> dict[str, tuple[float, ...]]:
        """Image file name → its 60-rater mean ratings (1-5) in :data:`RATING_COLUMNS`
        order, for every image matched to a line of ``JAFFE_labels.txt`` (empty without
        the file)."""
        root = Path(root)
        path = root / LABELS_FILE
        if not path.is_file():
            return {}
        rows = _read_ratings(path)
        by_key = {r.key.upper(): r for r in rows}
        by_id = {r.line_id: r for r in rows}
        matched: dict[str, tuple[float, ...]] = {}
        for image in _images(root):
            subject, code, number, image_id = _parse_name(image)
            row = by_key.get(f"{subject}-{code}{number}")
            if row is None:
                candidate = by_id.get(image_id)
                key = _KEY.match(candidate.key) if candidate else None
                if key and (key[1].upper(), key[2].upper()) == (subject, code):
                    row = candidate
            if row is not None:
                matched[image.name] = row.values
        return matched

    def load(self, root: Path, item: SourceItem) -> np.ndarray:
        return decode_image(Path(root) / item.source_file)

    def split_source(self) -> dict[str, str]:
        return {}


def _images(root: Path) -> list[Path]:
    if not root.is_dir():
        raise DatasetFormatError(f"{root}: not a folder (does the path exist?)")
    images = sorted(
        p for p in root.iterdir()
        if p.suffix.lower() in (".tiff", ".tif") and not p.name.startswith(".")
    )
    if not images:
        raise DatasetFormatError(
            f"{root}: no JAFFE images; expected <subject>.<EXPR><n>.<id>.tiff files such as "
            "KA.AN1.39.tiff"
        )
    for image in images:
        _parse_name(image)
    return images


def _parse_name(path: Path) -> tuple[str, str, int, int]:
    """(subject, expression code, expression number, image id) from a JAFFE file name."""
    m = _FILE.match(path.name)
    if not m or m[2].upper() not in EXPRESSIONS:
        raise DatasetFormatError(
            f"{path}: not a JAFFE file name; expected <subject>.<EXPR><n>.<id>.tiff with EXPR "
            f"one of {', '.join(EXPRESSIONS)} (e.g. KA.AN1.39.tiff)"
        )
    return m[1].upper(), m[2].upper(), int(m[3]), int(m[4])


def _read_ratings(path: Path) -> list[_Rating]:
    columns = RATING_COLUMNS
    rows: list[_Rating] = []
    for number, line in enumerate(utf8_lines(path), start=1):
        tokens = line.replace("#", " ").split()
        if set(RATING_COLUMNS) <= {t.upper() for t in tokens}:
            # A header: take the column order from it.
            columns = tuple(t.upper() for t in tokens if t.upper() in RATING_COLUMNS)
            continue
        if not tokens or line.lstrip().startswith("#"):
            continue
        where = f"{path}, line {number}"
        if len(tokens) != 8 or not tokens[0].isdigit() or not _KEY.match(tokens[7]):
            raise DatasetFormatError(
                f"{where}: expected '<id> <6 ratings> <key>' such as "
                f"'1 2.87 2.52 2.10 1.97 1.97 2.06 KM-NE1', got {line.strip()!r}"
            )
        low, high = JAFFE_RATING_RANGE
        values = {}
        for column, text in zip(columns, tokens[1:7], strict=True):
            value = parse_float(text, where, column)
            if not low <= value <= high:
                raise DatasetFormatError(
                    f"{where}, column {column!r}: rating {value} outside {low:g}-{high:g}"
                )
            values[column] = value
        rows.append(_Rating(int(tokens[0]), tokens[7], tuple(values[c] for c in RATING_COLUMNS)))
    if not rows:
        raise DatasetFormatError(f"{path}: no rating lines")
    return rows


def _soft_label(values: tuple[float, ...]) -> tuple[float, ...] | None:
    low, high = JAFFE_RATING_RANGE
    strengths = {
        RATED_CLASS[c]: (v - low) / (high - low)
        for c, v in zip(RATING_COLUMNS, values, strict=True)
    }
    return emotion_soft_label(strengths, CLASS_NAMES)


def _derived_va(values: tuple[float, ...]) -> tuple[float, float]:
    (valence,), (arousal,) = jaffe_va(np.array([values]), [RATED_CLASS[c] for c in RATING_COLUMNS])
    return float(valence), float(arousal)
