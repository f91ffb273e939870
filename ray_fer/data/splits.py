"""Seeded split assignment: subject-independent k-folds and class-stratified hold-outs."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np


def assign_folds(subjects: Sequence[str], k: int, seed: int) -> list[int]:
    """Fold index (0..k-1) for each row such that no subject appears in two folds.

    Rows with an empty subject id are their own group. Groups are shuffled with ``seed``
    and then placed largest-first into the fold with the fewest rows, so folds stay
    balanced in size while the result depends only on (subjects, k, seed).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    groups = [s if s else f"\0row{i}" for i, s in enumerate(subjects)]
    sizes = Counter(groups)
    order = sorted(sizes)
    rng = np.random.default_rng(seed)
    rng.shuffle(order)
    # Stable sort keeps the seeded shuffle as the tie-breaker between equal sizes.
    order.sort(key=lambda g: -sizes[g])
    load = [0] * k
    fold_of: dict[str, int] = {}
    for g in order:
        f = min(range(k), key=lambda i: (load[i], i))
        fold_of[g] = f
        load[f] += sizes[g]
    return [fold_of[g] for g in groups]


def stratified_holdout(labels: Sequence[int], sizes: dict[str, int], seed: int) -> list[str]:
    """Split name for each row: ``sizes`` rows per split (in the dict's order), with every
    split's class mix as close to the whole set's as the counts allow.

    Rows are shuffled within their class with ``seed``; the r-th of a class of n gets the
    key (r + 0.5) / n, so sorting by key interleaves the classes evenly, and consecutive
    runs of that order become the splits. Used for papers' fixed splits of datasets without
    official ones (JAFFE's 120/23/70 in Deep-Emotion).
    """
    if sum(sizes.values()) != len(labels) or any(n < 0 for n in sizes.values()):
        raise ValueError(
            f"holdout sizes {dict(sizes)} must be >= 0 and add up to the {len(labels)} rows"
        )
    rng = np.random.default_rng(seed)
    members: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        members.setdefault(int(label), []).append(i)
    keys = np.empty(len(labels))
    for rows in members.values():
        order = rng.permutation(len(rows))
        keys[np.asarray(rows)[order]] = (np.arange(len(rows)) + 0.5) / len(rows)
    ranked = np.lexsort((rng.permutation(len(labels)), keys))
    names = np.repeat(list(sizes), list(sizes.values()))
    split = [""] * len(labels)
    for position, row in enumerate(ranked):
        split[row] = str(names[position])
    return split
