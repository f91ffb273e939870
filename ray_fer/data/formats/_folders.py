"""Listing ``<parent>/<class>/<image>`` folders, shared by the folder-based readers."""

from __future__ import annotations

import errno
import unicodedata
from collections.abc import Iterator, Mapping
from pathlib import Path

from ray_fer.data.formats.base import DatasetFormatError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})


def folder_key(name: str) -> str:
    """A folder name as looked up in class maps.

    NFC-normalised because macOS (and archives made there) store names decomposed (NFD):
    a Korean folder name typed in a map would otherwise never match the one on disk.
    """
    return unicodedata.normalize("NFC", name)


def subfolders(folder: Path) -> list[Path]:
    """Non-hidden directories directly inside ``folder``, sorted by name."""
    if not folder.is_dir():
        raise DatasetFormatError(f"{folder}: not a folder (does the path exist?)")
    return sorted(
        (p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.name,
    )


def image_files(folder: Path, *, recursive: bool = False,
                skipped: list[dict[str, str]] | None = None,
                root: Path | None = None) -> list[Path]:
    """Image files in ``folder`` (and below it when ``recursive``), sorted by relative path.

    Hidden files and files of other types (``Thumbs.db``, notes) are not images and are
    left out; a folder with no image at all is an error. What looks like an image but
    cannot be read as one file (a symlink loop, a broken symlink) and, when
    ``recursive``, a symlink to a folder (not followed) are appended to ``skipped`` as
    ``{"file", "reason"}``, the file relative to ``root`` (default ``folder``).
    """
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    images, passed = [], []
    for path in candidates:
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        if recursive and path.is_symlink() and path.is_dir():
            reason = "symlink to a folder, not followed"
        elif path.suffix.lower() not in IMAGE_SUFFIXES or path.is_dir():
            continue
        elif path.is_file():
            images.append(path)
            continue
        else:
            reason = _not_a_file(path)
        passed.append({"file": relative_posix(root or folder, path), "reason": reason})
    if skipped is not None:  # in path order, as the images: ingest stays reproducible
        skipped.extend(sorted(passed, key=lambda entry: entry["file"]))
    if not images:
        raise DatasetFormatError(
            f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in this class folder; "
            "add its images or remove the folder"
        )
    return sorted(images, key=lambda p: p.relative_to(folder).as_posix())


def _not_a_file(path: Path) -> str:
    """Why ``path`` cannot be read as a file."""
    try:
        path.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symlink loop"
        if exc.errno == errno.ENOENT and path.is_symlink():
            return "broken symlink (its target does not exist)"
        return f"cannot be read ({exc.strerror})"
    return "not a regular file"


def class_images(
    parent: Path,
    class_map: Mapping[str, str],
    *,
    ignore_unknown: bool = False,
    recursive: bool = False,
    hint: str = "",
    skipped: list[dict[str, str]] | None = None,
    root: Path | None = None,
) -> Iterator[tuple[str, Path]]:
    """``(class name, image path)`` for every image in the class folders of ``parent``.

    ``class_map`` maps folder names (NFC, see :func:`folder_key`) to class names. A folder
    missing from it is an error naming the folder (``hint`` says what to do), or skipped
    when ``ignore_unknown``. Folders are visited in name order, images in path order.
    Entries that are not images to read go to ``skipped`` (see :func:`image_files`),
    relative to ``root`` (default ``parent``).
    """
    folders = subfolders(parent)
    if not folders:
        raise DatasetFormatError(f"{parent}: no class folders inside; expected <class>/<image>")
    for folder in folders:
        key = folder_key(folder.name)
        if key not in class_map:
            if ignore_unknown:
                continue
            raise DatasetFormatError(
                f"{folder}: unknown class folder {folder.name!r}; expected one of: "
                f"{', '.join(sorted(class_map))}" + (f". {hint}" if hint else "")
            )
        for image in image_files(folder, recursive=recursive, skipped=skipped,
                                 root=root or parent):
            yield class_map[key], image


def relative_posix(root: Path, path: Path) -> str:
    """``path`` relative to ``root`` with forward slashes, as stored in ``source_file``.

    Names that are not valid UTF-8 (Linux allows any bytes) cannot be stored in the
    shards' string columns: refused here, naming the file, rather than deep in Parquet.
    """
    relative = path.relative_to(root).as_posix()
    try:
        relative.encode("utf-8")
    except UnicodeEncodeError:
        raise DatasetFormatError(
            f"{root}: file or folder name {relative!r} is not valid UTF-8; rename it"
        ) from None
    return relative
