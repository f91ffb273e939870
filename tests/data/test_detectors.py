"""Face detectors behind one interface: Haar always, MTCNN with the ``detect`` extra, ``auto``
choosing between them; both find real faces where they are, in the same framing."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from ray_fer.data import detectors
from ray_fer.data.detectors import (
    DetectorUnavailable,
    detect_faces,
    get_detector,
    mtcnn_installed,
    resolve_detector,
)
from ray_fer.data.formats import get_reader
from ray_fer.data.formats.base import decode_image

needs_mtcnn = pytest.mark.skipif(not mtcnn_installed(),
                                 reason="facenet-pytorch not installed (extra 'detect')")
EVERY_DETECTOR = [pytest.param("haar"), pytest.param("mtcnn", marks=needs_mtcnn)]


@pytest.fixture
def without_mtcnn(monkeypatch):
    """facenet-pytorch made unimportable, as where the extra is not installed."""
    monkeypatch.setitem(sys.modules, "facenet_pytorch", None)
    detectors._mtcnn.cache_clear()
    yield
    detectors._mtcnn.cache_clear()


def test_auto_is_haar_without_the_extra_and_mtcnn_needs_it(without_mtcnn):
    assert not mtcnn_installed()
    assert resolve_detector("auto") == "haar"
    assert get_detector() is detectors.detect_haar
    with pytest.raises(DetectorUnavailable, match=r"pip install 'ray_fer\[detect\]'"):
        resolve_detector("mtcnn")
    with pytest.raises(DetectorUnavailable, match="facenet-pytorch"):
        detectors.detect_mtcnn(np.zeros((64, 64), np.uint8))


@needs_mtcnn
def test_auto_is_mtcnn_where_the_extra_is_installed():
    assert resolve_detector("auto") == "mtcnn"
    assert get_detector("auto") is detectors.detect_mtcnn


def test_unknown_detector_names_the_choices():
    with pytest.raises(ValueError, match="choose from auto, haar, mtcnn"):
        resolve_detector("yolo")


@pytest.mark.parametrize("detector", EVERY_DETECTOR)
def test_bad_images_and_sizes_are_rejected_clearly(detector):
    detect = get_detector(detector)
    with pytest.raises(ValueError, match="min_face"):
        detect(np.zeros((8, 8), np.uint8), min_face=0)
    with pytest.raises(ValueError, match="uint8"):
        detect(np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError, match="HxW gray or HxWx3"):
        detect(np.zeros((8, 8, 4), np.uint8))


def test_the_cascade_is_loaded_once_per_process():
    name = detectors._PASSES[0][0]
    assert detectors._cascade(name) is detectors._cascade(name)


@pytest.mark.parametrize("detector", EVERY_DETECTOR)
def test_no_face_in_a_flat_or_noisy_image(detector):
    noise = np.random.default_rng(1).integers(0, 256, (200, 200), dtype=np.uint8)
    assert detect_faces(np.full((200, 200), 128, np.uint8), detector=detector) == []
    assert detect_faces(noise, detector=detector) == []


# Real faces: JAFFE and the Taiwanese set (skipped where the archives are absent).


def iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0, min(ay + ah, by + bh) - max(ay, by))
    return w * h / (aw * ah + bw * bh - w * h)


@pytest.fixture(scope="module")
def jaffe(real_dataset) -> Path:
    return real_dataset("jaffe")


@pytest.mark.parametrize("detector", EVERY_DETECTOR)
def test_a_real_face_pasted_on_a_larger_canvas_is_found_where_it_was_put(jaffe, detector):
    photo = decode_image(jaffe / "KA.HA1.29.tiff")
    (box,) = detect_faces(photo, detector=detector)
    canvas = np.full((600, 800, *photo.shape[2:]), 90, np.uint8)
    canvas[250:506, 400:656] = photo
    found = detect_faces(canvas, min_face=0.1, detector=detector)
    assert found, "the pasted face was not found"
    expected = (box[0] + 400, box[1] + 250, box[2], box[3])
    assert iou(found[0], expected) > 0.7


def _detection_report(root: Path, fmt: str, step: int, detector: str,
                      rotate: float = 0) -> tuple[int, list[str], list[str]]:
    """(images, those without a face found, those whose largest box is not the face)."""
    reader = get_reader(fmt)
    items = list(reader.scan(root))[::step]
    missed, wrong = [], []
    for item in items:
        image = reader.load(root, item)
        if rotate:
            h, w = image.shape[:2]
            image = cv2.warpAffine(image, cv2.getRotationMatrix2D((w / 2, h / 2), rotate, 1),
                                   (w, h), borderMode=cv2.BORDER_REPLICATE)
        boxes = detect_faces(image, detector=detector)
        if not boxes:
            missed.append(item.source_file)
            continue
        x, y, w, h = boxes[0]
        side = min(image.shape[:2])
        # Portraits: a true face is large and near the centre (a few Taiwanese "front
        # views" are turned, off-centre by up to 0.2 of the side); a false crop is not.
        if not (0.4 * side <= w <= 0.95 * side
                and abs(x + w / 2 - image.shape[1] / 2) < 0.3 * side
                and abs(y + h / 2 - image.shape[0] / 2) < 0.3 * side):
            wrong.append(f"{item.source_file} {boxes[0]}")
    return len(items), missed, wrong


@pytest.mark.parametrize("detector", EVERY_DETECTOR)
def test_faces_are_found_in_every_jaffe_image_without_false_crops(jaffe, detector):
    total, missed, wrong = _detection_report(jaffe, "jaffe", 1, detector)
    assert total == 213 and missed == [] and wrong == []


@pytest.mark.parametrize("detector", EVERY_DETECTOR)
def test_faces_are_found_in_at_least_99_percent_of_taiwanese_images(real_dataset, detector):
    # Every 4th image keeps this to a few seconds; the full set: 1231 of 1232 found by haar.
    total, missed, wrong = _detection_report(real_dataset("taiwanese"), "taiwanese", 4,
                                             detector)
    assert total == 308 and len(missed) <= 0.01 * total and wrong == [], (missed, wrong)


@needs_mtcnn
def test_mtcnn_finds_tilted_faces_that_the_cascades_miss(jaffe):
    # Every 5th JAFFE image tilted by 20 degrees, as a head tilts in photos.
    total, *haar = _detection_report(jaffe, "jaffe", 5, "haar", rotate=20)
    _, *mtcnn = _detection_report(jaffe, "jaffe", 5, "mtcnn", rotate=20)
    assert total == 43 and mtcnn == [[], []], mtcnn
    assert len(haar[0] + haar[1]) >= 5, haar  # measured: 13 of 43 missed, 1 wrong


@needs_mtcnn
def test_mtcnn_boxes_frame_a_face_as_haar_boxes_do(jaffe):
    """The same face extent whichever detector: crops, and so models, carry over."""
    reader = get_reader("jaffe")
    overlaps = []
    for item in list(reader.scan(jaffe))[::3]:
        image = reader.load(jaffe, item)
        haar = detect_faces(image, detector="haar")[0]
        mtcnn = detect_faces(image, detector="mtcnn")[0]
        assert mtcnn[2] == mtcnn[3], mtcnn  # square, as the cascades' boxes are
        overlaps.append(iou(haar, mtcnn))
    assert np.median(overlaps) > 0.8 and min(overlaps) > 0.6, sorted(overlaps)[:5]


@needs_mtcnn
def test_mtcnn_leaves_out_faces_smaller_than_min_face(jaffe):
    photo = decode_image(jaffe / "KA.HA1.29.tiff")
    canvas = np.full((1024, 1024, *photo.shape[2:]), 90, np.uint8)
    canvas[400:656, 400:656] = photo  # a face of about 0.13 of the side
    assert detect_faces(canvas, min_face=0.1, detector="mtcnn")
    assert detect_faces(canvas, min_face=0.3, detector="mtcnn") == []
