"""Face preprocessing: crop geometry, border replication, resize and channels, and crops
of detected faces (the detectors themselves: test_detectors.py)."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from ray_fer.data.detectors import detect_faces
from ray_fer.data.faces import FaceSpec, landmarks_box, prepare_face, square_crop
from ray_fer.data.formats import SourceItem, get_reader


def coordinate_image(h: int, w: int) -> np.ndarray:
    """uint8 image whose pixel (y, x) is (y, x, 7) mod 256: crops can be located exactly."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([y % 256, x % 256, np.full_like(y, 7)], axis=-1).astype(np.uint8)


def test_face_spec_rejects_bad_sizes_channels_and_margins():
    with pytest.raises(ValueError, match="channels"):
        FaceSpec(48, 2)
    with pytest.raises(ValueError, match="size"):
        FaceSpec(0, 1)
    with pytest.raises(ValueError, match="margin"):
        FaceSpec(48, 1, margin=-0.1)


def test_square_crop_is_centred_on_the_box_and_enlarged_by_the_margin():
    image = coordinate_image(200, 200)
    crop = square_crop(image, (50, 60, 40, 20), 0.5)  # side max(40, 20) * 1.5 = 60
    assert crop.shape == (60, 60, 3)
    # Box centre (70, 70) → crop starts at 70 - 30 = 40 on both axes.
    assert crop[0, 0, :2].tolist() == [40, 40]
    assert crop[-1, -1, :2].tolist() == [99, 99]


def test_square_crop_replicates_edges_past_the_image_border():
    image = coordinate_image(100, 120)
    crop = square_crop(image, (-10, 80, 30, 30), 0.0)  # x -10..20, y 80..110
    assert crop.shape == (30, 30, 3)
    inside = crop[:20, 10:]
    assert (inside == image[80:100, 0:20]).all()
    # Left of x = 0 repeats column 0, below y = 99 repeats row 99.
    assert (crop[:20, :10] == image[80:100, :1]).all()
    assert (crop[20:, 10:] == image[99:100, 0:20]).all()
    assert (crop[25, 3] == image[99, 0]).all()


def test_a_box_entirely_outside_the_image_gives_no_face():
    image = coordinate_image(50, 50)
    assert square_crop(image, (100, 100, 20, 20), 0.25) is None
    assert prepare_face(image, SourceItem("x", box=(100, 100, 20, 20)), FaceSpec(16, 3)) is None


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("source_gray", [True, False])
def test_prepare_face_gives_size_size_channels_uint8(channels, source_gray):
    image = coordinate_image(300, 240)
    if source_gray:
        image = image[:, :, 1].copy()
    face = prepare_face(image, SourceItem("x", box=(40, 50, 100, 120)), FaceSpec(64, channels))
    assert face.shape == (64, 64, channels) and face.dtype == np.uint8
    assert face.flags.c_contiguous


def test_channel_conversion_uses_luma_for_gray_and_copies_gray_into_rgb():
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[..., 0] = 200  # pure red → luma 0.299 * 200 ≈ 60
    gray = prepare_face(rgb, SourceItem("x"), FaceSpec(32, 1))
    assert gray.shape == (32, 32, 1) and abs(int(gray[0, 0, 0]) - 60) <= 1
    back = prepare_face(gray[:, :, 0], SourceItem("x"), FaceSpec(32, 3))
    assert (back == gray).all() and back.shape == (32, 32, 3)


def test_shrinking_averages_pixels_instead_of_sampling_them():
    # A 1-px checkerboard shrunk 4x must become flat grey (INTER_AREA), not stay black/white.
    board = (np.indices((128, 128)).sum(axis=0) % 2 * 255).astype(np.uint8)
    face = prepare_face(board, SourceItem("x"), FaceSpec(32, 1))
    assert np.abs(face.astype(int) - 127).max() <= 1


def test_landmarks_give_their_bounding_box():
    points = ((30.0, 40.0), (70.0, 45.0), (50.0, 90.0), (35.5, 60.0))
    assert landmarks_box(points) == (30.0, 40.0, 40.0, 50.0)
    image = coordinate_image(160, 160)
    spec = FaceSpec(40, 3)
    from_landmarks = prepare_face(image, SourceItem("x", landmarks=points), spec)
    from_box = prepare_face(image, SourceItem("x", box=(30, 40, 40, 50)), spec)
    assert (from_landmarks == from_box).all()


def test_a_given_box_wins_over_landmarks_and_detection():
    image = coordinate_image(160, 160)
    item = SourceItem("x", box=(10, 10, 40, 40), landmarks=((100, 100), (140, 150)),
                      needs_detection=True)
    face = prepare_face(image, item, FaceSpec(50, 3, margin=0.25))
    assert face[0, 0, :2].tolist() == [5, 5]  # centre 30, side 50 → starts at 5


def test_whole_images_are_kept_whole_and_non_square_ones_padded_not_cropped():
    image = coordinate_image(48, 48)[:, :, 1].copy()
    same = prepare_face(image, SourceItem("x"), FaceSpec(48, 1))
    assert (same[:, :, 0] == image).all()
    tall = coordinate_image(60, 40)
    face = prepare_face(tall, SourceItem("x"), FaceSpec(60, 3))
    assert (face[:, 10:50] == tall).all()
    assert (face[:, :10] == tall[:, :1]).all()


def test_already_cropped_48px_faces_take_tens_of_microseconds():
    image = np.random.default_rng(0).integers(0, 256, (48, 48), dtype=np.uint8)
    item, spec = SourceItem("x"), FaceSpec(48, 1)
    n = 2000
    start = time.perf_counter()
    for _ in range(n):
        prepare_face(image, item, spec)
    per_call = (time.perf_counter() - start) / n
    assert per_call < 200e-6  # ~10 µs measured; generous for a shared, loaded machine


def test_bad_images_are_rejected_clearly():
    with pytest.raises(ValueError, match="uint8"):
        prepare_face(np.zeros((8, 8), np.float32), SourceItem("x"), FaceSpec(8, 1))
    with pytest.raises(ValueError, match="HxW gray or HxWx3"):
        prepare_face(np.zeros((8, 8, 4), np.uint8), SourceItem("x"), FaceSpec(8, 1))


def test_an_image_without_a_face_gives_no_face_to_crop():
    noise = np.random.default_rng(1).integers(0, 256, (200, 200), dtype=np.uint8)
    assert prepare_face(noise, SourceItem("x", needs_detection=True), FaceSpec(48, 1)) is None


@pytest.fixture(scope="module")
def jaffe(real_dataset) -> Path:
    return real_dataset("jaffe")


@pytest.mark.parametrize("detector", ["haar", "mtcnn"])
def test_prepare_face_crops_detected_faces_to_the_spec(jaffe, detector):
    if detector == "mtcnn":
        pytest.importorskip("facenet_pytorch")
    reader = get_reader("jaffe")
    item = next(iter(reader.scan(jaffe)))
    face = prepare_face(reader.load(jaffe, item), item, FaceSpec(48, 1), detector=detector)
    assert face.shape == (48, 48, 1) and face.dtype == np.uint8
    # The crop is a face, not background: it is itself detected as one, filling the frame.
    big = cv2.resize(face[:, :, 0], (192, 192), interpolation=cv2.INTER_LINEAR)
    assert detect_faces(big, min_face=0.4, detector="haar")
