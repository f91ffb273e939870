"""Readers for the public dataset layouts, by CLI name.

Each entry maps a format name to ``module:factory``; factories take keyword options
(e.g. ``class_map`` for ``class-folders``) and return a :class:`~.base.Reader`.
Imported lazily so that one broken optional reader never blocks the others.
"""

from __future__ import annotations

import importlib
from types import MappingProxyType

from ray_fer.data.formats.base import DatasetFormatError, Reader, SourceItem

__all__ = ["FORMATS", "DatasetFormatError", "Reader", "SourceItem", "get_reader"]

FORMATS = MappingProxyType(
    {
        "fer2013-csv": "ray_fer.data.formats.fer2013:Fer2013Csv",
        "fer2013-folders": "ray_fer.data.formats.fer2013:Fer2013Folders",
        "ferplus": "ray_fer.data.formats.ferplus:FerPlus",
        "ckplus48": "ray_fer.data.formats.ckplus:CkPlus48",
        "jaffe": "ray_fer.data.formats.jaffe:Jaffe",
        "taiwanese": "ray_fer.data.formats.taiwanese:Taiwanese",
        "affectnet": "ray_fer.data.formats.affectnet:AffectNet",
        "afew-va": "ray_fer.data.formats.afewva:AfewVa",
        "class-folders": "ray_fer.data.formats.class_folders:ClassFolders",
        "synthetic": "ray_fer.data.synthetic:SyntheticFaces",
    }
)


def get_reader(name: str, **options) -> Reader:
    """The reader registered as ``name``, built with ``options``."""
    try:
        target = FORMATS[name]
    except KeyError:
        raise ValueError(
            f"unknown format {name!r}; choose one of: {', '.join(sorted(FORMATS))}"
        ) from None
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)(**options)
