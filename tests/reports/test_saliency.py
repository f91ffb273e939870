"""Saliency grids: layout, overlays, scaling of maps for display, PNG encoding."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from ray_fer.reports.saliency import (
    class_average_grid,
    heatmap,
    overlay,
    png_bytes,
    saliency_grid,
    unit_map,
)


def test_unit_map_keeps_the_positive_part_scaled_to_one():
    values = np.array([[-2.0, 0.0], [1.0, 4.0]])
    np.testing.assert_allclose(unit_map(values), [[0, 0], [0.25, 1]])
    assert not unit_map(np.full((2, 2), -1.0)).any()


def test_grid_has_a_row_per_image_and_map_and_overlay_columns():
    faces = np.random.default_rng(0).integers(0, 255, (3, 48, 48, 1), dtype=np.uint8)
    maps = np.random.default_rng(1).random((3, 2, 48, 48))
    grid = saliency_grid(faces, maps, ["gradcam", "occlusion"], row_labels=["a", "b", "c"],
                         cell=64)
    assert grid.dtype == np.uint8 and grid.shape == (18 + 3 * 64, 5 * 64, 3)
    decoded = cv2.imdecode(np.frombuffer(png_bytes(grid), np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == grid.shape
    with pytest.raises(ValueError, match="do not match"):
        saliency_grid(faces, maps, ["gradcam"])


def test_overlay_resizes_the_map_to_the_face_and_heat_shows_the_peak():
    face = np.full((32, 32, 1), 100, np.uint8)
    values = np.zeros((8, 8))
    values[0, 0] = 1
    blended = overlay(face, values)
    assert blended.shape == (32, 32, 3)
    hot = heatmap(values)
    assert tuple(hot[0, 0]) != tuple(hot[7, 7])  # jet: red at the peak, blue at zero


def test_class_average_grid_has_a_face_row_and_a_row_per_method():
    faces = np.zeros((4, 48, 48, 1), np.uint8)
    grid = class_average_grid(faces, np.ones((2, 4, 48, 48)), ["a", "b", "c", "d"],
                              ["gradcam", "occlusion"], [1, 2, 3, 4], cell=50)
    assert grid.shape == (18 + 3 * 50, 4 * 50, 3)
