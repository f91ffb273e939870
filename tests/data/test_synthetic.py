"""The embedded procedural face set: determinism, labels, splits, pairs, difficulty, cache."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest

from ray_fer.data.formats import DatasetFormatError, SourceItem, get_reader
from ray_fer.data.synthetic import (
    CLASS_NAMES,
    SyntheticFaces,
    default_cache_dir,
    ensure_default_shards,
)
from ray_fer.data.targets import anchor_matrix


@pytest.fixture(scope="module")
def default_items() -> list[SourceItem]:
    return list(SyntheticFaces().scan(Path("default")))


def test_registered_as_format_synthetic_and_ignores_the_source():
    reader = get_reader("synthetic", subjects=4, images_per_subject=7)
    assert isinstance(reader, SyntheticFaces)
    assert reader.class_names(Path("x")) == list(CLASS_NAMES)
    assert list(reader.scan(Path("default"))) == list(reader.scan(Path("/no/such/dir")))


def test_classes_are_fer2013_names_in_fer2013_label_order():
    assert SyntheticFaces().class_names(Path("d")) == [
        "angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]


def test_default_set_is_60_subjects_of_70_faces_10_per_class(default_items):
    assert len(default_items) == 4200
    per_subject = Counter(it.subject_id for it in default_items)
    assert len(per_subject) == 60 and set(per_subject.values()) == {70}
    per_subject_class = Counter((it.subject_id, it.label) for it in default_items)
    assert set(per_subject_class.values()) == {10}
    first = default_items[3]
    assert first.subject_id == "p000" and first.key == "p000/0003"
    assert first.source_file == "synthetic/p000/0003.png"
    assert first.label_name == CLASS_NAMES[first.label]


def test_same_seed_gives_identical_pixels_and_metadata():
    a, b = SyntheticFaces(subjects=3, images_per_subject=7), SyntheticFaces(subjects=3,
                                                                           images_per_subject=7)
    items_a, items_b = list(a.scan(Path("d"))), list(b.scan(Path("d")))
    assert items_a == items_b
    for ia, ib in zip(items_a, items_b, strict=True):
        np.testing.assert_array_equal(a.load(Path("d"), ia), b.load(Path("d"), ib))


def test_different_subjects_and_seeds_give_different_faces():
    reader = SyntheticFaces(subjects=3, images_per_subject=7)
    items = list(reader.scan(Path("d")))
    # Same category (neutral), different people.
    p0, p1 = (reader.load(Path("d"), it) for it in (items[6], items[13]))
    assert items[6].label == items[13].label
    assert np.abs(p0.astype(int) - p1.astype(int)).mean() > 10
    other = SyntheticFaces(subjects=3, images_per_subject=7, seed=1)
    other_items = list(other.scan(Path("d")))
    assert [it.valence for it in other_items] != [it.valence for it in items]
    assert np.abs(other.load(Path("d"), other_items[6]).astype(int) - p0).mean() > 10


@pytest.mark.parametrize("size", [48, 64, 100])
def test_images_are_rgb_uint8_of_the_requested_size(size):
    reader = SyntheticFaces(subjects=3, images_per_subject=7, size=size)
    for item in list(reader.scan(Path("d")))[:7]:
        img = reader.load(Path("d"), item)
        assert img.shape == (size, size, 3) and img.dtype == np.uint8
        assert img.std() > 20  # a drawn face, not a flat fill


def test_each_category_mean_va_is_near_its_anchor_and_all_va_in_unit_disk(default_items):
    anchors = anchor_matrix(CLASS_NAMES)
    va = np.array([(it.valence, it.arousal) for it in default_items])
    labels = np.array([it.label for it in default_items])
    assert (np.hypot(va[:, 0], va[:, 1]) <= 1 + 1e-9).all()
    for c, name in enumerate(CLASS_NAMES):
        # Happiness lies just outside the unit disk: compare with its point on the circle.
        anchor = anchors[c] / max(1.0, np.hypot(*anchors[c]))
        mean = va[labels == c].mean(axis=0)
        assert np.hypot(*(mean - anchor)) < 0.12, (name, mean, anchor)
    # Spread around the anchors: intensities vary (CAF's strong/weak split needs both).
    r = np.hypot(va[:, 0], va[:, 1])[labels != CLASS_NAMES.index("neutral")]
    assert r.min() < 0.5 < r.max()


def test_soft_labels_are_distributions_that_mostly_peak_at_the_label(default_items):
    soft = np.array([it.soft_label for it in default_items])
    labels = np.array([it.label for it in default_items])
    assert soft.shape == (4200, 7)
    np.testing.assert_allclose(soft.sum(axis=1), 1.0, atol=1e-9)
    agree = (soft.argmax(axis=1) == labels).mean()
    assert 0.8 < agree < 1.0  # overlap between neighbouring categories, but consistent


def test_subject_splits_are_disjoint_70_15_15_and_hold_every_class(default_items):
    subjects = defaultdict(set)
    classes = defaultdict(set)
    for it in default_items:
        subjects[it.split].add(it.subject_id)
        classes[it.split].add(it.label)
    assert {s: len(v) for s, v in subjects.items()} == {"train": 42, "val": 9, "test": 9}
    assert not (subjects["train"] & subjects["val"] or subjects["train"] & subjects["test"]
                or subjects["val"] & subjects["test"])
    assert all(classes[s] == set(range(7)) for s in ("train", "val", "test"))
    assert set(SyntheticFaces().split_source()) == {"train", "val", "test"}


def test_splits_none_puts_every_face_in_train():
    reader = SyntheticFaces(subjects=2, images_per_subject=7, splits="none")
    assert {it.split for it in reader.scan(Path("d"))} == {"train"}
    assert reader.split_source() == {}


def test_every_subject_has_pairs_with_different_expressions(default_items):
    by_subject = defaultdict(list)
    for it in default_items:
        by_subject[it.subject_id].append(it)
    for items in by_subject.values():
        va = {(it.valence, it.arousal) for it in items}
        assert len({it.label for it in items}) == 7 and len(va) == len(items)


def test_raw_pixels_separate_classes_above_chance_but_far_from_perfectly():
    """A nearest-class-mean classifier on gray pixels (each image standardised, nothing
    else), fitted on some people and tested on others: the expressions carry signal, but
    identity, pose and light hide most of it, so the task is not trivial."""
    reader = SyntheticFaces(subjects=30, size=32)
    items = list(reader.scan(Path("d")))
    gray = np.stack([cv2.cvtColor(reader.load(Path("d"), it), cv2.COLOR_RGB2GRAY).ravel()
                     for it in items]).astype(np.float32)
    y = np.array([it.label for it in items])
    train = np.array([it.split == "train" for it in items])
    chance = 1 / 7

    def nearest_class_mean(x: np.ndarray) -> float:
        means = np.stack([x[train & (y == c)].mean(axis=0) for c in range(7)])
        dist = ((x[~train, None, :] - means[None]) ** 2).sum(axis=-1)
        return float((dist.argmin(axis=1) == y[~train]).mean())

    standardised = (gray - gray.mean(axis=1, keepdims=True)) / gray.std(axis=1, keepdims=True)
    assert chance + 0.08 < nearest_class_mean(standardised) < 0.6
    # Mean intensity alone carries (next to) nothing.
    assert nearest_class_mean(gray.mean(axis=1, keepdims=True)) < chance + 0.05


def test_bad_options_and_foreign_keys_are_refused():
    with pytest.raises(ValueError, match="splits"):
        SyntheticFaces(splits="random")
    with pytest.raises(ValueError, match="subjects >= 3"):
        SyntheticFaces(subjects=2)
    with pytest.raises(ValueError, match="size"):
        SyntheticFaces(size=8)
    with pytest.raises(ValueError, match="seed"):
        SyntheticFaces(seed=-1)
    item = SourceItem(source_file="x.png", label=0, key="not-a-key")
    with pytest.raises(DatasetFormatError, match="x.png"):
        SyntheticFaces(subjects=3).load(Path("d"), item)


def test_default_cache_dir_depends_on_the_stored_shape():
    gray, rgb = default_cache_dir(48, 1), default_cache_dir(64, 3)
    assert gray != rgb and gray.name.startswith("synthetic-v1-")
    assert gray.parent == Path.home() / ".cache" / "ray_fer"


def test_ensure_default_shards_never_overwrites_a_folder_of_other_files(tmp_path):
    from ray_fer.data.shards import ShardError

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ShardError, match="notes.txt"):
        ensure_default_shards(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_ensure_default_shards_builds_once_replacing_an_incomplete_folder(tmp_path):
    from ray_fer.data.shards import read_manifest, verify_shards
    from ray_fer.storage import resolve

    cache = tmp_path / "synthetic"
    cache.mkdir()
    (cache / "shard-00000.parquet").write_bytes(b"left by an interrupted build")
    uri = ensure_default_shards(cache)
    manifest = read_manifest(resolve(uri))
    assert Path(uri) == cache.resolve()
    assert manifest.num_rows == 4200 and manifest.image_shape == [48, 48, 1]
    assert manifest.class_names == list(CLASS_NAMES) and manifest.format == "synthetic"
    assert {s: sum(c.values()) for s, c in manifest.counts.items()} == {
        "train": 2940, "val": 630, "test": 630}
    stamp = (cache / "manifest.json").stat().st_mtime_ns
    assert ensure_default_shards(cache) == uri
    assert (cache / "manifest.json").stat().st_mtime_ns == stamp
    assert not list(tmp_path.glob(".synthetic.tmp-*"))
    verify_shards(resolve(uri), manifest)  # the interrupted build's file is gone
