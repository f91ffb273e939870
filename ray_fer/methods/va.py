"""Valence/arousal regression: the validation steps and figure every V/A method shares.

A V/A network maps faces to (valence, arousal) in [-1, 1]. Validation sums the
statistics of RMSE, PCC, CCC and SAGR (:mod:`ray_fer.methods.metrics`), the squared
error, and a target-vs-prediction histogram drawn at every new best epoch; rows without
V/A (NaN) take no part.
"""

from __future__ import annotations

import math

import torch

from ray_fer.data.info import DataInfo
from ray_fer.methods.base import Sums, TrainState
from ray_fer.methods.metrics import va_histogram, va_metrics_from_sums, va_sums


def eval_batch(state: TrainState, batch: dict) -> Sums:
    """V/A regression sums of one validation batch (RMSE/PCC/CCC/SAGR statistics, loss,
    agreement histogram) of a model that maps faces to (valence, arousal)."""
    target = torch.stack([batch["valence"], batch["arousal"]], dim=1).float()
    labelled = target.isfinite().all(1)
    pred = state.modules["model"](batch["image"]).float()[labelled]
    target = target[labelled]
    sums = {f"va_{k}": v for k, v in va_sums(pred, target).items()}
    return sums | {"loss_sum": ((pred - target) ** 2).sum(), "count": labelled.sum().float(),
                   "agreement": va_histogram(pred, target)}


def summarize(sums: Sums, prefix: str, info: DataInfo) -> dict[str, float]:
    """Epoch metrics from summed :func:`eval_batch` (or training) sums: every ``<x>_sum``
    per row, and the V/A metrics where the sums hold their statistics."""
    count = float(sums.get("count", 0.0))
    if count == 0:
        return {f"{prefix}_loss": math.nan, f"{prefix}_mean_ccc": math.nan}
    out = {f"{prefix}_{k[:-4]}": float(v) / count for k, v in sums.items() if k.endswith("_sum")}
    if "va_count" in sums:
        va = va_metrics_from_sums({k[3:]: v for k, v in sums.items() if k.startswith("va_")})
        out |= {f"{prefix}_{k}": v for k, v in va.items()}
    return out


def figures(sums: Sums, info: DataInfo) -> dict[str, bytes]:
    """The validation V/A agreement map (target vs prediction)."""
    from ray_fer.reports.va_agreement import plot_va_agreement

    if "agreement" not in sums:
        return {}
    return {"va_agreement": plot_va_agreement(sums["agreement"].cpu().numpy(),
                                              title="validation, best epoch")}
