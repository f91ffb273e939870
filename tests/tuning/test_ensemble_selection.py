"""Ensemble selection on validation predictions: top-K and greedy forward selection."""

import numpy as np
import pytest

from ray_fer.tuning.ensemble import greedy_selection, score, top_k


def _onehot_probs(predicted: list[int], k: int = 3) -> np.ndarray:
    probs = np.full((len(predicted), k), 0.1 / (k - 1))
    probs[np.arange(len(predicted)), predicted] = 0.9
    return probs


LABELS = np.array([0, 1, 2, 0, 1, 2])


def test_top_k_takes_the_most_accurate_candidates():
    probs = np.stack([_onehot_probs([0, 0, 0, 0, 0, 0]),     # 2/6
                      _onehot_probs([0, 1, 2, 0, 1, 0]),     # 5/6
                      _onehot_probs([0, 1, 2, 0, 0, 0])])    # 4/6
    assert top_k(probs, LABELS, 2).tolist() == [0, 1, 1]
    with pytest.raises(ValueError, match="between 1 and the 3 candidates"):
        top_k(probs, LABELS, 4)


def test_greedy_selection_can_pick_a_model_twice_and_never_loses_to_its_start():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 200)
    probs = rng.dirichlet(np.ones(4), size=(6, 200))
    probs[2, np.arange(200), labels] += 0.5  # one strong candidate
    probs /= probs.sum(2, keepdims=True)
    weights = greedy_selection(probs, labels, rounds=10)
    ensemble = score(np.tensordot(weights, probs, axes=1) / weights.sum(), labels)
    assert ensemble.accuracy >= max(score(p, labels).accuracy for p in probs)
    assert weights[2] >= 2 and weights.sum() >= 2
