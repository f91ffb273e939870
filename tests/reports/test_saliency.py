"""Saliency grids: layout, overlays, scaling of maps for display, the colour scale, true
labels and notes on blank maps, PNG encoding."""

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
    zero_note,
)

SCALE = 46  # the colour scale's column, right of every grid


def test_unit_map_keeps_the_positive_part_scaled_to_one():
    values = np.array([[-2.0, 0.0], [1.0, 4.0]])
    np.testing.assert_allclose(unit_map(values), [[0, 0], [0.25, 1]])
    assert not unit_map(np.full((2, 2), -1.0)).any()


def test_grid_has_a_row_per_image_and_map_and_overlay_columns():
    faces = np.random.default_rng(0).integers(0, 255, (3, 48, 48, 1), dtype=np.uint8)
    maps = np.random.default_rng(1).random((3, 2, 48, 48))
    grid = saliency_grid(faces, maps, ["gradcam", "occlusion"], row_labels=["a", "b", "c"],
                         cell=64)
    assert grid.dtype == np.uint8 and grid.shape == (18 + 3 * 64, 5 * 64 + SCALE, 3)
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
    assert grid.shape == (18 + 3 * 50, 4 * 50 + SCALE, 3)


def test_the_colour_scale_runs_from_blue_at_zero_to_red_at_the_maximum():
    faces = np.zeros((1, 48, 48, 1), np.uint8)
    grid = saliency_grid(faces, np.random.default_rng(0).random((1, 1, 48, 48)), ["m"],
                         cell=64)
    bar = grid[18:, 3 * 64 + 3 + 6].astype(int)  # through the scale's bar, below its title
    coloured = np.flatnonzero(bar.sum(1))
    top, bottom = bar[coloured[0]], bar[coloured[-1]]
    assert top[0] > 100 > top[2] and bottom[2] > 100 > bottom[0]  # red above, blue below


def test_blank_maps_are_marked_and_shown_ones_are_not():
    assert zero_note(np.zeros((4, 4))) == "all zero"
    assert zero_note(-np.ones((4, 4))) == "no positive part"
    assert zero_note(np.eye(4)) == ""
    faces = np.full((1, 48, 48, 1), 90, np.uint8)
    maps = np.stack([np.zeros((48, 48)), np.eye(48)])[None]
    grid = saliency_grid(faces, maps, ["zero", "shown"], cell=64)
    cells = [grid[18:, j * 64:(j + 1) * 64] for j in range(5)]
    plain = [heatmap(np.zeros((48, 48))), overlay(faces[0], np.zeros((48, 48)))]
    for cell, bare in zip(cells[1:3], plain, strict=True):  # the zero map's two cells
        resized = cv2.resize(bare, (64, 64), interpolation=cv2.INTER_CUBIC)
        assert (cell != resized).any(axis=2).sum() > 40  # the note's letters
    shown = cv2.resize(heatmap(np.eye(48)), (64, 64), interpolation=cv2.INTER_CUBIC)
    assert (cells[3] == shown).all()  # nothing written on a map that shows something


def test_the_true_label_is_shown_and_the_prediction_coloured_by_it():
    faces = np.full((3, 48, 48, 1), 90, np.uint8)
    maps = np.random.default_rng(0).random((3, 1, 48, 48))
    labels = ["happy 0.90", "sad 0.60", "happy 0.70"]
    known = saliency_grid(faces, maps, ["m"], row_labels=labels,
                          true_labels=["happy", "happy", None], cell=64)
    unknown = saliency_grid(faces, maps, ["m"], row_labels=labels, cell=64)
    inputs = [known[18 + i * 64:18 + (i + 1) * 64, :64].astype(int) for i in range(3)]
    bare = [unknown[18 + i * 64:18 + (i + 1) * 64, :64].astype(int) for i in range(3)]
    assert (inputs[0][:20] != bare[0][:20]).any()  # "true happy" written on top
    assert (inputs[2] == bare[2]).all()  # true label unknown: as before
    green = (inputs[0][:, :, 1] - inputs[0][:, :, 0] > 80).sum()
    red = (inputs[1][:, :, 0] - inputs[1][:, :, 1] > 80).sum()
    assert green > 20 and red > 20  # right in green, wrong in red


def test_method_and_target_titles_take_two_lines_instead_of_being_cut():
    faces = np.zeros((1, 48, 48, 1), np.uint8)
    maps = np.random.default_rng(0).random((1, 2, 48, 48))
    one_line = saliency_grid(faces, maps, ["gradcam", "occlusion"], cell=64)
    two_lines = saliency_grid(faces, maps, ["guided_gradcam: valence", "gradcam: arousal"],
                              cell=64)
    assert two_lines.shape[0] == one_line.shape[0] + 13
    assert two_lines[18:31, 64:128].any()  # "valence" on the second line of the header
