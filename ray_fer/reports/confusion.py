"""Confusion matrices as JSON and as a PNG heat map (rows = true class, columns = predicted)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ray_fer.reports.figures import png_bytes, pyplot


def confusion_record(confusion: np.ndarray, class_names: Sequence[str]) -> dict:
    """JSON-ready counts with their class names: ``{"classes": [...], "matrix": [[...]]}``."""
    cm = np.asarray(confusion)
    if cm.shape != (len(class_names), len(class_names)):
        raise ValueError(f"confusion {cm.shape} does not match {len(class_names)} class names")
    return {"classes": list(class_names), "rows": "true", "columns": "predicted",
            "matrix": [[int(round(v)) for v in row] for row in cm.tolist()]}


def confusion_summary(confusion: np.ndarray) -> str:
    """``accuracy 71.2% · 3,589 faces`` of a confusion matrix, for figure titles."""
    cm = np.asarray(confusion)
    total = int(round(cm.sum()))
    accuracy = f"{float(np.trace(cm)) / total:.1%}" if total else "n/a"
    return f"accuracy {accuracy} · {total:,} faces"


def plot_confusion(confusion: np.ndarray, class_names: Sequence[str], title: str = "") -> bytes:
    """PNG bytes: row-normalised colours (recall per class), raw counts written in cells;
    ``title`` may hold several lines (what was evaluated, and how well)."""
    plt = pyplot()
    cm = np.asarray(confusion, dtype=np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    k = len(class_names)
    side = max(4.0, 0.6 * k + 2)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    ax.set_xticks(range(k), class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{int(round(cm[i, j]))}", ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 0.5 else "black")
    if title:
        ax.set_title(title, fontsize=10)
    return png_bytes(fig, dpi=110)
