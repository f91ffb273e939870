"""Valence/arousal agreement as a PNG: per dimension, a heat map of target vs prediction."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ray_fer.reports.figures import png_bytes, pyplot


def plot_va_agreement(histogram: np.ndarray, names: Sequence[str] = ("valence", "arousal"),
                      title: str = "") -> bytes:
    """PNG bytes from (D, bins, bins) counts over [-1, 1]² (rows = target bin, columns =
    predicted bin, as :func:`ray_fer.methods.metrics.va_histogram` sums them); a perfect
    regressor puts all mass on the diagonal, drawn dashed."""
    plt = pyplot()
    hist = np.asarray(histogram, dtype=np.float64)
    if hist.ndim != 3 or hist.shape[0] != len(names) or hist.shape[1] != hist.shape[2]:
        raise ValueError(f"histogram {hist.shape} must be ({len(names)}, bins, bins)")
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 4), squeeze=False)
    for ax, counts, name in zip(axes[0], hist, names, strict=True):
        # Log colours: the bulk near neutral would otherwise hide the tails.
        image = ax.imshow(np.log1p(counts).T, origin="lower", extent=(-1, 1, -1, 1),
                          cmap="magma", aspect="equal")
        ax.plot([-1, 1], [-1, 1], ls="--", lw=1, color="white")
        ax.set_xlabel(f"target {name}")
        ax.set_ylabel(f"predicted {name}")
        ax.set_title(f"{name} (n={int(counts.sum())})")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="log(1 + rows)")
    return png_bytes(fig, title=title)
