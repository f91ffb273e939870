"""The face-generating autoencoder's Fig. 2: one input face re-rendered over a v x a grid."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ray_fer.reports.figures import png_bytes, pyplot


def va_grid_mosaic(grid: torch.Tensor) -> np.ndarray:
    """uint8 (H, W, 3) image of a (A, V, C, S, S) grid in [0, 1]: one tile per (arousal,
    valence), valence rising to the right and arousal rising upwards (the V/A plane's
    orientation), gray faces shown as RGB."""
    rows, cols, channels, size, _ = grid.shape
    tiles = grid.detach().float().clamp(0, 1).cpu().flip(0)  # highest arousal on top
    if channels == 1:
        tiles = tiles.expand(-1, -1, 3, -1, -1)
    mosaic = tiles.permute(0, 3, 1, 4, 2).reshape(rows * size, cols * size, 3)
    return (mosaic * 255).round().to(torch.uint8).numpy()


def va_grid_png(face: torch.Tensor, grid: torch.Tensor, valences: Sequence[float],
                arousals: Sequence[float], title: str = "") -> bytes:
    """PNG bytes: the input ``face`` (C, S, S) in [0, 1] beside its re-renderings ``grid``
    (len(arousals), len(valences), C, S, S), axes labelled with the grid's V/A values."""
    plt = pyplot()
    if tuple(grid.shape[:2]) != (len(arousals), len(valences)):
        raise ValueError(f"grid {tuple(grid.shape[:2])} does not match {len(arousals)} "
                         f"arousals x {len(valences)} valences")
    size = grid.shape[-1]
    mosaic = va_grid_mosaic(grid)
    source = va_grid_mosaic(face[None, None])
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(1.0 + 0.75 * (len(valences) + 1.5), 0.75 * len(arousals) + 1.2),
        gridspec_kw={"width_ratios": [1.5, len(valences)]})
    left.imshow(source)
    left.set_title("input")
    left.axis("off")
    right.imshow(mosaic)
    right.set_xticks([(i + 0.5) * size for i in range(len(valences))],
                     [f"{v:g}" for v in valences])
    right.set_yticks([(i + 0.5) * size for i in range(len(arousals))],
                     [f"{a:g}" for a in reversed(arousals)])
    right.set_xlabel("valence")
    right.set_ylabel("arousal")
    return png_bytes(fig, title=title)
