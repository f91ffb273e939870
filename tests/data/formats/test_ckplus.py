"""CK+48 reader: real class folders, subject ids from file names, bad layouts."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from ray_fer.data.formats import DatasetFormatError, get_reader
from ray_fer.data.formats.ckplus import CLASS_NAMES, CkPlus48


@pytest.fixture(scope="module")
def ckplus(real_dataset) -> Path:
    return real_dataset("ckplus48")


@pytest.fixture(scope="module")
def items(ckplus):
    return list(get_reader("ckplus48").scan(ckplus))


def test_counts_match_the_datasets_readme(items):
    assert len(items) == 981
    assert len({i.subject_id for i in items}) == 118


def test_items_have_class_from_folder_subject_from_name_and_train_split(items, ckplus):
    assert CkPlus48().class_names(ckplus) == list(CLASS_NAMES)
    assert {i.label_name for i in items} == set(CLASS_NAMES)
    for item in items:
        folder, name = item.source_file.split("/")
        assert (item.label_name, item.label) == (folder, CLASS_NAMES.index(folder))
        assert name.startswith(item.subject_id + "_")
        assert item.subject_id[0] == "S" and item.subject_id[1:].isdigit()
        assert item.split == "train"
    assert CkPlus48().split_source() == {}


def test_items_are_sorted_and_each_of_327_sequences_has_three_peak_frames(items):
    files = [i.source_file for i in items]
    assert files == sorted(files)
    sequences = Counter(Path(f).name.rsplit("_", 1)[0] for f in files)
    assert len(sequences) == 327 and set(sequences.values()) == {3}


def test_a_sample_of_images_decodes_to_48x48_uint8(items, ckplus):
    reader = CkPlus48()
    for item in items[::100]:
        image = reader.load(ckplus, item)
        assert image.shape == (48, 48) and image.dtype == np.uint8


def _write_png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.zeros((48, 48), np.uint8))


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda r: _write_png(r / "neutral" / "S010_001_00000001.png"), "'neutral'"),
        (lambda r: (r / "happy").mkdir(), "no images"),
        (lambda r: _write_png(r / "happy" / "face01.png"), "S<subject>_<sequence>_<frame>"),
        (lambda r: None, "no class folders"),
    ],
    ids=["unknown-class-folder", "empty-class-folder", "file-name-without-subject", "empty-root"],
)
def test_bad_layouts_raise_errors_naming_the_path(tmp_path, make, expected):
    make(tmp_path)
    with pytest.raises(DatasetFormatError, match=expected) as err:
        list(CkPlus48().scan(tmp_path))
    assert str(tmp_path) in str(err.value)
