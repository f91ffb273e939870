"""JAFFE reader: real images and ratings, label-file variants, bad layouts."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from ray_fer.data.formats import DatasetFormatError, get_reader
from ray_fer.data.formats.fer2013 import CLASS_NAMES
from ray_fer.data.formats.jaffe import RATING_COLUMNS, Jaffe


@pytest.fixture(scope="module")
def jaffe(real_dataset) -> Path:
    return real_dataset("jaffe")


@pytest.fixture(scope="module")
def items(jaffe):
    return list(get_reader("jaffe").scan(jaffe))


def test_counts_match_the_datasets_readme(items):
    assert len(items) == 213
    assert len({i.subject_id for i in items}) == 10
    assert Counter(i.label_name for i in items) == {
        "angry": 30, "disgust": 29, "fear": 32, "happy": 31, "neutral": 30, "sad": 31,
        "surprise": 30,
    }


def test_labels_come_from_file_names_in_fer2013_order(items, jaffe):
    assert Jaffe().class_names(jaffe) == list(CLASS_NAMES)
    codes = {"AN": "angry", "DI": "disgust", "FE": "fear", "HA": "happy", "NE": "neutral",
             "SA": "sad", "SU": "surprise"}
    for item in items:
        subject, expression = item.source_file.split(".")[:2]
        assert item.subject_id == subject
        assert item.label_name == codes[expression[:2]]
        assert item.label == CLASS_NAMES.index(item.label_name)
        assert item.split == "train" and item.needs_detection and item.box is None
    assert Jaffe().split_source() == {}


def test_every_real_image_gets_its_ratings_as_a_soft_label(items, jaffe):
    ratings = Jaffe().ratings(jaffe)
    assert len(ratings) == 213  # the file has 219 lines; 6 rate images not distributed
    # KM.HA1.4.tiff is the file's line "4 4.90 1.13 1.26 1.10 1.03 1.10 KM-HA1".
    assert ratings["KM.HA1.4.tiff"] == (4.90, 1.13, 1.26, 1.10, 1.03, 1.10)
    by_file = {i.source_file: i for i in items}
    soft = by_file["KM.HA1.4.tiff"].soft_label
    strengths = np.array([3.90, 0.13, 0.26, 0.10, 0.03, 0.10])  # rating - 1
    expected = dict(zip(("happy", "sad", "surprise", "angry", "disgust", "fear"),
                        strengths / strengths.sum(), strict=True))
    for name, value in zip(CLASS_NAMES, soft, strict=True):
        assert value == pytest.approx(expected.get(name, 0.0))
    for item in items:
        assert len(item.soft_label) == len(CLASS_NAMES)
        assert sum(item.soft_label) == pytest.approx(1.0)
        assert item.soft_label[CLASS_NAMES.index("neutral")] == 0.0


def test_images_decode_to_256x256(items, jaffe):
    reader = Jaffe()
    shapes = Counter(reader.load(jaffe, item).shape for item in items)
    # 190 gray TIFFs and 23 palette TIFFs (decoded as RGB).
    assert shapes == {(256, 256): 190, (256, 256, 3): 23}


# Small JAFFE copies written by the tests.


def write_jaffe(root: Path, names: list[str], labels: str | bytes | None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        assert cv2.imwrite(str(root / name), np.full((32, 32), 100, np.uint8))
    if labels is not None:
        data = labels.encode() if isinstance(labels, str) else labels
        (root / "JAFFE_labels.txt").write_bytes(data)
    return root


def test_header_comments_and_column_order_are_read_from_the_file(tmp_path):
    labels = (
        "# JAFFE semantic ratings, 60 raters\n"
        "#  SAD HAP SUR ANG DIS FEA PIC\n"
        "\n"
        "1 1.00 5.00 1.00 1.00 1.00 3.00 AB-HA1\n"
    )
    root = write_jaffe(tmp_path, ["AB.HA1.1.tiff"], labels)
    (item,) = Jaffe().scan(root)
    # Columns follow the header: HAP = 5.00, SAD = 1.00, FEA = 3.00 → strengths 1 and 0.5.
    assert Jaffe().ratings(root)["AB.HA1.1.tiff"] == (5.0, 1.0, 1.0, 1.0, 1.0, 3.0)
    assert dict(zip(CLASS_NAMES, item.soft_label, strict=True)) == pytest.approx(
        {"angry": 0, "disgust": 0, "fear": 1 / 3, "happy": 2 / 3, "sad": 0, "surprise": 0,
         "neutral": 0}
    )
    assert RATING_COLUMNS == ("HAP", "SAD", "SUR", "ANG", "DIS", "FEA")


def test_a_renumbered_expression_is_matched_by_the_image_id(tmp_path):
    # The image is HA2 but the file calls line 7 "AB-HA1": same subject and expression.
    labels = "7 5.00 1.00 1.00 1.00 1.00 1.00 AB-HA1\n8 1.00 5.00 1.00 1.00 1.00 1.00 AB-SA1\n"
    root = write_jaffe(tmp_path, ["AB.HA2.7.tiff", "AB.SA1.8.tiff", "AB.NE1.9.tiff",
                                  "CD.SA1.7.tiff"], labels)
    ratings = Jaffe().ratings(root)
    assert ratings == {
        "AB.HA2.7.tiff": (5.0, 1.0, 1.0, 1.0, 1.0, 1.0),
        "AB.SA1.8.tiff": (1.0, 5.0, 1.0, 1.0, 1.0, 1.0),
    }  # line 7 is not CD's sad face, and AB-NE1 has no line
    soft = {i.source_file: i.soft_label for i in Jaffe().scan(root)}
    assert soft["AB.NE1.9.tiff"] is None and soft["CD.SA1.7.tiff"] is None


def test_a_copy_without_the_ratings_file_has_hard_labels_only(tmp_path):
    root = write_jaffe(tmp_path, ["AB.SU1.1.tiff", "CD.FE2.2.tiff"], None)
    items = list(Jaffe().scan(root))
    assert [(i.label_name, i.subject_id, i.soft_label) for i in items] == [
        ("surprise", "AB", None), ("fear", "CD", None)]


def test_all_ratings_at_the_bottom_of_the_scale_give_no_soft_label(tmp_path):
    root = write_jaffe(tmp_path, ["AB.NE1.1.tiff"], "1 1 1 1 1 1 1 AB-NE1\n")
    (item,) = Jaffe().scan(root)
    assert item.soft_label is None


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ("1 2.87 2.52 2.10 1.97 1.97 AB-NE1\n", r"line 1: expected '<id> <6 ratings> <key>'"),
        ("1 2.87 x 2.10 1.97 1.97 2.06 AB-NE1\n", r"line 1, column 'SAD': 'x' is not a number"),
        ("# c\n1 2.87 2.52 2.10 1.97 1.97 7.5 AB-NE1\n", r"line 2, column 'FEA': rating 7.5"),
        ("# only comments\n", r"no rating lines"),
        (b"1 2.87 2.52 2.10 1.97 1.97 2.06 AB-NE1\n# r\xe9sum\xe9\n", r"line 2: not UTF-8"),
    ],
)
def test_malformed_ratings_files_name_the_file_and_line(tmp_path, labels, message):
    root = write_jaffe(tmp_path, ["AB.NE1.1.tiff"], labels)
    with pytest.raises(DatasetFormatError, match=message) as err:
        list(Jaffe().scan(root))
    assert "JAFFE_labels.txt" in str(err.value)


def test_bad_layouts_are_refused_with_the_path(tmp_path):
    with pytest.raises(DatasetFormatError, match="no JAFFE images"):
        list(Jaffe().scan(tmp_path))
    with pytest.raises(DatasetFormatError, match="not a folder"):
        list(Jaffe().scan(tmp_path / "missing"))
    write_jaffe(tmp_path, ["AB.XX1.1.tiff"], None)
    with pytest.raises(DatasetFormatError, match=r"AB\.XX1\.1\.tiff: not a JAFFE file name"):
        list(Jaffe().scan(tmp_path))
