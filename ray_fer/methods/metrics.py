"""Evaluation metrics: classification (accuracy, F1, confusion) and V/A (RMSE, PCC, CCC, SAGR).

Every metric follows from additive statistics: a confusion matrix for classification, the
power sums of :func:`va_sums` for V/A. Sum them over batches and workers (an all-reduce
is exact), then evaluate once; or evaluate gathered arrays in one go, same numbers.
:func:`va_sums` is written with operations that numpy arrays and torch tensors share, so
a training loop can accumulate it on the device.

Conventions for degenerate inputs (no NaN, no warnings): precision, recall and F1 of a
class with no predictions / no true rows are 0 (as scikit-learn's ``zero_division=0``).
A V/A column is *constant* when its variance is at most 1e-6 of its mean square (float32
sums cannot resolve less). PCC is 0 when either side is constant (undefined
correlation); CCC is 0 when one side is constant (zero covariance) and 1 when both are
the same constant (perfect agreement: the only case where its formula is 0/0). SAGR
counts sign(pred) == sign(target), with sign(0) = 0 as in the CAF authors' evaluation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

VA_NAMES = ("valence", "arousal")
VA_SUM_KEYS = (
    "count", "sum_pred", "sum_target", "sum_pred_sq", "sum_target_sq", "sum_cross",
    "sum_sq_error", "sign_agree",
)
_CONSTANT_RELATIVE_VARIANCE = 1e-6


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) int64 counts, rows = true class, columns = predicted."""
    labels = np.asarray(labels, dtype=np.int64).ravel()
    preds = np.asarray(preds, dtype=np.int64).ravel()
    if labels.shape != preds.shape:
        raise ValueError(f"labels {labels.shape} and preds {preds.shape} differ in length")
    for name, x in (("labels", labels), ("preds", preds)):
        if x.size and (x.min() < 0 or x.max() >= num_classes):
            raise ValueError(f"{name} must lie in [0, {num_classes}), got {x.min()}..{x.max()}")
    counts = np.bincount(labels * num_classes + preds, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros_like(a), where=b > 0)


def per_class_from_confusion(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class ``precision``, ``recall`` and ``f1`` (float64 arrays) of a confusion matrix."""
    cm = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(cm)
    precision = _ratio(tp, cm.sum(axis=0))
    recall = _ratio(tp, cm.sum(axis=1))
    return {"precision": precision, "recall": recall,
            "f1": _ratio(2 * precision * recall, precision + recall)}


def accuracy_from_confusion(confusion: np.ndarray) -> float:
    """Share of rows on the diagonal (0 for an empty matrix)."""
    cm = np.asarray(confusion, dtype=np.float64)
    total = cm.sum()
    return float(np.trace(cm) / total) if total else 0.0


def macro_f1_from_confusion(confusion: np.ndarray) -> float:
    """Unweighted mean of the per-class F1 scores."""
    return float(per_class_from_confusion(confusion)["f1"].mean())


def classification_metrics(confusion: np.ndarray) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-class precision/recall/F1 of a confusion matrix."""
    return {
        "accuracy": accuracy_from_confusion(confusion),
        "macro_f1": macro_f1_from_confusion(confusion),
        **per_class_from_confusion(confusion),
    }


def va_sums(pred: Any, target: Any) -> dict[str, Any]:
    """Additive statistics of (N, D) predictions and targets (D = 2: valence, arousal),
    each of shape (D,), as numpy arrays or torch tensors like the inputs (no host sync)."""
    if pred.ndim != 2 or tuple(pred.shape) != tuple(target.shape):
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} "
                         "must both be (N, D)")
    same_sign = ((pred > 0) == (target > 0)) & ((pred < 0) == (target < 0))
    return {
        "count": (pred == pred).sum(0),
        "sum_pred": pred.sum(0),
        "sum_target": target.sum(0),
        "sum_pred_sq": (pred * pred).sum(0),
        "sum_target_sq": (target * target).sum(0),
        "sum_cross": (pred * target).sum(0),
        "sum_sq_error": ((pred - target) ** 2).sum(0),
        "sign_agree": same_sign.sum(0),
    }


#: Bins per axis of :func:`va_histogram` over [-1, 1].
VA_BINS = 20


def va_histogram(pred: torch.Tensor, target: torch.Tensor, bins: int = VA_BINS) -> torch.Tensor:
    """(D, bins, bins) counts of (target, prediction) pairs per dimension over [-1, 1]
    (values outside are clipped to the edge bins): summable over batches and workers, so
    the best epoch's agreement plot covers every validation row."""
    index = ((torch.stack([target, pred]).clamp(-1, 1) + 1) / 2 * bins).long().clamp(0, bins - 1)
    flat = index[0] * bins + index[1] + torch.arange(pred.shape[1], device=pred.device) * bins**2
    counts = torch.bincount(flat.reshape(-1), minlength=pred.shape[1] * bins**2)
    return counts.reshape(pred.shape[1], bins, bins).float()


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _variance(sum_sq: np.ndarray, mean: np.ndarray, n: np.ndarray) -> np.ndarray:
    mean_sq = sum_sq / n
    var = np.maximum(mean_sq - mean**2, 0.0)
    return np.where(var <= _CONSTANT_RELATIVE_VARIANCE * mean_sq, 0.0, var)


def va_metrics_from_sums(
    sums: dict[str, Any], names: tuple[str, ...] = VA_NAMES
) -> dict[str, float]:
    """``{name}_{rmse,pcc,ccc,sagr}`` per dimension and ``mean_*`` over dimensions, from
    (summed) :func:`va_sums` statistics."""
    s = {key: _numpy(sums[key]) for key in VA_SUM_KEYS}
    n = s["count"]
    if not (n > 0).all():
        raise ValueError("no rows to evaluate")
    mean_p, mean_t = s["sum_pred"] / n, s["sum_target"] / n
    var_p = _variance(s["sum_pred_sq"], mean_p, n)
    var_t = _variance(s["sum_target_sq"], mean_t, n)
    cov = np.where((var_p > 0) & (var_t > 0), s["sum_cross"] / n - mean_p * mean_t, 0.0)
    pcc = _ratio(cov, np.sqrt(var_p * var_t))
    ccc_denominator = var_p + var_t + (mean_p - mean_t) ** 2
    ccc = np.divide(2 * cov, ccc_denominator, out=np.ones_like(cov),
                    where=ccc_denominator > 1e-12)
    values = {
        "rmse": np.sqrt(s["sum_sq_error"] / n),
        "pcc": np.clip(pcc, -1.0, 1.0),
        "ccc": np.clip(ccc, -1.0, 1.0),
        "sagr": s["sign_agree"] / n,
    }
    out: dict[str, float] = {}
    for metric, per_dim in values.items():
        for name, value in zip(names, per_dim, strict=True):
            out[f"{name}_{metric}"] = float(value)
        out[f"mean_{metric}"] = float(per_dim.mean())
    return out


def va_metrics(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """RMSE, PCC (CORR), CCC and SAGR of (N, 2) predictions against (N, 2) targets, for
    valence and arousal and their mean: keys like ``valence_ccc``, ``arousal_rmse``,
    ``mean_ccc``."""
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if not (np.isfinite(pred).all() and np.isfinite(target).all()):
        raise ValueError("pred and target must be finite (drop rows without V/A first)")
    return va_metrics_from_sums(va_sums(pred, target))
