"""Face preprocessing: find the face, crop a square around it, resize, gray or RGB.

:func:`prepare_face` turns one decoded image and its :class:`SourceItem` into the stored
face: the crop comes from the item's known box, else the bounding box of its landmarks,
else a detected face (when the item says the image is a whole photo), else the whole
image. Detectors are :mod:`ray_fer.data.detectors`' (Haar cascades, or MTCNN with the
``detect`` extra); prediction on photos uses the same ones.

Crop geometry: a square of side ``max(w, h) * (1 + margin)`` centred on the box. Where
it reaches past the image border the missing part is filled by edge replication, not a
constant: a black or grey bar would be a sharp artificial edge whose position follows
the face's position in the photo, something a CNN can learn instead of the expression;
replicated edges keep the local statistics of the image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from ray_fer.data.detectors import AUTO, check_image, get_detector
from ray_fer.data.formats.base import SourceItem


@dataclass(frozen=True)
class FaceSpec:
    """The stored face: ``size`` x ``size`` pixels, ``channels`` 1 (gray) or 3 (RGB).

    ``margin`` widens the square crop around a face box: its side is
    ``max(w, h) * (1 + margin)``.
    """

    size: int
    channels: int
    margin: float = 0.25

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"face size must be >= 1 px, got {self.size}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 (gray) or 3 (RGB), got {self.channels}")
        if not self.margin >= 0:
            raise ValueError(f"margin must be >= 0, got {self.margin}")


def prepare_face(image: np.ndarray, item: SourceItem, spec: FaceSpec, *,
                 detector: str = AUTO) -> np.ndarray | None:
    """The face of ``item`` in ``image`` as a (size, size, channels) uint8 array.

    The box is ``item.box``, else the bounding box of ``item.landmarks``, else the largest
    face that ``detector`` (:data:`ray_fer.data.detectors.CHOICES`) finds when
    ``item.needs_detection``, else the whole image (kept whole: a
    non-square image is padded to a square, not cropped). Returns None when no face is
    found or the given box lies entirely outside the image.
    """
    image = check_image(image)
    h, w = image.shape[:2]
    if item.box is not None:
        crop = square_crop(image, item.box, spec.margin)
    elif item.landmarks:
        crop = square_crop(image, landmarks_box(item.landmarks), spec.margin)
    elif item.needs_detection:
        faces = get_detector(detector)(image)
        if not faces:
            return None
        crop = square_crop(image, faces[0], spec.margin)
    else:
        crop = image if h == w else square_crop(image, (0, 0, w, h), 0.0)
    if crop is None:
        return None
    if spec.channels == 1 and crop.ndim == 3:
        # Drop channels before resampling: a third of the work.
        crop = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
    face = _resize(crop, spec.size)
    if spec.channels == 3 and face.ndim == 2:
        face = cv2.cvtColor(face, cv2.COLOR_GRAY2RGB)
    if face.ndim == 2:
        face = face[:, :, None]
    return np.ascontiguousarray(face)


def landmarks_box(landmarks: Sequence[tuple[float, float]]) -> tuple[float, float, float, float]:
    """Bounding box (x, y, w, h) of landmark points."""
    points = np.asarray(landmarks, dtype=np.float64)
    x0, y0 = points.min(axis=0)
    x1, y1 = points.max(axis=0)
    return (float(x0), float(y0), float(x1 - x0), float(y1 - y0))


def square_crop(
    image: np.ndarray, box: Sequence[float], margin: float
) -> np.ndarray | None:
    """The square of side ``max(w, h) * (1 + margin)`` centred on ``box``, edge-replicated
    where it leaves the image; None when it does not overlap the image at all."""
    x, y, w, h = (float(v) for v in box)
    side = max(1, round(max(w, h) * (1.0 + margin)))
    x0 = math.floor(x + w / 2 - side / 2 + 0.5)
    y0 = math.floor(y + h / 2 - side / 2 + 0.5)
    x1, y1 = x0 + side, y0 + side
    height, width = image.shape[:2]
    crop = image[max(y0, 0) : min(y1, height), max(x0, 0) : min(x1, width)]
    if crop.size == 0:
        return None
    top, bottom = max(0, -y0), max(0, y1 - height)
    left, right = max(0, -x0), max(0, x1 - width)
    if top or bottom or left or right:
        crop = cv2.copyMakeBorder(crop, top, bottom, left, right, cv2.BORDER_REPLICATE)
    return crop


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    side = image.shape[0]
    if side == size:
        return image
    # INTER_AREA averages every source pixel when shrinking (no aliasing); it degrades
    # to nearest-like blockiness when enlarging, where bilinear is the better choice.
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interpolation)
