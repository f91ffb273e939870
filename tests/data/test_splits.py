"""Subject-independent, seeded, balanced k-folds; class-stratified hold-out splits."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from ray_fer.data.splits import assign_folds, carve_validation, stratified_holdout


def subjects_of(n_subjects: int, n_rows: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [f"S{rng.integers(n_subjects):03d}" for _ in range(n_rows)]


def test_no_subject_is_in_two_folds():
    subjects = subjects_of(118, 981)
    folds = assign_folds(subjects, 10, seed=0)
    fold_of: dict[str, set[int]] = {}
    for s, f in zip(subjects, folds, strict=True):
        fold_of.setdefault(s, set()).add(f)
    assert all(len(fs) == 1 for fs in fold_of.values())
    assert set(folds) == set(range(10))


def test_folds_are_balanced_in_rows():
    sizes = Counter(assign_folds(subjects_of(118, 981), 10, seed=3))
    assert max(sizes.values()) - min(sizes.values()) <= 20


def test_deterministic_per_seed_and_independent_of_row_order():
    subjects = subjects_of(50, 400)
    assert assign_folds(subjects, 5, seed=7) == assign_folds(subjects, 5, seed=7)
    assert assign_folds(subjects, 5, seed=7) != assign_folds(subjects, 5, seed=8)
    order = np.random.default_rng(0).permutation(len(subjects))
    shuffled = assign_folds([subjects[i] for i in order], 5, seed=7)
    original = dict(zip(subjects, assign_folds(subjects, 5, seed=7), strict=True))
    assert all(original[subjects[i]] == f for i, f in zip(order, shuffled, strict=True))


def test_rows_without_subject_are_their_own_groups():
    folds = assign_folds([""] * 12, 4, seed=0)
    assert sorted(Counter(folds).values()) == [3, 3, 3, 3]


def test_k_must_be_positive():
    with pytest.raises(ValueError, match="k must be >= 1"):
        assign_folds(["a"], 0, seed=0)


JAFFE_SIZES = {"train": 120, "val": 23, "test": 70}


def test_holdout_has_the_exact_sizes_and_each_split_keeps_the_class_mix():
    labels = np.repeat(np.arange(7), [30, 29, 32, 31, 30, 31, 30])  # JAFFE's 213 per class
    split = stratified_holdout(labels.tolist(), JAFFE_SIZES, seed=0)
    assert Counter(split) == JAFFE_SIZES
    for name, size in JAFFE_SIZES.items():
        per_class = Counter(labels[np.array(split) == name].tolist())
        expected = np.bincount(labels) * size / len(labels)
        # Interleaving by within-class rank keeps every class within one row of its share.
        assert all(abs(per_class[c] - expected[c]) < 1.0 + 1e-9 for c in range(7)), name


def test_holdout_is_deterministic_per_seed():
    labels = np.random.default_rng(1).integers(0, 7, 213).tolist()
    first = stratified_holdout(labels, JAFFE_SIZES, seed=3)
    assert first == stratified_holdout(labels, JAFFE_SIZES, seed=3)
    assert first != stratified_holdout(labels, JAFFE_SIZES, seed=4)


def test_holdout_sizes_must_cover_every_row():
    with pytest.raises(ValueError, match="add up to the 10 rows"):
        stratified_holdout([0] * 10, {"train": 8, "test": 1}, seed=0)


def test_carved_validation_keeps_each_class_share_without_subjects():
    labels = np.repeat(np.arange(7), [3995, 436, 4097, 7215, 4965, 4830, 3171])  # FER2013
    chosen = carve_validation(labels.tolist(), [""] * len(labels), 0.1, seed=0)
    val = Counter(labels[np.asarray(chosen)].tolist())
    for c, n in Counter(labels.tolist()).items():
        assert abs(val[c] - 0.1 * n) <= 1
    assert carve_validation(labels.tolist(), [""] * len(labels), 0.1, seed=0) == chosen
    assert carve_validation(labels.tolist(), [""] * len(labels), 0.1, seed=1) != chosen


def test_carved_validation_never_splits_a_subject():
    subjects = subjects_of(118, 981)
    labels = np.random.default_rng(1).integers(0, 7, len(subjects)).tolist()
    chosen = carve_validation(labels, subjects, 0.2, seed=0)
    side: dict[str, set[bool]] = {}
    for s, c in zip(subjects, chosen, strict=True):
        side.setdefault(s, set()).add(c)
    assert all(len(v) == 1 for v in side.values())
    assert 0.15 <= sum(chosen) / len(chosen) <= 0.25


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_carved_validation_fraction_must_be_inside_zero_one(fraction):
    with pytest.raises(ValueError, match="validation fraction"):
        carve_validation([0, 1], ["", ""], fraction, seed=0)
