"""PNG grids of attribution maps: input faces, heat maps and overlays.

Drawn with OpenCV into RGB arrays (the same array goes to a PNG file or to TensorBoard's
``add_image``). Maps are shown by their positive part scaled to the map's maximum (what
raises the score, or whose occlusion lowers it), in the "jet" colour map; overlays blend
that colour with the face. A colour scale at the right reads the colours (0 to each map's
own maximum). A map with nothing to show is marked: "all zero" (e.g. a Grad-CAM whose
layer does not respond to the target), or "no positive part".
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

CELL = 112
_HEADER = 18
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_TEXT_SCALE = 0.36
_WHITE = (255, 255, 255)


def unit_map(values: np.ndarray) -> np.ndarray:
    """A map's positive part divided by its maximum: float32 in [0, 1] (zeros stay zeros)."""
    positive = np.clip(np.asarray(values, dtype=np.float32), 0, None)
    peak = float(positive.max()) if positive.size else 0.0
    return positive / peak if peak > 0 else positive


def face_rgb(face: np.ndarray) -> np.ndarray:
    """A uint8 face (H, W), (H, W, 1) or (H, W, 3) as (H, W, 3) RGB."""
    face = np.asarray(face, dtype=np.uint8)
    if face.ndim == 3 and face.shape[2] == 3:
        return face
    return np.repeat(face.reshape(face.shape[0], face.shape[1], 1), 3, axis=2)


def heatmap(values: np.ndarray) -> np.ndarray:
    """(H, W) map → (H, W, 3) uint8 RGB in the jet colour map (after :func:`unit_map`)."""
    scaled = np.round(unit_map(values) * 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(scaled, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)


def overlay(face: np.ndarray, values: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The face with its heat map blended in (``alpha`` = weight of the heat map); a map of
    another size than the face is resized to it first."""
    face = face_rgb(face)
    values = np.asarray(values, dtype=np.float32)
    if values.shape != face.shape[:2]:
        values = cv2.resize(values, (face.shape[1], face.shape[0]),
                            interpolation=cv2.INTER_LINEAR)
    return cv2.addWeighted(face, 1 - alpha, heatmap(values), alpha, 0)


#: Where a caption goes in its cell, and its colour (RGB).
Caption = tuple[str, str, tuple[int, int, int]]
_TOP, _BOTTOM, _CENTRE = "top", "bottom", "centre"
_RIGHT = (120, 230, 120)  # a prediction that matches the true label
_WRONG = (255, 120, 120)
_NOTE = (255, 235, 120)
_SCALE_WIDTH = 46
_LINE = 13  # px between the lines of a two-line column title
_SCALE_BAR = 12


def zero_note(values: np.ndarray) -> str:
    """What a blank heat map means: "all zero", "no positive part", or "" when it shows
    something."""
    values = np.asarray(values)
    if not values.any():
        return "all zero"
    return "" if (values > 0).any() else "no positive part"


def _put(image: np.ndarray, text: str, origin: tuple[int, int], colour) -> None:
    """``text`` with a dark outline, readable on any face or heat map."""
    cv2.putText(image, text, origin, _FONT, _TEXT_SCALE, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(image, text, origin, _FONT, _TEXT_SCALE, colour, 1, cv2.LINE_AA)


def _cell(image: np.ndarray, size: int, captions: Sequence[Caption] = ()) -> np.ndarray:
    interpolation = cv2.INTER_CUBIC if image.shape[0] < size else cv2.INTER_AREA
    out = cv2.resize(face_rgb(image), (size, size), interpolation=interpolation)
    for where, text, colour in captions:
        text = _fit(text, size - 6)
        (width, height), _ = cv2.getTextSize(text, _FONT, _TEXT_SCALE, 1)
        origin = {_TOP: (3, height + 4), _BOTTOM: (3, size - 5),
                  _CENTRE: ((size - width) // 2, (size + height) // 2)}[where]
        _put(out, text, origin, colour)
    return out


def _fit(text: str, width: int) -> str:
    """``text`` cut (with "..") to fit ``width`` px in the title font."""
    fitted = text
    while fitted and cv2.getTextSize(fitted, _FONT, _TEXT_SCALE, 1)[0][0] > width:
        fitted = fitted[:-1]
    return fitted if fitted == text else fitted[:-2] + ".."


def _scale(height: int, header: int, bar: int) -> np.ndarray:
    """The colour scale column: titled, a jet bar of ``bar`` px below the ``header`` from 0
    (bottom) to the map's maximum (top), labelled max, 0.5 and 0."""
    column = np.zeros((height, _SCALE_WIDTH, 3), np.uint8)
    _put(column, "scale", (3, _HEADER - 5), _WHITE)
    top, bottom = header + 6, header + bar - 6
    ramp = np.linspace(255, 0, bottom - top).round().astype(np.uint8)[:, None]
    colours = cv2.cvtColor(cv2.applyColorMap(ramp, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    column[top:bottom, 3:3 + _SCALE_BAR] = colours
    for text, y in (("max", top + 4), ("0.5", (top + bottom) // 2 + 4), ("0", bottom)):
        _put(column, text, (_SCALE_BAR + 6, y), _WHITE)
    return column


def tile(cells: Sequence[Sequence[np.ndarray]], column_titles: Sequence[str],
         cell: int = CELL, captions: Sequence[Sequence[Sequence[Caption]]] | None = None,
         *, scale: bool = False) -> np.ndarray:
    """Rows of equally many RGB images as one RGB grid, titled per column (a title
    "method: target" on two lines).

    ``captions`` (same layout as ``cells``) are written into the cells; ``scale`` adds the
    heat maps' colour scale as a last column.
    """
    width = len(column_titles)
    if any(len(row) != width for row in cells):
        raise ValueError(f"every row needs {width} cells (one per column title)")
    lines = [title.split(": ", 1) for title in column_titles]
    header = np.zeros((_HEADER + _LINE * (max(map(len, lines)) - 1), cell * width, 3),
                      np.uint8)
    for j, title_lines in enumerate(lines):
        for k, line in enumerate(title_lines):
            cv2.putText(header, _fit(line, cell - 4), (j * cell + 3, _HEADER - 5 + k * _LINE),
                        _FONT, _TEXT_SCALE, _WHITE, 1, cv2.LINE_AA)
    rows = [header]
    for i, row in enumerate(cells):
        row_captions = captions[i] if captions is not None else [()] * width
        rows.append(np.concatenate([_cell(image, cell, text)
                                    for image, text in zip(row, row_captions, strict=True)], 1))
    grid = np.concatenate(rows, 0)
    if scale:
        grid = np.concatenate([grid, _scale(grid.shape[0], len(header), cell)], 1)
    return grid


def _input_captions(prediction: str, truth: str | None) -> list[Caption]:
    """The input cell's captions: the true label on top (where known), the prediction
    below, green when it matches the true label and red when not."""
    if truth is None:
        return [(_BOTTOM, prediction, _WHITE)] if prediction else []
    right = prediction.split(" ")[0] == truth
    return [(_TOP, f"true {truth}", _WHITE),
            (_BOTTOM, prediction, _RIGHT if right else _WRONG)]


def saliency_grid(faces: np.ndarray, maps: np.ndarray, column_titles: Sequence[str], *,
                  row_labels: Sequence[str] | None = None,
                  true_labels: Sequence[str | None] | None = None,
                  cell: int = CELL) -> np.ndarray:
    """One row per face: the input, then for each of its M maps the heat map and overlay,
    and the colour scale at the right.

    ``faces`` uint8 (N, H, W, C), ``maps`` (N, M, H, W); ``column_titles`` names the M maps
    (e.g. classes, or methods); ``row_labels`` is written on each input (e.g. the
    prediction, "happy 0.93"), and ``true_labels`` above it where known (None: unknown),
    the prediction then green when its class is the true one and red when not.
    """
    faces = np.asarray(faces)
    maps = np.asarray(maps)
    if maps.ndim != 4 or maps.shape[0] != faces.shape[0] or maps.shape[1] != len(column_titles):
        raise ValueError(f"maps of shape {maps.shape} do not match {faces.shape[0]} faces "
                         f"and {len(column_titles)} column titles")
    titles = ["input"]
    for name in column_titles:
        titles += [name, "(overlay)"]
    cells, captions = [], []
    for i, face in enumerate(faces):
        row = [face]
        row_captions = [_input_captions(row_labels[i] if row_labels else "",
                                        true_labels[i] if true_labels else None)]
        for m in maps[i]:
            row += [heatmap(m), overlay(face, m)]
            note = zero_note(m)
            row_captions += [[(_CENTRE, note, _NOTE)] if note else []] * 2
        cells.append(row)
        captions.append(row_captions)
    return tile(cells, titles, cell, captions, scale=True)


def class_average_grid(mean_faces: np.ndarray, maps: np.ndarray, class_names: Sequence[str],
                       method_names: Sequence[str], counts: Sequence[int], *,
                       cell: int = CELL) -> np.ndarray:
    """The "which regions matter per emotion" figure: one column per (true) class, a first
    row of mean faces (labelled with their counts), then one row of average-map overlays
    per method, and the colour scale at the right.

    ``mean_faces`` uint8 (K, H, W, C); ``maps`` (M, K, H, W).
    """
    rows = [list(mean_faces)]
    captions = [[[(_BOTTOM, f"n={n}", _WHITE)] for n in counts]]
    for m, method in enumerate(method_names):
        rows.append([overlay(face, maps[m, k]) for k, face in enumerate(mean_faces)])
        notes = [zero_note(maps[m, k]) if counts[k] else "no faces"
                 for k in range(len(class_names))]
        captions.append([[(_BOTTOM, method, _WHITE)] * (k == 0)
                         + ([(_CENTRE, note, _NOTE)] if note else [])
                         for k, note in enumerate(notes)])
    return tile(rows, list(class_names), cell, captions, scale=True)


def png_bytes(rgb: np.ndarray) -> bytes:
    """An RGB uint8 array encoded as PNG."""
    ok, data = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"cannot encode an image of shape {rgb.shape} as PNG")
    return data.tobytes()
