"""Which trained models make the best ensemble, judged on validation predictions only.

Both rules take each candidate's class probabilities on the validation split (never on the
split that is reported) and return a weight per candidate (how many times it was picked):

- :func:`top_k`: the ``k`` candidates with the best validation accuracy, equally weighted;
- :func:`greedy_selection`: Caruana et al.'s (2004) forward selection with replacement:
  starting from the best ``init`` candidates, repeatedly add the candidate (again, if it is
  already in) whose addition gives the ensemble the best validation accuracy, ties to the
  lower log-loss; after ``rounds`` additions keep the prefix that scored best, so a model
  picked twice weighs twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Score:
    """Accuracy and mean log-loss of probabilities ``(N, K)`` against labels."""

    accuracy: float
    nll: float

    def key(self) -> tuple[float, float]:
        """Sorts best first: higher accuracy, then lower log-loss."""
        return (-self.accuracy, self.nll)


def score(probs: np.ndarray, labels: np.ndarray) -> Score:
    """:class:`Score` of probabilities ``probs`` (N, K) for integer ``labels`` (N,)."""
    picked = probs[np.arange(len(labels)), labels]
    return Score(accuracy=float((probs.argmax(1) == labels).mean()),
                 nll=float(-np.log(np.clip(picked, 1e-12, None)).mean()))


def _check(probs: np.ndarray, labels: np.ndarray) -> None:
    if probs.ndim != 3 or probs.shape[1] != len(labels) or not len(probs):
        raise ValueError(f"expected probabilities (candidates, {len(labels)}, classes), "
                         f"got {probs.shape}")


def top_k(probs: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Weights (M,) that pick the ``k`` best of ``probs`` (M candidates, N rows, K classes)."""
    _check(probs, labels)
    if not 1 <= k <= len(probs):
        raise ValueError(f"--top {k}: choose between 1 and the {len(probs)} candidates")
    order = sorted(range(len(probs)), key=lambda i: score(probs[i], labels).key())
    weights = np.zeros(len(probs))
    weights[order[:k]] = 1.0
    return weights


def greedy_selection(probs: np.ndarray, labels: np.ndarray, rounds: int, init: int = 1
                     ) -> np.ndarray:
    """Weights (M,) from forward selection with replacement (module docstring)."""
    _check(probs, labels)
    if rounds < 1 or not 1 <= init <= len(probs):
        raise ValueError(f"greedy selection needs rounds >= 1 and 1 <= init <= {len(probs)}")
    weights = top_k(probs, labels, init)
    total = np.tensordot(weights, probs, axes=1)
    best, best_weights = score(total / weights.sum(), labels), weights.copy()
    for _ in range(rounds):
        trials = [score((total + p) / (weights.sum() + 1), labels) for p in probs]
        pick = min(range(len(probs)), key=lambda i: trials[i].key())
        weights[pick] += 1
        total += probs[pick]
        if trials[pick].key() < best.key():
            best, best_weights = trials[pick], weights.copy()
    return best_weights
