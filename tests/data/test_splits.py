"""Subject-independent, seeded, balanced k-fold assignment."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from ray_fer.data.splits import assign_folds


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
