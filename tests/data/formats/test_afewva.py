"""AFEW-VA reader on small copies written here in AFEW-VA's published format."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from ray_fer.data.detectors import detect_faces
from ray_fer.data.faces import FaceSpec, landmarks_box, prepare_face
from ray_fer.data.formats import DatasetFormatError, get_reader
from ray_fer.data.formats.afewva import AfewVa
from ray_fer.data.formats.base import decode_image


def coordinate_image(h: int, w: int) -> np.ndarray:
    """RGB image whose pixel (y, x) is (y, x, 7) mod 256: crops can be located exactly."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([y % 256, x % 256, np.full_like(y, 7)], axis=-1).astype(np.uint8)


def face_landmarks(x: float, y: float, w: float, h: float) -> list[list[float]]:
    """68 points spread over the box (x, y, w, h), touching all four sides."""
    t = np.linspace(0.0, 1.0, 68)
    xs = x + w * (0.5 + 0.5 * np.cos(2 * np.pi * t))
    ys = y + h * (0.5 + 0.5 * np.sin(2 * np.pi * t))
    xs[0], xs[34], ys[17], ys[51] = x + w, x, y + h, y
    return [[round(float(a), 3), round(float(b), 3)] for a, b in zip(xs, ys, strict=True)]


def write_clip(root: Path, clip: str, actor: str, frames: dict[str, tuple[int, int]],
               box: tuple[float, float, float, float] = (40, 30, 60, 80)) -> Path:
    folder = root / clip
    folder.mkdir(parents=True, exist_ok=True)
    doc = {
        "actor": actor,
        "video_id": clip,
        "frames": {
            frame: {"valence": v, "arousal": a, "landmarks": face_landmarks(*box)}
            for frame, (v, a) in frames.items()
        },
    }
    (folder / f"{clip}.json").write_text(json.dumps(doc), encoding="utf-8")
    for frame in frames:
        image = cv2.cvtColor(coordinate_image(180, 200), cv2.COLOR_RGB2BGR)
        assert cv2.imwrite(str(folder / f"{frame}.png"), image)
    return folder / f"{clip}.json"


@pytest.fixture
def afewva(tmp_path) -> Path:
    root = tmp_path / "AFEW-VA"
    write_clip(root, "001", "Daniel Radcliffe", {"00001": (-10, 4), "00000": (3, -2)})
    write_clip(root, "002", "Emma Watson", {"00000": (10, 0)}, box=(100, 90, 50, 50))
    return root


def test_every_frame_is_an_item_with_scaled_va_actor_and_key(afewva):
    reader = get_reader("afew-va")
    items = list(reader.scan(afewva))
    assert [(i.source_file, i.key, i.subject_id, i.valence, i.arousal) for i in items] == [
        ("001/00000.png", "00000", "Daniel Radcliffe", 0.3, -0.2),
        ("001/00001.png", "00001", "Daniel Radcliffe", -1.0, 0.4),
        ("002/00000.png", "00000", "Emma Watson", 1.0, 0.0),
    ]
    for item in items:
        assert (item.label, item.label_name, item.soft_label, item.split) == (-1, "", None,
                                                                             "train")
        assert len(item.landmarks) == 68 and item.box is None and not item.needs_detection
    assert landmarks_box(items[0].landmarks) == pytest.approx((40, 30, 60, 80))
    assert reader.class_names(afewva) == [] and reader.split_source() == {}


def test_the_face_is_cropped_around_the_landmarks(afewva):
    reader = AfewVa()
    item = list(reader.scan(afewva))[2]
    image = reader.load(afewva, item)
    assert image.shape == (180, 200, 3)
    face = prepare_face(image, item, FaceSpec(50, 3, margin=0.0))
    # Landmarks span x 100..150, y 90..140: the coordinate pattern tells the crop's origin.
    assert face[0, 0].tolist() == [90, 100, 7] and face[-1, -1].tolist() == [139, 149, 7]


def test_a_real_face_with_landmarks_on_it_comes_out_as_that_face(tmp_path, real_dataset):
    photo = decode_image(real_dataset("jaffe") / "KA.HA1.29.tiff")
    (x, y, w, h) = detect_faces(photo)[0]
    canvas = np.full((400, 520), 50, np.uint8)
    canvas[120:376, 200:456] = photo if photo.ndim == 2 else photo[:, :, 0]
    write_clip(tmp_path, "010", "actor", {"00000": (5, 5)}, box=(200 + x, 120 + y, w, h))
    cv2.imwrite(str(tmp_path / "010" / "00000.png"), canvas)
    reader = AfewVa()
    (item,) = reader.scan(tmp_path)
    face = prepare_face(reader.load(tmp_path, item), item, FaceSpec(96, 1))
    found = detect_faces(face)
    assert found and found[0][2] > 0.5 * 96


def edit_json(path: Path, edit) -> None:
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("actor"), r"expected an object with 'actor'"),
        (lambda d: d["frames"]["00000"].update(valence=11), r"frame '00000', key 'valence': 11"),
        (lambda d: d["frames"]["00000"].update(arousal="3"), r"key 'arousal': '3' is not"),
        (lambda d: d["frames"]["00000"].pop("landmarks"), r"key 'landmarks': expected a list"),
        (lambda d: d["frames"]["00000"].update(landmarks=[[1, 2, 3]]), r"key 'landmarks'"),
        (lambda d: d["frames"]["00000"].update(landmarks=[[1, 2]]), r"at least 2 finite"),
        (lambda d: d["frames"].update({"00002": [1, 2]}), r"frame '00002': expected an object"),
    ],
)
def test_malformed_annotations_name_the_file_frame_and_key(tmp_path, edit, message):
    path = write_clip(tmp_path, "001", "actor", {"00000": (1, 1)})
    edit_json(path, edit)
    with pytest.raises(DatasetFormatError, match=message) as err:
        list(AfewVa().scan(tmp_path))
    assert str(path) in str(err.value)


def test_unreadable_json_names_the_file_and_line(tmp_path):
    path = write_clip(tmp_path, "001", "actor", {"00000": (1, 1)})
    path.write_text('{"actor": "a",\n "frames": {,}}')
    with pytest.raises(DatasetFormatError, match=r"001\.json, line 2: invalid JSON"):
        list(AfewVa().scan(tmp_path))
    path.write_bytes(b'{"actor": "a",\n "frames": {}, "x": "\xff"}')
    with pytest.raises(DatasetFormatError, match=r"001\.json, line 2: not UTF-8"):
        list(AfewVa().scan(tmp_path))


def test_bad_layouts_and_missing_frames_are_named(tmp_path):
    with pytest.raises(DatasetFormatError, match="no clip folders"):
        list(AfewVa().scan(tmp_path))
    (tmp_path / "003").mkdir()
    with pytest.raises(DatasetFormatError, match=r"003\.json: missing"):
        list(AfewVa().scan(tmp_path))
    (tmp_path / "003").rmdir()
    write_clip(tmp_path, "001", "actor", {"00000": (1, 1)})
    (item,) = AfewVa().scan(tmp_path)
    (tmp_path / "001" / "00000.png").unlink()
    with pytest.raises(DatasetFormatError, match=r"00000\.png: frame 00000 annotated in 001"):
        AfewVa().load(tmp_path, item)
