"""Image files that tests need and cannot take from a dataset."""

from __future__ import annotations

import struct
import zlib


def _chunk(kind: bytes, body: bytes) -> bytes:
    return (struct.pack(">I", len(body)) + kind + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))


def huge_png_header(width: int = 30000, height: int = 30000) -> bytes:
    """A gray PNG declaring ``width`` x ``height`` pixels whose data holds one row: decoding
    it would allocate the whole image first; only its header is needed to refuse it."""
    row = zlib.compress(b"\0" * (width + 1))
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0,
                                                                0, 0))
            + _chunk(b"IDAT", row) + _chunk(b"IEND", b""))
