"""AFEW-VA, as published: one folder per clip with per-frame valence/arousal and landmarks.

Layout: ``<root>/<clip>/<clip>.json`` and the frames ``<root>/<clip>/<frame>.png``. The
JSON file::

    {"actor": "...", "video_id": "001",
     "frames": {"00000": {"valence": 3, "arousal": -2, "landmarks": [[x, y], ...68]}, ...}}

Valence and arousal are integers in [-10, 10], stored divided by 10 so that they share
AffectNet's [-1, 1] range. AFEW-VA has no official split and no categories: every frame
is a train item with label -1, its face box the bounding box of its landmarks.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ray_fer.data.formats._labels import read_utf8
from ray_fer.data.formats.base import DatasetFormatError, SourceItem, decode_image, listed_path

FRAME_SUFFIX = ".png"
VA_SCALE = 10.0


class AfewVa:
    """AFEW-VA frames: one item per annotated frame, ``subject_id`` the clip's actor and
    ``key`` the frame id."""

    name = "afew-va"
    dataset = "afew-va"

    def class_names(self, root: Path) -> list[str]:
        return []

    def scan(self, root: Path) -> Iterator[SourceItem]:
        root = Path(root)
        if not root.is_dir():
            raise DatasetFormatError(f"{root}: not a folder (does the path exist?)")
        clips = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not clips:
            raise DatasetFormatError(
                f"{root}: no clip folders; expected <root>/<clip>/<clip>.json with the frames "
                "<root>/<clip>/<frame>.png"
            )
        for clip in clips:
            yield from _clip_items(clip)

    def load(self, root: Path, item: SourceItem) -> np.ndarray:
        path = Path(root) / item.source_file
        if not path.is_file():
            raise DatasetFormatError(
                f"{path}: frame {item.key} annotated in {Path(item.source_file).parent.name}"
                ".json not found"
            )
        return decode_image(path)

    def split_source(self) -> dict[str, str]:
        return {}


def _clip_items(clip: Path) -> Iterator[SourceItem]:
    path = clip / f"{clip.name}.json"
    if not path.is_file():
        raise DatasetFormatError(
            f"{path}: missing; every AFEW-VA clip folder holds <clip>.json with its frames' "
            "annotations"
        )
    try:
        doc = json.loads(read_utf8(path))
    except json.JSONDecodeError as exc:
        raise DatasetFormatError(f"{path}, line {exc.lineno}: invalid JSON ({exc.msg})") from None
    frames = doc.get("frames") if isinstance(doc, dict) else None
    actor = doc.get("actor") if isinstance(doc, dict) else None
    if not isinstance(frames, dict) or not isinstance(actor, str):
        raise DatasetFormatError(
            f"{path}: expected an object with 'actor' (a name) and 'frames' (frame id → "
            "valence, arousal, landmarks)"
        )
    for frame in sorted(frames):
        where = f"{path}, frame {frame!r}"
        ann = frames[frame]
        if not isinstance(ann, dict):
            raise DatasetFormatError(
                f"{where}: expected an object with valence, arousal and landmarks"
            )
        yield SourceItem(
            source_file=listed_path(f"{clip.name}/{frame}{FRAME_SUFFIX}", where),
            valence=_va(ann, "valence", where),
            arousal=_va(ann, "arousal", where),
            subject_id=actor,
            landmarks=_landmarks(ann, where),
            key=frame,
        )


def _va(ann: dict, key: str, where: str) -> float:
    value = ann.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
        -VA_SCALE <= value <= VA_SCALE
    ):
        raise DatasetFormatError(
            f"{where}, key {key!r}: {value!r} is not a number in [-10, 10]"
        )
    return float(value) / VA_SCALE


def _landmarks(ann: dict, where: str) -> tuple[tuple[float, float], ...]:
    points = ann.get("landmarks")
    try:
        landmarks = tuple((float(x), float(y)) for x, y in points)
    except (TypeError, ValueError):
        raise DatasetFormatError(
            f"{where}, key 'landmarks': expected a list of [x, y] points"
        ) from None
    if len(landmarks) < 2 or not all(math.isfinite(v) for p in landmarks for v in p):
        raise DatasetFormatError(
            f"{where}, key 'landmarks': expected at least 2 finite [x, y] points"
        )
    return landmarks
