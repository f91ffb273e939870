"""Generic ``<root>/[<split>/]<class>/**/<image>`` folders (AI-Hub-style releases and the like).

Top-level folders named train / val / valid / validation / test are splits; without them
every image is in "train" and ingest assigns k-folds. Class folders may be renamed with
``class_map`` (folder name → class name; several folders may share a class), e.g. the
AI-Hub Korean names ``{"기쁨": "happy", "분노": "anger", ...}``. Images are found at any
depth below their class folder.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from ray_fer.data.formats._folders import class_images, folder_key, relative_posix, subfolders
from ray_fer.data.formats.base import DatasetFormatError, SourceItem, decode_image

#: Recognised top-level split folder names (lower-cased) → canonical split.
SPLIT_FOLDERS = {
    "train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"
}  # fmt: skip


class ClassFolders:
    """Reader of generic class folders.

    Options (keyword arguments of the ``class-folders`` factory):

    - ``class_map``: folder name → class name. Without it, folder names are class names.
    - ``class_names``: label order. Defaults to the order of first appearance in
      ``class_map``'s values, or to the sorted folder names without a map.
    - ``ignore_unknown``: skip class folders missing from ``class_map`` (or from
      ``class_names`` without a map) instead of failing.
    - ``needs_detection``: the images are whole photos; faces must be detected.
    - ``dataset``: the dataset name stored in every row.

    :meth:`split_source` reports the split folders found by the last :meth:`scan`.
    """

    name = "class-folders"

    def __init__(
        self,
        *,
        class_map: Mapping[str, str] | None = None,
        class_names: Sequence[str] | None = None,
        ignore_unknown: bool = False,
        needs_detection: bool = False,
        dataset: str = "class-folders",
    ) -> None:
        self.dataset = dataset
        self.ignore_unknown = ignore_unknown
        self.needs_detection = needs_detection
        self._class_map = _normalised_map(class_map) if class_map else None
        self._order = list(class_names) if class_names else None
        self._split_source: dict[str, str] = {}
        if self._order is not None:
            if len(set(self._order)) != len(self._order):
                raise ValueError(f"class-folders: class_names has duplicates: {self._order}")
            missing = sorted(set((self._class_map or {}).values()) - set(self._order))
            if missing:
                raise ValueError(
                    f"class-folders: class_map maps to {', '.join(missing)}, which "
                    f"class_names ({', '.join(self._order)}) lacks"
                )

    def class_names(self, root: Path) -> list[str]:
        if self._order is not None:
            return list(self._order)
        if self._class_map is not None:
            return list(dict.fromkeys(self._class_map.values()))
        parts = _split_parts(Path(root))
        return sorted({folder_key(f.name) for _, part in parts for f in subfolders(part)})

    def scan(self, root: Path) -> Iterator[SourceItem]:
        root = Path(root)
        names = self.class_names(root)
        label_of = {n: i for i, n in enumerate(names)}
        folder_map = self._class_map or {folder_key(n): n for n in names}
        hint = ("Add it to the class map (--class-map), or skip the folders it does not name "
                "with --ignore-unknown-classes (ignore_unknown=True)")
        self._split_source = {}
        self.skipped: list[dict[str, str]] = []
        count = 0
        for split, part in _split_parts(root):
            for class_name, image in class_images(
                part, folder_map, ignore_unknown=self.ignore_unknown, recursive=True, hint=hint,
                skipped=self.skipped, root=root,
            ):
                if part != root:
                    self._split_source[split] = part.name
                count += 1
                yield SourceItem(
                    source_file=relative_posix(root, image),
                    label=label_of[class_name],
                    label_name=class_name,
                    split=split,
                    needs_detection=self.needs_detection,
                )
        if count == 0:
            raise DatasetFormatError(
                f"{root}: no class folder matched class_map/class_names, nothing to read"
            )

    def load(self, root: Path, item: SourceItem) -> np.ndarray:
        return decode_image(Path(root) / item.source_file)

    def split_source(self) -> dict[str, str]:
        return dict(self._split_source)


def _normalised_map(class_map: Mapping[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for folder, name in class_map.items():
        key = folder_key(folder)
        if out.get(key, name) != name:
            raise ValueError(
                f"class-folders: class_map gives folder {folder!r} two classes: {out[key]}, {name}"
            )
        out[key] = name
    return out


def _split_parts(root: Path) -> list[tuple[str, Path]]:
    """``(canonical split, folder holding class folders)``: the split folders, or the root."""
    folders = subfolders(root)
    if not folders:
        raise DatasetFormatError(
            f"{root}: no folders inside; expected <root>/<class>/<image> or "
            "<root>/<split>/<class>/<image>"
        )
    splits = [f for f in folders if f.name.lower() in SPLIT_FOLDERS]
    if not splits:
        return [("train", root)]
    others = [f.name for f in folders if f not in splits]
    if others:
        raise DatasetFormatError(
            f"{root}: mixes split folders ({', '.join(f.name for f in splits)}) with other "
            f"folders ({', '.join(others)}); put every class folder inside a split folder"
        )
    return [(SPLIT_FOLDERS[f.name.lower()], f) for f in splits]
