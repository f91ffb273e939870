"""Metrics against values worked out by hand on tiny arrays."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from ray_fer.methods import metrics as M

# valence: pred (1, 2, 3), target (1, 3, 2); arousal: pred (-1, 0, 1), target (-1, 1, 3)
PRED = np.array([[1.0, -1.0], [2.0, 0.0], [3.0, 1.0]])
TARGET = np.array([[1.0, -1.0], [3.0, 1.0], [2.0, 3.0]])
# By hand (population moments):
#   valence: means 2, 2; var 2/3, 2/3; cov 1/3 -> PCC 1/2, CCC (2/3)/(4/3) = 1/2,
#            RMSE sqrt(2/3), all signs agree -> SAGR 1.
#   arousal: means 0, 1; var 2/3, 8/3; cov 4/3 -> PCC 1, CCC (8/3)/(2/3+8/3+1) = 8/13,
#            RMSE sqrt(5/3), signs (-,0,+) vs (-,+,+) -> SAGR 2/3.
EXPECTED = {
    "valence_pcc": 0.5, "valence_ccc": 0.5, "valence_rmse": 0.816496580927726,
    "valence_sagr": 1.0,
    "arousal_pcc": 1.0, "arousal_ccc": 8 / 13, "arousal_rmse": 1.2909944487358056,
    "arousal_sagr": 2 / 3,
    "mean_ccc": (0.5 + 8 / 13) / 2, "mean_pcc": 0.75,
}


def test_va_metrics_match_hand_computed_values():
    out = M.va_metrics(PRED, TARGET)
    for key, value in EXPECTED.items():
        assert out[key] == pytest.approx(value), key


def test_va_sums_are_additive_and_work_on_torch_tensors():
    first = M.va_sums(PRED[:1], TARGET[:1])
    rest = M.va_sums(PRED[1:], TARGET[1:])
    summed = {k: first[k] + rest[k] for k in M.VA_SUM_KEYS}
    assert M.va_metrics_from_sums(summed) == pytest.approx(M.va_metrics(PRED, TARGET))
    as_torch = M.va_sums(torch.tensor(PRED, dtype=torch.float32),
                         torch.tensor(TARGET, dtype=torch.float32))
    assert all(isinstance(v, torch.Tensor) for v in as_torch.values())
    out = M.va_metrics_from_sums(as_torch)
    for key, value in EXPECTED.items():
        assert out[key] == pytest.approx(value, abs=1e-5), key


def test_constant_predictions_give_zero_pcc_and_ccc_without_warnings():
    target = np.array([[1.0, 0.5], [2.0, -0.5], [3.0, 0.25]])
    constant = np.full_like(target, 0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = M.va_metrics(constant, target)
        same = M.va_metrics(constant, constant)
    assert out["valence_pcc"] == out["valence_ccc"] == 0.0
    assert out["arousal_pcc"] == out["arousal_ccc"] == 0.0
    assert same["valence_ccc"] == 1.0 and same["valence_pcc"] == 0.0
    assert same["valence_rmse"] == 0.0


def test_constant_predictions_stay_constant_through_float32_sums():
    rng = np.random.default_rng(0)
    target = torch.tensor(rng.uniform(-1, 1, (1000, 2)), dtype=torch.float32)
    constant = torch.full_like(target, 0.3)
    out = M.va_metrics_from_sums(M.va_sums(constant, target))
    assert out["valence_pcc"] == 0.0 and out["arousal_ccc"] == 0.0


def test_va_metrics_reject_nan_and_empty_input():
    with pytest.raises(ValueError, match="finite"):
        M.va_metrics(np.array([[np.nan, 0.0]]), np.array([[0.0, 0.0]]))
    with pytest.raises(ValueError, match="no rows"):
        M.va_metrics(np.zeros((0, 2)), np.zeros((0, 2)))


def test_classification_metrics_match_hand_computed_values():
    cm = M.confusion_matrix([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], num_classes=3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    out = M.classification_metrics(cm)
    assert out["accuracy"] == pytest.approx(0.6)
    assert out["precision"] == pytest.approx([0.5, 2 / 3, 0.0])  # class 2 never predicted
    assert out["recall"] == pytest.approx([0.5, 1.0, 0.0])
    assert out["f1"] == pytest.approx([0.5, 0.8, 0.0])
    assert out["macro_f1"] == pytest.approx(1.3 / 3)
    assert M.accuracy_from_confusion(cm) == out["accuracy"]
    assert M.macro_f1_from_confusion(cm) == out["macro_f1"]


def test_confusion_matrix_rejects_out_of_range_labels():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        M.confusion_matrix([0, 2], [0, 1], num_classes=2)


def test_va_histogram_counts_every_row_once_on_the_diagonal_when_exact():
    target = torch.tensor([[-1.0, 0.0], [0.5, 0.99], [1.0, -0.2], [2.0, -3.0]])
    hist = M.va_histogram(target, target, bins=4)
    assert hist.shape == (2, 4, 4) and hist.sum(dim=(1, 2)).tolist() == [4.0, 4.0]
    assert torch.equal(hist, torch.diag_embed(hist.diagonal(dim1=1, dim2=2)))
    # Halves add up: the statistic is summable over batches and workers.
    assert torch.equal(M.va_histogram(target[:2], target[:2] * 0, bins=4)
                       + M.va_histogram(target[2:], target[2:] * 0, bins=4),
                       M.va_histogram(target, target * 0, bins=4))
