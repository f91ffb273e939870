"""Fig. 2 of Kim, Park & Chang: tiles laid out on the V/A plane, and a PNG."""

from __future__ import annotations

import pytest
import torch

from ray_fer.reports.va_grid import va_grid_mosaic, va_grid_png


def coded_grid(rows: int, cols: int, channels: int = 3, size: int = 4) -> torch.Tensor:
    """A (rows, cols, C, S, S) grid whose tile (r, c) has value (10 r + c) / 255."""
    values = torch.tensor([[10 * r + c for c in range(cols)] for r in range(rows)]) / 255
    return values[:, :, None, None, None].expand(rows, cols, channels, size, size)


def test_mosaic_puts_valence_left_to_right_and_arousal_bottom_to_top():
    mosaic = va_grid_mosaic(coded_grid(3, 2))
    assert mosaic.shape == (12, 8, 3)
    # Top-left tile: highest arousal (row 2), lowest valence (column 0).
    assert mosaic[0, 0, 0] == 20 and mosaic[0, 4, 0] == 21
    assert mosaic[8, 0, 0] == 0 and mosaic[11, 7, 2] == 1


def test_gray_faces_become_rgb():
    assert va_grid_mosaic(coded_grid(1, 1, channels=1)).shape == (4, 4, 3)


def test_png_of_the_paper_grid_and_a_mismatched_grid_is_refused():
    png = va_grid_png(torch.rand(3, 8, 8), coded_grid(7, 9, size=8), [0.1 * i for i in range(9)],
                      [0.1 * i for i in range(7)], title="t")
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(ValueError, match="does not match"):
        va_grid_png(torch.rand(3, 8, 8), coded_grid(7, 9), [0.0] * 9, [0.0] * 6)
