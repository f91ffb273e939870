"""PNG grids of attribution maps: input faces, heat maps and overlays.

Drawn with OpenCV into RGB arrays (the same array goes to a PNG file or to TensorBoard's
``add_image``). Maps are shown by their positive part scaled to the map's maximum (what
raises the score, or whose occlusion lowers it), in the "jet" colour map; overlays blend
that colour with the face.
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


def _cell(image: np.ndarray, size: int, label: str = "") -> np.ndarray:
    interpolation = cv2.INTER_CUBIC if image.shape[0] < size else cv2.INTER_AREA
    out = cv2.resize(face_rgb(image), (size, size), interpolation=interpolation)
    if label:
        cv2.putText(out, label, (3, size - 5), _FONT, _TEXT_SCALE, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(out, label, (3, size - 5), _FONT, _TEXT_SCALE, _WHITE, 1, cv2.LINE_AA)
    return out


def _fit(text: str, width: int) -> str:
    """``text`` cut (with "..") to fit ``width`` px in the title font."""
    fitted = text
    while fitted and cv2.getTextSize(fitted, _FONT, _TEXT_SCALE, 1)[0][0] > width:
        fitted = fitted[:-1]
    return fitted if fitted == text else fitted[:-2] + ".."


def tile(cells: Sequence[Sequence[np.ndarray]], column_titles: Sequence[str],
         cell: int = CELL, labels: Sequence[Sequence[str]] | None = None) -> np.ndarray:
    """Rows of equally many RGB images as one RGB grid, titled per column.

    ``labels`` (same layout as ``cells``) are written into the cells' lower-left corner.
    """
    width = len(column_titles)
    if any(len(row) != width for row in cells):
        raise ValueError(f"every row needs {width} cells (one per column title)")
    header = np.zeros((_HEADER, cell * width, 3), np.uint8)
    for j, title in enumerate(column_titles):
        cv2.putText(header, _fit(title, cell - 4), (j * cell + 3, _HEADER - 5), _FONT, _TEXT_SCALE,
                    _WHITE, 1, cv2.LINE_AA)
    rows = [header]
    for i, row in enumerate(cells):
        row_labels = labels[i] if labels is not None else [""] * width
        rows.append(np.concatenate([_cell(image, cell, text)
                                    for image, text in zip(row, row_labels, strict=True)], 1))
    return np.concatenate(rows, 0)


def saliency_grid(faces: np.ndarray, maps: np.ndarray, column_titles: Sequence[str], *,
                  row_labels: Sequence[str] | None = None, cell: int = CELL) -> np.ndarray:
    """One row per face: the input, then for each of its M maps the heat map and overlay.

    ``faces`` uint8 (N, H, W, C), ``maps`` (N, M, H, W); ``column_titles`` names the M maps
    (e.g. classes, or methods); ``row_labels`` is written on each input (e.g. prediction).
    """
    faces = np.asarray(faces)
    maps = np.asarray(maps)
    if maps.ndim != 4 or maps.shape[0] != faces.shape[0] or maps.shape[1] != len(column_titles):
        raise ValueError(f"maps of shape {maps.shape} do not match {faces.shape[0]} faces "
                         f"and {len(column_titles)} column titles")
    titles = ["input"]
    for name in column_titles:
        titles += [name, "(overlay)"]
    cells, labels = [], []
    for i, face in enumerate(faces):
        row = [face]
        for m in maps[i]:
            row += [heatmap(m), overlay(face, m)]
        cells.append(row)
        labels.append([row_labels[i] if row_labels else ""] + [""] * (len(row) - 1))
    return tile(cells, titles, cell, labels)


def class_average_grid(mean_faces: np.ndarray, maps: np.ndarray, class_names: Sequence[str],
                       method_names: Sequence[str], counts: Sequence[int], *,
                       cell: int = CELL) -> np.ndarray:
    """The "which regions matter per emotion" figure: one column per class, a first row of
    mean faces (labelled with their counts), then one row of average-map overlays per method.

    ``mean_faces`` uint8 (K, H, W, C); ``maps`` (M, K, H, W).
    """
    rows = [list(mean_faces)]
    labels = [[f"n={n}" for n in counts]]
    for m, method in enumerate(method_names):
        rows.append([overlay(face, maps[m, k]) for k, face in enumerate(mean_faces)])
        labels.append([method] + [""] * (len(class_names) - 1))
    return tile(rows, list(class_names), cell, labels)


def png_bytes(rgb: np.ndarray) -> bytes:
    """An RGB uint8 array encoded as PNG."""
    ok, data = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"cannot encode an image of shape {rgb.shape} as PNG")
    return data.tobytes()
