"""The contract every dataset reader fulfils.

A reader turns one public dataset layout into a stream of :class:`SourceItem` (cheap
metadata, listed in one pass so folds can be assigned before any pixel is decoded) and
loads each item's pixels on demand with :meth:`Reader.load`. Face detection, cropping,
resizing and shard writing happen downstream (``faces`` → ``shards``); a reader never
resizes.
"""

from __future__ import annotations

import io
import math
import os
import posixpath
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from ray_fer.errors import UserError

#: Canonical split names in shards. Official names are kept in the manifest's
#: ``split_source`` (e.g. FER2013 ``PublicTest`` → ``val``).
SPLITS = ("train", "val", "test")
NAN = math.nan


class DatasetFormatError(UserError, ValueError):
    """Input does not match the published layout; the message names file and column."""


@dataclass(frozen=True)
class SourceItem:
    """One face to ingest, before its pixels are decoded.

    ``source_file`` is relative to the dataset root (it is stored in shards, so absolute
    paths of the ingesting machine never leak). ``pixels`` carries inline images (CSV
    formats) so that :meth:`Reader.load` need not reopen the file.
    """

    source_file: str
    label: int = -1
    label_name: str = ""
    soft_label: tuple[float, ...] | None = None
    valence: float = NAN
    arousal: float = NAN
    subject_id: str = ""
    split: str = "train"
    #: Known face box (x, y, w, h) in source pixels; no detection is run when set.
    box: tuple[float, float, float, float] | None = None
    #: Known landmarks [(x, y), ...]; a box is derived from them when ``box`` is None.
    landmarks: tuple[tuple[float, float], ...] | None = None
    #: True when the image is a whole photo in which the face must be found.
    needs_detection: bool = False
    pixels: bytes | None = field(default=None, repr=False)
    #: Frame index or similar disambiguation for multi-face sources (e.g. video frames).
    key: str = ""


class Reader(Protocol):
    """A dataset layout. Implementations are small modules registered in ``formats``."""

    #: CLI name, e.g. ``fer2013-folders``.
    name: str
    #: Dataset name stored in every row, e.g. ``fer2013``.
    dataset: str

    def class_names(self, root: Path) -> list[str]:
        """Label index → name, in the order of ``SourceItem.label``."""
        ...

    def scan(self, root: Path) -> Iterator[SourceItem]:
        """List every item under ``root`` (metadata only, no pixel decoding).

        Raises :class:`DatasetFormatError` naming the file (and column) for malformed
        input, and for a root with nothing to read.
        """
        ...

    def load(self, root: Path, item: SourceItem) -> np.ndarray:
        """Decode ``item``'s pixels: uint8 array, HxW (gray) or HxWx3 (RGB)."""
        ...

    def split_source(self) -> dict[str, str]:
        """Canonical split → the dataset's own name for it (empty without official splits)."""
        ...


ReaderFactory = Callable[..., Reader]


#: Pixels (width x height) an image may have, unless RAY_FER_MAX_IMAGE_PIXELS (ingest and
#: predict: ``--max-pixels``) says otherwise: 50 million, beyond the photos of every
#: supported dataset and of most cameras. Decoding costs memory and time in proportion
#: (a 30000 x 30000 gray PNG of 875 KB took 1.85 GB and 21 s to find one face).
MAX_IMAGE_PIXELS = 50_000_000
MAX_PIXELS_ENV = "RAY_FER_MAX_IMAGE_PIXELS"


def max_image_pixels() -> int:
    """The pixel cap of :func:`decode_image`: ``RAY_FER_MAX_IMAGE_PIXELS`` if set, else
    :data:`MAX_IMAGE_PIXELS`."""
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return MAX_IMAGE_PIXELS
    if not raw.isdigit() or int(raw) < 1:
        raise DatasetFormatError(f"{MAX_PIXELS_ENV}={raw!r}: expected a pixel count >= 1")
    return int(raw)


def set_max_pixels(pixels: int | None) -> None:
    """A command's ``--max-pixels``: the cap for this process and the processes it starts
    (through ``RAY_FER_MAX_IMAGE_PIXELS``); None keeps the current one."""
    if pixels is None:
        return
    if pixels < 1:
        raise DatasetFormatError(f"--max-pixels must be >= 1, got {pixels}")
    os.environ[MAX_PIXELS_ENV] = str(pixels)


def _declared_pixels(data: bytes) -> tuple[int, str] | None:
    """(pixels, how they read) that an image's header declares, read without decoding its
    pixels; None when PIL cannot read the header."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                return image.width * image.height, f"{image.width} x {image.height}"
    except Image.DecompressionBombError:  # PIL opens nothing above twice its own bound
        bound = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        return bound + 1, f"more than {bound:,}"
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None


def _check_pixels(path: Path, declared: tuple[int, str] | None, cap: int) -> None:
    if declared is not None and declared[0] > cap:
        raise DatasetFormatError(
            f"{path}: {declared[1]} pixels, above the limit of {cap:,} per image; shrink it, "
            f"or raise the limit with --max-pixels (or {MAX_PIXELS_ENV})")


def decode_image(path: Path, data: bytes | None = None) -> np.ndarray:
    """Decode an image file (or its bytes) to uint8 HxW or HxWx3 RGB; clear error if
    unreadable or larger than :func:`max_image_pixels` (read from its header, so a small
    file declaring a huge image is refused before it is decoded)."""
    import cv2

    raw = data if data is not None else _read_bytes(path)
    buf = np.frombuffer(raw, dtype=np.uint8)
    if buf.size == 0:
        raise DatasetFormatError(f"{path}: empty file, not an image")
    _check_pixels(path, _declared_pixels(raw), max_image_pixels())
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:  # e.g. a header declaring more pixels than OpenCV allows
        raise DatasetFormatError(
            f"{path}: image refused by the decoder (corrupt, or too large: "
            f"{exc.err or exc})") from None
    if img is None:
        raise DatasetFormatError(f"{path}: not a decodable image (corrupt or unsupported format)")
    if img.dtype != np.uint8:
        img = cv2.convertScaleAbs(img, alpha=255.0 / max(float(img.max()), 1.0))
    if img.ndim == 3:
        if img.shape[2] == 1:
            img = img[:, :, 0]
        elif img.shape[2] == 4:
            img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
        else:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(img)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DatasetFormatError(f"{path}: cannot read ({exc.strerror})") from exc


def require_columns(path: Path, header: Sequence[str], needed: Sequence[str]) -> None:
    """Raise naming ``path`` and every missing column when ``header`` lacks one of ``needed``."""
    missing = [c for c in needed if c not in header]
    if missing:
        raise DatasetFormatError(
            f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(header) or 'none'}"
        )


def listed_path(text: str, where: str) -> str:
    """A file path read from a label file, checked to stay inside the dataset root.

    Label files name images relative to the root; an absolute path or a ``..`` that
    climbs out of it would make ingest read (and store in shards) a file the user never
    gave, so it is refused with the file and line in ``where``.
    """
    path = text.strip().replace("\\", "/")
    normal = posixpath.normpath(path) if path else ""
    if (not normal or normal == "." or "\0" in path or posixpath.isabs(path)
            or normal == ".." or normal.startswith("../")):
        raise DatasetFormatError(
            f"{where}: image path {text!r} is empty or leads outside the dataset folder; "
            "label files must name images relative to it"
        )
    try:
        normal.encode("utf-8")
    except UnicodeEncodeError:
        raise DatasetFormatError(f"{where}: image path {text!r} is not valid UTF-8") from None
    return normal
