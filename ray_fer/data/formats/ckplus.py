"""CK+48: CK+ peak frames as 48x48 PNGs, ``<root>/<class>/S<subject>_<sequence>_<frame>.png``.

CK+ has no official split: every item is in "train" and ingest assigns subject-independent
k-folds from ``subject_id`` (``S010`` …), taken from the file name.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ray_fer.data.formats._folders import class_images, relative_posix
from ray_fer.data.formats.base import DatasetFormatError, SourceItem, decode_image

CLASS_NAMES = ("anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise")
_FILE_NAME = re.compile(r"(S\d+)_(\d+)_(\d+)\.\w+")


class CkPlus48:
    """Reader of the CK+48 class folders (7 classes, no neutral)."""

    name = "ckplus48"
    dataset = "ckplus48"

    def class_names(self, root: Path) -> list[str]:
        return list(CLASS_NAMES)

    def scan(self, root: Path) -> Iterator[SourceItem]:
        root = Path(root)
        classes = {c: c for c in CLASS_NAMES}
        self.skipped: list[dict[str, str]] = []
        for class_name, image in class_images(root, classes, skipped=self.skipped):
            match = _FILE_NAME.fullmatch(image.name)
            if match is None:
                raise DatasetFormatError(
                    f"{image}: file name is not S<subject>_<sequence>_<frame> "
                    "(e.g. S010_004_00000017.png), so its subject is unknown"
                )
            yield SourceItem(
                source_file=relative_posix(root, image),
                label=CLASS_NAMES.index(class_name),
                label_name=class_name,
                subject_id=match.group(1),
                split="train",
            )

    def load(self, root: Path, item: SourceItem) -> np.ndarray:
        return decode_image(Path(root) / item.source_file)

    def split_source(self) -> dict[str, str]:
        return {}
