"""FER2013 readers: the image-folder release on the real data, the Kaggle CSV on files
written here in Kaggle's exact format (from real images of the folder release)."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from ray_fer.data.formats import DatasetFormatError, get_reader
from ray_fer.data.formats.fer2013 import CLASS_NAMES, Fer2013Csv, Fer2013Folders

PIXELS_OK = " ".join(["7"] * 2304)
FIRST_PIXEL_IS = {v: PIXELS_OK.replace("7", v, 1) for v in ("7.5", "256")}


@pytest.fixture(scope="module")
def fer2013(real_dataset) -> Path:
    return real_dataset("fer2013")


@pytest.fixture(scope="module")
def folder_items(fer2013):
    return list(Fer2013Folders().scan(fer2013))


def test_folder_release_counts_match_the_datasets_readme(folder_items):
    assert Counter(i.split for i in folder_items) == {"train": 28_709, "val": 3_589}
    train = Counter(i.label_name for i in folder_items if i.split == "train")
    assert train == {
        "angry": 3995, "disgust": 436, "fear": 4097, "happy": 7215,
        "neutral": 4965, "sad": 4830, "surprise": 3171,
    }  # fmt: skip


def test_folder_split_comes_from_the_file_name_prefix(folder_items):
    expected = {"Training": "train", "PublicTest": "val"}
    for item in folder_items:
        assert item.split == expected[Path(item.source_file).name.split("_")[0]]


def test_folder_labels_use_kaggle_index_order_and_class_folder(folder_items, fer2013):
    assert CLASS_NAMES == ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
    assert get_reader("fer2013-folders").class_names(fer2013) == list(CLASS_NAMES)
    assert get_reader("fer2013-csv").class_names(fer2013) == list(CLASS_NAMES)
    for item in folder_items:
        folder = item.source_file.split("/")[1]
        assert (item.label_name, item.label) == (folder, CLASS_NAMES.index(folder))


def test_folder_items_are_sorted_relative_posix_paths(folder_items, fer2013):
    files = [i.source_file for i in folder_items]
    assert files == sorted(files)
    assert all(not f.startswith("/") and "\\" not in f for f in files)
    assert (fer2013 / files[0]).is_file() and (fer2013 / files[-1]).is_file()


def test_a_sample_of_folder_images_decodes_to_48x48_uint8(folder_items, fer2013):
    reader = Fer2013Folders()
    for item in folder_items[::1500]:
        image = reader.load(fer2013, item)
        assert image.shape == (48, 48) and image.dtype == np.uint8


def _write_png(path: Path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((48, 48), value, np.uint8))


def test_private_test_prefix_goes_to_the_test_split(tmp_path):
    _write_png(tmp_path / "train" / "happy" / "Training_1.png")
    _write_png(tmp_path / "test" / "sad" / "PublicTest_2.png")
    _write_png(tmp_path / "test" / "sad" / "PrivateTest_3.png")
    items = list(Fer2013Folders().scan(tmp_path))
    assert [(i.source_file, i.split) for i in items] == [
        ("test/sad/PrivateTest_3.png", "test"),
        ("test/sad/PublicTest_2.png", "val"),
        ("train/happy/Training_1.png", "train"),
    ]


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda r: _write_png(r / "train" / "contempt" / "Training_1.png"), "'contempt'"),
        (lambda r: (r / "train" / "happy").mkdir(parents=True), "no images"),
        (lambda r: _write_png(r / "train" / "happy" / "img_1.png"), "cannot tell the split"),
        (lambda r: r.mkdir(exist_ok=True), "no folders inside"),
        (lambda r: _write_png(r / "happy" / "Training_1.png"), "directly under the root"),
    ],
    ids=[
        "unknown-class-folder",
        "empty-class-folder",
        "no-usage-prefix",
        "empty-root",
        "root-is-a-split-folder",
    ],
)
def test_bad_folder_layouts_raise_errors_naming_the_path(tmp_path, make, expected):
    make(tmp_path)
    with pytest.raises(DatasetFormatError, match=expected) as err:
        list(Fer2013Folders().scan(tmp_path))
    assert str(tmp_path) in str(err.value)


def _write_csv(path: Path, rows: list[list[str]], header=("emotion", "pixels", "Usage")) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_csv_reads_back_the_folder_release_pixels_and_labels(folder_items, fer2013, tmp_path):
    folders = Fer2013Folders()
    # Two training and one PublicTest image of every class, in Kaggle's format.
    picked = []
    for name in CLASS_NAMES:
        of_class = [i for i in folder_items if i.label_name == name]
        picked += [i for i in of_class if i.split == "train"][:2]
        picked += [i for i in of_class if i.split == "val"][:1]
    images = [folders.load(fer2013, i) for i in picked]
    usage = {"train": "Training", "val": "PublicTest"}
    rows = [
        [str(i.label), " ".join(map(str, img.ravel())), usage[i.split]]
        for i, img in zip(picked, images, strict=True)
    ]
    path = _write_csv(tmp_path / "fer2013.csv", rows)

    reader = get_reader("fer2013-csv")
    for root in (path, tmp_path):  # the CSV itself, or the folder holding it
        items = list(reader.scan(root))
        assert [(i.label, i.label_name, i.split) for i in items] == [
            (i.label, i.label_name, i.split) for i in picked
        ]
        assert [i.source_file for i in items] == [f"fer2013.csv:{n + 2}" for n in range(len(rows))]
        for item, image in zip(items, images, strict=True):
            loaded = reader.load(root, item)
            assert loaded.dtype == np.uint8
            np.testing.assert_array_equal(loaded, image)


def test_csv_usage_values_map_to_canonical_splits_with_any_column_order(tmp_path):
    # The Kaggle "icml_face_data.csv" copy writes the header as "emotion, Usage, pixels".
    path = _write_csv(
        tmp_path / "icml_face_data.csv",
        [
            ["3", "Training", PIXELS_OK],
            ["6", "PublicTest", PIXELS_OK],
            ["0", "PrivateTest", "0 " * 2304],
        ],
        header=("emotion", " Usage", " pixels"),
    )
    items = list(Fer2013Csv().scan(path))
    assert [(i.label_name, i.split) for i in items] == [
        ("happy", "train"), ("neutral", "val"), ("angry", "test")
    ]  # fmt: skip
    assert Fer2013Csv().split_source() == {
        "train": "Training", "val": "PublicTest", "test": "PrivateTest"
    }  # fmt: skip


def test_csv_rows_stream_one_at_a_time(tmp_path):
    rows = [["1", PIXELS_OK, "Training"], ["9", PIXELS_OK, "Training"]]
    path = _write_csv(tmp_path / "fer2013.csv", rows)
    items = Fer2013Csv().scan(path)
    assert next(items).label_name == "disgust"  # line 2 is read before line 3 is parsed
    with pytest.raises(DatasetFormatError, match="line 3"):
        next(items)


@pytest.mark.parametrize(
    ("header", "row", "expected"),
    [
        (("emotion", "pixels"), ["0", PIXELS_OK], ["missing column", "Usage"]),
        (None, ["0", " ".join(["7"] * 2303), "Training"], ["line 3", "'pixels'", "2303 values"]),
        (None, ["0", FIRST_PIXEL_IS["7.5"], "Training"], ["line 3", "'pixels'", "'7.5'"]),
        (None, ["0", FIRST_PIXEL_IS["256"], "Training"], ["line 3", "'pixels'", "'256'"]),
        (None, ["7", PIXELS_OK, "Training"], ["line 3", "'emotion'", "out of range"]),
        (None, ["happy", PIXELS_OK, "Training"], ["line 3", "'emotion'", "not an integer"]),
        (None, ["0", PIXELS_OK, "Validation"], ["line 3", "'Usage'", "'Validation'"]),
        (None, ["0", PIXELS_OK], ["line 3", "2 fields"]),
    ],
    ids=[
        "missing-column",
        "pixel-count",
        "non-integer-pixel",
        "pixel-over-255",
        "label-out-of-range",
        "non-integer-label",
        "unknown-usage",
        "short-row",
    ],
)
def test_malformed_csv_errors_name_file_line_and_column(tmp_path, header, row, expected):
    header = header or ("emotion", "pixels", "Usage")
    good = ["0", PIXELS_OK, "Training"][: len(header)]
    path = _write_csv(tmp_path / "fer2013.csv", [good, row], header=header)
    with pytest.raises(DatasetFormatError) as err:
        list(Fer2013Csv().scan(path))
    message = str(err.value)
    assert str(path) in message
    for part in expected:
        assert part in message


def test_folder_without_the_csv_is_an_error_saying_what_to_pass(tmp_path):
    with pytest.raises(DatasetFormatError, match="no fer2013.csv"):
        list(Fer2013Csv().scan(tmp_path))
