"""Deterministic, seeded, subject-independent k-fold assignment."""

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
