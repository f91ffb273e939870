"""AffectNet reader on small copies written here in AffectNet's published format."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest

from ray_fer.data.detectors import detect_faces
from ray_fer.data.faces import FaceSpec, prepare_face
from ray_fer.data.formats import DatasetFormatError, get_reader
from ray_fer.data.formats.affectnet import CLASS_NAMES, AffectNet
from ray_fer.data.formats.base import decode_image

HEADER = ("subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,"
          "expression,valence,arousal")
LANDMARKS = ";".join(f"{30 + i % 17 * 2}.5;{40 + i // 17 * 8}.25" for i in range(68))


def coordinate_image(h: int, w: int) -> np.ndarray:
    """RGB image whose pixel (y, x) is (y, x, 7) mod 256: crops can be located exactly."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([y % 256, x % 256, np.full_like(y, 7)], axis=-1).astype(np.uint8)


def write_image(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


def csv_text(rows: list[tuple]) -> str:
    lines = [HEADER]
    for file, box, expression, valence, arousal in rows:
        lines.append(",".join([file, *map(str, box), LANDMARKS, str(expression), str(valence),
                               str(arousal)]))
    return "\n".join(lines) + "\n"


TRAIN = [
    ("101/a.png", (20, 30, 40, 40), 1, 0.5, -0.25),
    ("101/b.jpg", (0, 0, 50, 50), 8, -2, -2),
    ("102/c.jpg", (0, 0, 50, 50), 10, -2, -2),
    ("102/d.png", (100, 10, 60, 80), 7, -2, -2),
    ("102/e.jpg", (10, 10, 0, 50), 3, 0.1, 0.1),
]
VALIDATION = [
    ("103/f.png", (0, 0, 50, 50), 9, 0.0, 0.0),
    ("103/g.png", (60, 50, 90, 70), 6, -0.6, 0.7),
]


def write_affectnet(root: Path, *, lists_dir: str = "Manually_Annotated_file_lists",
                    images_dir: str = "Manually_Annotated_Images") -> Path:
    for name, rows in (("training.csv", TRAIN), ("validation.csv", VALIDATION)):
        path = root / lists_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(csv_text(rows), encoding="utf-8")
    for file, *_ in TRAIN + VALIDATION:
        write_image(root / images_dir / file, coordinate_image(200, 240))
    return root


@pytest.fixture
def affectnet(tmp_path) -> Path:
    return write_affectnet(tmp_path / "AffectNet")


def test_rows_become_items_with_box_label_va_and_split(affectnet):
    reader = get_reader("affectnet")
    items = list(reader.scan(affectnet))
    assert [(i.source_file, i.label, i.label_name, i.split, i.box) for i in items] == [
        ("Manually_Annotated_Images/101/a.png", 1, "happy", "train", (20.0, 30.0, 40.0, 40.0)),
        ("Manually_Annotated_Images/102/d.png", 7, "contempt", "train",
         (100.0, 10.0, 60.0, 80.0)),
        ("Manually_Annotated_Images/103/g.png", 6, "angry", "val", (60.0, 50.0, 90.0, 70.0)),
    ]
    assert (items[0].valence, items[0].arousal) == (0.5, -0.25)
    assert math.isnan(items[1].valence) and math.isnan(items[1].arousal)  # -2: missing
    assert (items[2].valence, items[2].arousal) == (-0.6, 0.7)
    assert all(not i.needs_detection and i.subject_id == "" for i in items)
    assert reader.class_names(affectnet) == list(CLASS_NAMES) == [
        "neutral", "happy", "sad", "surprise", "fear", "disgust", "angry", "contempt"]
    assert reader.split_source() == {"train": "training.csv", "val": "validation.csv"}


def test_non_emotion_rows_and_empty_boxes_are_skipped_with_reasons(affectnet):
    reader = AffectNet()
    list(reader.scan(affectnet))
    assert reader.skipped == [
        {"file": "Manually_Annotated_Images/101/b.jpg", "reason": "expression 8 (None)"},
        {"file": "Manually_Annotated_Images/102/c.jpg", "reason": "expression 10 (No-Face)"},
        {"file": "Manually_Annotated_Images/102/e.jpg", "reason": "empty face box 0x50"},
        {"file": "Manually_Annotated_Images/103/f.png", "reason": "expression 9 (Uncertain)"},
    ]
    list(reader.scan(affectnet))  # a new scan starts a new list
    assert len(reader.skipped) == 4
    # Workers get the reader pickled with every chunk: the skip list stays behind.
    assert pickle.loads(pickle.dumps(reader)).skipped == []


def test_the_face_is_cropped_from_the_given_box(affectnet):
    reader = AffectNet()
    item = next(iter(reader.scan(affectnet)))
    image = reader.load(affectnet, item)
    assert image.shape == (200, 240, 3)
    face = prepare_face(image, item, FaceSpec(40, 3, margin=0.0))
    # Box x 20..60, y 30..70: the coordinate pattern tells where the crop came from.
    assert face[0, 0].tolist() == [30, 20, 7] and face[-1, -1].tolist() == [69, 59, 7]


def test_csvs_and_images_directly_in_the_root_are_accepted(tmp_path):
    root = write_affectnet(tmp_path, lists_dir=".", images_dir=".")
    items = list(AffectNet().scan(root))
    assert [i.source_file for i in items] == ["101/a.png", "102/d.png", "103/g.png"]
    assert AffectNet().load(root, items[0]).shape == (200, 240, 3)


def test_only_one_list_present_gives_only_that_split(affectnet):
    (affectnet / "Manually_Annotated_file_lists" / "training.csv").unlink()
    assert {i.split for i in AffectNet().scan(affectnet)} == {"val"}


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (",valence,", ",val,", r"training.csv: missing column\(s\) valence"),
        ("101/a.png,20,", "101/a.png,abc,", r"training.csv, line 2, column 'face_x': 'abc'"),
        ("101/a.png,20,30,40,40", "101/a.png,20,30,4o,40",
         r"line 2, column 'face_width': '4o' is not a number"),
        (",1,0.5,-0.25", ",happy,0.5,-0.25", r"line 2, column 'expression': 'happy'"),
        (",1,0.5,-0.25", ",12,0.5,-0.25", r"line 2, column 'expression': 12 is not"),
        (",1,0.5,-0.25", ",1,1.5,-0.25", r"line 2, column 'valence': 1.5 outside \[-1, 1\]"),
        (",1,0.5,-0.25", ",1,0.5,-0.25,extra", r"line 2: 10 fields, the header has 9"),
        ("101/a.png", "101/\udcff.png", r"line 2: not UTF-8"),
    ],
)
def test_malformed_lists_name_the_file_line_and_column(affectnet, old, new, message):
    path = affectnet / "Manually_Annotated_file_lists" / "training.csv"
    path.write_bytes(
        path.read_text().replace(old, new, 1).encode("utf-8", errors="surrogateescape"))
    with pytest.raises(DatasetFormatError, match=message) as err:
        list(AffectNet().scan(affectnet))
    assert str(path) in str(err.value)


def test_a_missing_image_is_named_when_loaded(affectnet):
    reader = AffectNet()
    item = next(iter(reader.scan(affectnet)))
    (affectnet / item.source_file).unlink()
    with pytest.raises(DatasetFormatError, match=r"101/a\.png: image listed in training\.csv"):
        reader.load(affectnet, item)


def test_a_folder_without_lists_is_refused(tmp_path):
    with pytest.raises(DatasetFormatError, match="no training.csv or validation.csv"):
        list(AffectNet().scan(tmp_path))


def test_a_real_face_pasted_at_a_known_box_comes_out_as_that_face(tmp_path, real_dataset):
    photo = decode_image(real_dataset("jaffe") / "KA.HA1.29.tiff")
    (x, y, w, h) = detect_faces(photo)[0]
    canvas = np.full((480, 640), 60, np.uint8)
    canvas[100:356, 300:556] = photo if photo.ndim == 2 else photo[:, :, 0]
    root = tmp_path / "AffectNet"
    write_image(root / "Manually_Annotated_Images" / "7" / "face.jpg",
                cv2.cvtColor(canvas, cv2.COLOR_GRAY2RGB))
    (root / "training.csv").write_text(
        csv_text([("7/face.jpg", (300 + x, 100 + y, w, h), 1, 0.6, 0.3)]), encoding="utf-8")
    reader = AffectNet()
    (item,) = reader.scan(root)
    face = prepare_face(reader.load(root, item), item, FaceSpec(96, 1))
    found = detect_faces(face)
    assert found and found[0][2] > 0.5 * 96  # the crop is that face, large and whole
