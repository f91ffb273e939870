"""Generic class-folders reader on tiny folders of PNGs written here (AI-Hub-style names)."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import cv2
import numpy as np
import pytest

from ray_fer.data.formats import DatasetFormatError, get_reader
from ray_fer.data.formats.class_folders import ClassFolders

#: AI-Hub's Korean class folder names; 행복 ("happiness") shares a class with 기쁨 ("joy").
AIHUB_MAP = {
    "기쁨": "happy", "분노": "anger", "불안": "anxiety", "상처": "hurt",
    "슬픔": "sad", "중립": "neutral", "행복": "happy",
}  # fmt: skip
AIHUB_CLASSES = ["happy", "anger", "anxiety", "hurt", "sad", "neutral"]


def _write_image(path: Path, seed: int) -> np.ndarray:
    """Write a random 8x6 RGB PNG; returns its pixels in RGB order."""
    rgb = np.random.default_rng(seed).integers(0, 256, (8, 6, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return rgb


@pytest.fixture
def aihub(tmp_path) -> tuple[Path, dict[str, np.ndarray]]:
    """``<split>/<korean class>/[<clip>/]img.png`` with every split spelling; → root, pixels."""
    written = {}
    layout = {
        "train": ["기쁨/a.png", "기쁨/clip1/b.png", "행복/c.png", "분노/a.png", "불안/a.png"],
        "valid": ["상처/a.png", "슬픔/a.png"],
        "test": ["중립/a.png", "기쁨/a.png"],
    }
    seed = 0
    for split, files in layout.items():
        for f in files:
            seed += 1
            written[f"{split}/{f}"] = _write_image(tmp_path / split / f, seed)
    return tmp_path, written


def test_korean_folders_map_to_canonical_classes_and_splits(aihub):
    root, written = aihub
    reader = get_reader("class-folders", class_map=AIHUB_MAP)
    assert reader.class_names(root) == AIHUB_CLASSES
    items = list(reader.scan(root))
    assert [(i.source_file, i.label_name, i.label, i.split) for i in items] == [
        ("test/기쁨/a.png", "happy", 0, "test"),
        ("test/중립/a.png", "neutral", 5, "test"),
        ("train/기쁨/a.png", "happy", 0, "train"),
        ("train/기쁨/clip1/b.png", "happy", 0, "train"),
        ("train/분노/a.png", "anger", 1, "train"),
        ("train/불안/a.png", "anxiety", 2, "train"),
        ("train/행복/c.png", "happy", 0, "train"),
        ("valid/상처/a.png", "hurt", 3, "val"),
        ("valid/슬픔/a.png", "sad", 4, "val"),
    ]
    assert reader.split_source() == {"train": "train", "val": "valid", "test": "test"}
    assert reader.dataset == "class-folders" and not any(i.needs_detection for i in items)
    for item in items:
        np.testing.assert_array_equal(reader.load(root, item), written[item.source_file])


def test_decomposed_unicode_folder_names_match_the_map(tmp_path):
    # macOS writes Hangul decomposed (NFD); the map is typed composed (NFC).
    for folder in ("기쁨", "슬픔"):
        _write_image(tmp_path / unicodedata.normalize("NFD", folder) / "a.png", 1)
    items = list(ClassFolders(class_map=AIHUB_MAP).scan(tmp_path))
    assert [i.label_name for i in items] == ["happy", "sad"]
    assert all((tmp_path / i.source_file).is_file() for i in items)


def test_without_split_folders_everything_is_train_with_sorted_folder_classes(tmp_path):
    for folder in ("sad", "angry", "happy"):
        _write_image(tmp_path / folder / "x.jpg", 2)
    reader = ClassFolders(needs_detection=True, dataset="mine")
    assert reader.class_names(tmp_path) == ["angry", "happy", "sad"]
    items = list(reader.scan(tmp_path))
    assert [(i.label, i.split, i.needs_detection) for i in items] == [
        (0, "train", True), (1, "train", True), (2, "train", True)
    ]  # fmt: skip
    assert reader.split_source() == {} and reader.dataset == "mine"


def test_class_names_option_fixes_the_label_order(tmp_path):
    for folder in ("happy", "sad"):
        _write_image(tmp_path / "train" / folder / "x.png", 3)
    reader = ClassFolders(class_names=["sad", "neutral", "happy"])
    assert [(i.label_name, i.label) for i in reader.scan(tmp_path)] == [("happy", 2), ("sad", 0)]


def test_unknown_folder_is_an_error_naming_it_unless_ignored(aihub):
    root, _ = aihub
    _write_image(root / "train" / "당황" / "a.png", 4)
    with pytest.raises(DatasetFormatError, match="unknown class folder '당황'") as err:
        list(ClassFolders(class_map=AIHUB_MAP).scan(root))
    assert str(root / "train" / "당황") in str(err.value)
    assert "ignore_unknown=True" in str(err.value)
    items = list(ClassFolders(class_map=AIHUB_MAP, ignore_unknown=True).scan(root))
    assert len(items) == 9 and not any("당황" in i.source_file for i in items)


def _write_text(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("not an image")


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda r: (r / "train" / "happy").mkdir(parents=True), "no images"),
        (lambda r: _write_text(r / "happy" / "notes.txt"), "no images"),
        (lambda r: None, "no folders inside"),
        (lambda r: (_write_text(r / "train" / "x" / "t"), (r / "happy").mkdir()), "mixes"),
    ],
    ids=["empty-class-folder", "folder-without-images", "empty-root", "splits-mixed-with-classes"],
)
def test_bad_layouts_raise_errors_naming_the_path(tmp_path, make, expected):
    make(tmp_path)
    with pytest.raises(DatasetFormatError, match=expected) as err:
        list(ClassFolders().scan(tmp_path))
    assert str(tmp_path) in str(err.value)


def test_nothing_left_after_ignoring_unknown_folders_is_an_error(tmp_path):
    _write_image(tmp_path / "cats" / "a.png", 5)
    with pytest.raises(DatasetFormatError, match="nothing to read"):
        list(ClassFolders(class_map=AIHUB_MAP, ignore_unknown=True).scan(tmp_path))


def test_inconsistent_options_are_refused():
    with pytest.raises(ValueError, match="class_names .* lacks"):
        ClassFolders(class_map=AIHUB_MAP, class_names=["happy", "sad"])
    with pytest.raises(ValueError, match="duplicates"):
        ClassFolders(class_names=["happy", "happy"])
    nfd = unicodedata.normalize("NFD", "기쁨")
    with pytest.raises(ValueError, match="two classes"):
        ClassFolders(class_map={"기쁨": "happy", nfd: "sad"})
