"""Face detectors behind one interface: ``detect(image, min_face=...) -> boxes``.

Every detector takes a uint8 gray or RGB image and returns (x, y, w, h) boxes, largest
first, of faces at least ``min_face`` times the image's shorter side. Boxes mean the same
face extent whichever detector drew them, so a model trained on crops of one detector's
boxes is fed the same framing by another's.

- ``haar``: OpenCV's bundled Haar cascades (Viola & Jones 2001); always available.
- ``mtcnn``: MTCNN (Zhang et al. 2016, "Joint Face Detection and Alignment using
  Multi-task Cascaded Convolutional Networks") in PyTorch, with the weights that ship inside
  the ``facenet-pytorch`` wheel: ``pip install 'ray_fer[detect]'``. It finds turned,
  tilted and small faces that the cascades miss, at several times their CPU cost
  (``benchmarks/detectors.py``).
- ``auto`` (the default): ``mtcnn`` where facenet-pytorch is installed, else ``haar``.

Ingestion resolves ``auto`` once and records the detector it used in the manifest
(``face_detection.detector``); predict on the same detector to get the same crops.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable

import cv2
import numpy as np

from ray_fer.errors import UserError

Box = tuple[int, int, int, int]
#: Detects faces in a uint8 image: ``detect(image, min_face=...)`` → boxes, largest first.
Detector = Callable[..., list[Box]]

#: Smallest face sought, as a fraction of the image's shorter side. Images are searched at
#: a resolution where this size maps to the detector's smallest window, which bounds the
#: cost of a detection whatever the photo's size.
MIN_FACE = 0.2
AUTO = "auto"
DETECTORS = ("haar", "mtcnn")
CHOICES = (AUTO, *DETECTORS)
#: The package whose wheel holds MTCNN's weights, and the extra that installs it.
MTCNN_PACKAGE = "facenet_pytorch"
EXTRA = "ray_fer[detect]"


class DetectorUnavailable(UserError, ValueError):
    """A detector whose package is not installed; the message says how to install it."""


def mtcnn_installed() -> bool:
    """Whether facenet-pytorch (MTCNN's weights) can be imported."""
    return importlib.util.find_spec(MTCNN_PACKAGE) is not None


def resolve_detector(name: str) -> str:
    """The concrete detector that ``name`` means (``auto`` → ``mtcnn`` or ``haar``).

    Raises ValueError for an unknown name and :class:`DetectorUnavailable` for ``mtcnn``
    without facenet-pytorch.
    """
    if name == AUTO:
        return "mtcnn" if mtcnn_installed() else "haar"
    if name not in DETECTORS:
        raise ValueError(f"unknown face detector {name!r}; choose from {', '.join(CHOICES)}")
    if name == "mtcnn" and not mtcnn_installed():
        raise DetectorUnavailable(
            f"face detector 'mtcnn' needs facenet-pytorch, which is not installed: "
            f"pip install '{EXTRA}' (or use --detector haar)")
    return name


def get_detector(name: str = AUTO) -> Detector:
    """The detect function of detector ``name`` (see :func:`resolve_detector`)."""
    return {"haar": detect_haar, "mtcnn": detect_mtcnn}[resolve_detector(name)]


def detect_faces(image: np.ndarray, *, min_face: float = MIN_FACE,
                 detector: str = AUTO) -> list[Box]:
    """Faces in ``image`` as (x, y, w, h) boxes, largest first, by ``detector``."""
    return get_detector(detector)(image, min_face=min_face)


# ------------------------------------------------------------------------ Haar


#: The cascades' smallest window, in px, that ``MIN_FACE`` is mapped to.
_HAAR_WINDOW_PX = 26
#: Detection passes, tried in order until one finds a face: (cascade file, scaleFactor,
#: minNeighbors, border added around the image as a fraction of its side). The first is
#: quick (coarse scale steps); the second, run only where it finds nothing, searches
#: finer scales with the alt2 cascade and fewer neighbours, on a padded image so that
#: faces filling the frame fit the detector's window. Chosen on JAFFE and the Taiwanese
#: set: found in 213/213 and 1231/1232 images (the first pass alone: 1228/1232).
_PASSES = (
    ("haarcascade_frontalface_default.xml", 1.2, 5, 0.0),
    ("haarcascade_frontalface_alt2.xml", 1.1, 3, 0.1),
)


def detect_haar(image: np.ndarray, *, min_face: float = MIN_FACE) -> list[Box]:
    """OpenCV's Haar cascades: faces in ``image`` as (x, y, w, h) boxes, largest first.

    The image is searched at reduced resolution (see :data:`MIN_FACE`) after histogram
    equalisation; a second, more permissive pass runs only when the first finds nothing.
    """
    gray = _gray(image, min_face)
    short = min(gray.shape)
    scale = min(1.0, _HAAR_WINDOW_PX / (min_face * short))
    if scale < 1.0:
        gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    gray = cv2.equalizeHist(gray)
    min_px = max(1, round(min_face * min(gray.shape)))
    for name, scale_factor, neighbours, border in _PASSES:
        pad = round(border * max(gray.shape))
        searched = (
            cv2.copyMakeBorder(gray, pad, pad, pad, pad, cv2.BORDER_REPLICATE) if pad else gray
        )
        found = _cascade(name).detectMultiScale(
            searched, scaleFactor=scale_factor, minNeighbors=neighbours,
            minSize=(min_px, min_px),
        )
        if len(found):
            boxes = [
                (round((x - pad) / scale), round((y - pad) / scale), round(w / scale),
                 round(h / scale))
                for x, y, w, h in found
            ]
            return _largest_first(boxes)
    return []


@functools.cache
def _cascade(name: str) -> cv2.CascadeClassifier:
    """One loaded cascade per process (loading parses a large XML file)."""
    if not hasattr(cv2, "CascadeClassifier") or not hasattr(cv2, "data"):
        raise RuntimeError(
            f"OpenCV {cv2.__version__} has no Haar cascades (removed in OpenCV 5); "
            "install opencv-python-headless<5"
        )
    path = cv2.data.haarcascades + name
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise RuntimeError(f"{path}: cannot load OpenCV's face cascade; reinstall opencv")
    return cascade


# ------------------------------------------------------------------------ MTCNN


#: MTCNN's smallest face in px (its default ``min_face_size``), that ``MIN_FACE`` maps to.
_MTCNN_MIN_PX = 20
#: MTCNN's box side over the Haar box side of the same face, median over the images both
#: detect: 1.106 on JAFFE (213 images), 1.076 on the Taiwanese set (every 4th, 308),
#: 1.113 on CK+48 (every 3rd, 327). Its boxes are shrunk by this about their centre, and
#: made square as the cascades' are, so crops keep the framing of Haar's boxes.
_MTCNN_TO_HAAR = 1.10


def detect_mtcnn(image: np.ndarray, *, min_face: float = MIN_FACE) -> list[Box]:
    """MTCNN (facenet-pytorch's weights, on the CPU): faces in ``image`` as square
    (x, y, w, h) boxes in Haar's framing, largest first. The image is downscaled so that a
    face of ``min_face`` times its shorter side is MTCNN's smallest (20 px)."""
    gray_or_rgb = _check(image, min_face)
    rgb = (cv2.cvtColor(gray_or_rgb, cv2.COLOR_GRAY2RGB) if gray_or_rgb.ndim == 2
           else gray_or_rgb)
    scale = min(1.0, _MTCNN_MIN_PX / (min_face * min(rgb.shape[:2])))
    if scale < 1.0:
        rgb = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    found, _ = _mtcnn().detect(np.ascontiguousarray(rgb))
    if found is None:
        return []
    boxes = []
    for x0, y0, x1, y1 in np.asarray(found, dtype=np.float64) / scale:
        side = max(x1 - x0, y1 - y0) / _MTCNN_TO_HAAR
        if side < min_face * min(image.shape[:2]):
            continue  # found in the border of the smallest window: smaller than sought
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        boxes.append((round(cx - side / 2), round(cy - side / 2), round(side), round(side)))
    return _largest_first(boxes)


@functools.cache
def _mtcnn():
    """One MTCNN per process (the three nets load from facenet-pytorch's wheel)."""
    if not mtcnn_installed():
        resolve_detector("mtcnn")  # raises DetectorUnavailable with the install hint
    from facenet_pytorch import MTCNN

    return MTCNN(keep_all=True, min_face_size=_MTCNN_MIN_PX, device="cpu")


# ------------------------------------------------------------------------ shared


def check_image(image: np.ndarray) -> np.ndarray:
    """``image`` as (H, W) gray or (H, W, 3) RGB uint8; ValueError for anything else."""
    if image.dtype != np.uint8:
        raise ValueError(f"face images must be uint8, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3):
        if min(image.shape[:2]) < 1:
            raise ValueError(f"empty image of shape {image.shape}")
        return image
    raise ValueError(f"face images must be HxW gray or HxWx3 RGB, got shape {image.shape}")


def _check(image: np.ndarray, min_face: float) -> np.ndarray:
    if not 0 < min_face <= 1:
        raise ValueError(f"min_face must be in (0, 1], got {min_face}")
    return check_image(image)


def _gray(image: np.ndarray, min_face: float) -> np.ndarray:
    checked = _check(image, min_face)
    return cv2.cvtColor(checked, cv2.COLOR_RGB2GRAY) if checked.ndim == 3 else checked


def _largest_first(boxes: list[Box]) -> list[Box]:
    return sorted(boxes, key=lambda b: b[2] * b[3], reverse=True)
