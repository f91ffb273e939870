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


def carve_validation(labels: Sequence[int], subjects: Sequence[str], fraction: float,
                     seed: int) -> list[bool]:
    """Which rows of a training split become a validation split carved out of it.

    About ``fraction`` of the rows, with each class's share as close to the whole split's
    as the groups allow. Rows of one subject stay together (all in validation or none), so
    a model is never validated on a person it trained on; rows without a subject id are
    groups of one. Groups are visited in a seeded order and each is taken while it brings
    the validation class counts closer to their targets (``fraction`` x each class's rows),
    so the result depends only on (labels, subjects, fraction, seed).
    """
    if not 0 < fraction < 1:
        raise ValueError(f"the validation fraction must be in (0, 1), got {fraction}")
    labels = [int(x) for x in labels]
    classes = sorted(set(labels))
    column = {c: i for i, c in enumerate(classes)}
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(subjects):
        groups.setdefault(s if s else f"\0row{i}", []).append(i)
    order = sorted(groups)
    np.random.default_rng(seed).shuffle(order)
    target = fraction * np.bincount([column[x] for x in labels], minlength=len(classes))
    taken = np.zeros(len(classes))
    chosen = [False] * len(labels)
    for g in order:
        counts = np.bincount([column[labels[i]] for i in groups[g]], minlength=len(classes))
        # Take the group if it moves the class counts closer to the targets (L1 distance).
        if np.abs(taken + counts - target).sum() < np.abs(taken - target).sum():
            taken += counts
            for i in groups[g]:
                chosen[i] = True
    return chosen
