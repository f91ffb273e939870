"""Taiwanese reader: real images and observer ratings, file-name variants, bad input."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from ray_fer.data.formats import DatasetFormatError, get_reader
from ray_fer.data.formats.fer2013 import CLASS_NAMES
from ray_fer.data.formats.taiwanese import INTENSITY_COLUMNS, SHARE_COLUMNS, Taiwanese


@pytest.fixture(scope="module")
def taiwanese(real_dataset) -> Path:
    return real_dataset("taiwanese")


@pytest.fixture(scope="module")
def items(taiwanese):
    return list(get_reader("taiwanese").scan(taiwanese))


def test_counts_match_the_datasets_readme(items):
    assert len(items) == 1232
    assert len({i.subject_id for i in items}) == 29
    assert sum(i.soft_label is not None for i in items) == 1223


def test_labels_and_performers_come_from_file_names(items, taiwanese):
    assert Taiwanese().class_names(taiwanese) == list(CLASS_NAMES)
    assert Counter(i.label_name for i in items) == {
        "happy": 226, "angry": 200, "disgust": 198, "sad": 197, "surprise": 182, "fear": 151,
        "neutral": 78,
    }
    letters = dict(zip("abcdefg", ("neutral", "happy", "sad", "angry", "disgust", "fear",
                                   "surprise"), strict=True))
    for item in items:
        name = Path(item.source_file).name
        assert item.source_file == f"faces_256x256/{name}"
        assert item.subject_id == name[:2]
        letter = name[4]
        # Nine calm-baseline names lack the letter (1201002.jpg): neutral, unrated.
        assert item.label_name == letters.get(letter, "neutral")
        assert item.label == CLASS_NAMES.index(item.label_name)
        assert item.needs_detection and item.split == "train"
        if letter.isdigit():
            assert name[2] == "0" and item.soft_label is None


def test_soft_labels_are_the_observer_shares_with_neutral_zero(items, taiwanese):
    ratings = Taiwanese().ratings(taiwanese)
    assert len(ratings) == 2272  # image_info.csv also rates other views
    # image_info.csv: 0101a02.jpg shares happy .59 sad .04 angry .14 disgusted .22
    # fearful 0 surprised .01; intensities .28 .15 .45 .62 .05 .07.
    rated = ratings["0101a02.jpg"]
    assert rated.shares == (0.59, 0.04, 0.14, 0.22, 0.0, 0.01)
    assert rated.intensities == (0.28, 0.15, 0.45, 0.62, 0.05, 0.07)
    item = next(i for i in items if i.source_file.endswith("0101a02.jpg"))
    assert dict(zip(CLASS_NAMES, item.soft_label, strict=True)) == pytest.approx(
        {"angry": 0.14, "disgust": 0.22, "fear": 0.0, "happy": 0.59, "sad": 0.04,
         "surprise": 0.01, "neutral": 0.0}
    )
    for i in items:
        if i.soft_label is not None:
            assert sum(i.soft_label) == pytest.approx(1.0) and i.soft_label[-1] == 0.0


def test_a_sample_of_images_decodes_to_256x256_rgb(items, taiwanese):
    reader = Taiwanese()
    for item in items[::50]:
        image = reader.load(taiwanese, item)
        assert image.shape == (256, 256, 3) and image.dtype == np.uint8


# Small copies written by the tests.

HEADER = ["file_name", "self_evaluate", "observer_count", *SHARE_COLUMNS, *INTENSITY_COLUMNS]


def write_set(root: Path, names: list[str], rows: list[list[str]] | bytes | None) -> Path:
    folder = root / "faces_256x256"
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        assert cv2.imwrite(str(folder / name), np.full((16, 16, 3), 90, np.uint8))
    if isinstance(rows, bytes):
        (root / "image_info.csv").write_bytes(rows)
    elif rows is not None:
        lines = [",".join(HEADER)] + [",".join(r) for r in rows]
        (root / "image_info.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def row(name: str, shares: list[float], intensity: float = 2.0) -> list[str]:
    return [name, "", "100", *map(str, shares), *[str(intensity)] * 6]


def test_unrated_images_and_a_copy_without_image_info_have_no_soft_label(tmp_path):
    root = write_set(tmp_path / "a", ["0111b01.jpg", "0212c03.jpg"],
                     [row("0111b01.jpg", [0.5, 0, 0, 0, 0, 0.5])])
    soft = {Path(i.source_file).name: i.soft_label for i in Taiwanese().scan(root)}
    assert soft["0212c03.jpg"] is None
    assert soft["0111b01.jpg"][CLASS_NAMES.index("happy")] == 0.5
    bare = write_set(tmp_path / "b", ["0111b01.jpg"], None)
    assert [i.soft_label for i in Taiwanese().scan(bare)] == [None]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([row("0111b01.jpg", [1, 0, 0, 0, 0, "x"])], r"line 2, column 'prop_surprised': 'x'"),
        ([row("0111b01.jpg", [1.5, 0, 0, 0, 0, 0])], r"line 2, column 'prop_happy': share 1.5"),
        ([row("0111b01.jpg", [1, 0, 0, 0, 0, 0])[:5]], r"line 2: 5 fields, the header has 15"),
        (b"file_name,prop_happy\n0111b01.jpg,1\n",
         r"missing column\(s\) prop_sad, prop_angry"),
        (",".join(HEADER).encode() + b"\n\xff\xfe,1\n", r"line 2: not UTF-8"),
    ],
)
def test_malformed_image_info_names_the_file_line_and_column(tmp_path, rows, message):
    root = write_set(tmp_path, ["0111b01.jpg"], rows)
    with pytest.raises(DatasetFormatError, match=message) as err:
        list(Taiwanese().scan(root))
    assert "image_info.csv" in str(err.value)


def test_bad_layouts_are_refused_with_the_path(tmp_path):
    with pytest.raises(DatasetFormatError, match="faces_256x256: not a folder"):
        list(Taiwanese().scan(tmp_path))
    (tmp_path / "faces_256x256").mkdir()
    with pytest.raises(DatasetFormatError, match="no .jpg images"):
        list(Taiwanese().scan(tmp_path))
    write_set(tmp_path, ["0111h01.jpg"], None)
    with pytest.raises(DatasetFormatError, match=r"0111h01\.jpg: not a Taiwanese-set file name"):
        list(Taiwanese().scan(tmp_path))
