"""Reading label files line by line, and human emotion ratings as soft labels.

Shared by the readers whose labels come from text files (JAFFE, Taiwanese, AffectNet,
AFEW-VA): every error names the file and the line.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ray_fer.data.formats.base import DatasetFormatError, require_columns


def utf8_lines(path: Path) -> Iterator[str]:
    """The lines of ``path`` decoded as UTF-8 (a leading BOM dropped), streamed.

    Decoding line by line keeps memory flat for large CSVs and lets a bad byte be
    reported with its exact line.
    """
    try:
        f = path.open("rb")
    except OSError as exc:
        raise DatasetFormatError(f"{path}: cannot read ({exc.strerror})") from exc
    with f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DatasetFormatError(
                    f"{path}, line {number}: not UTF-8 text (byte {raw[exc.start]:#04x} at "
                    f"column {exc.start + 1}); save the file as UTF-8"
                ) from None
            yield line.removeprefix("\ufeff") if number == 1 else line


class CsvRows:
    """``csv.reader`` over the UTF-8 lines of ``path``; ``line_num`` as csv's.

    csv's own errors (a field over its size limit, a stray quote in strict dialects) are
    not ValueErrors: they become DatasetFormatError naming the file and line.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._rows = csv.reader(utf8_lines(path))

    @property
    def line_num(self) -> int:
        return self._rows.line_num

    def __iter__(self) -> CsvRows:
        return self

    def __next__(self) -> list[str]:
        try:
            return next(self._rows)
        except csv.Error as exc:
            raise DatasetFormatError(
                f"{self.path}, line {self._rows.line_num}: malformed CSV ({exc})"
            ) from None


@dataclass(frozen=True)
class CsvRecord:
    """One data row of a CSV file with a header."""

    #: ``"<file>, line <n>"``, the start of every error about this row.
    where: str
    line: int
    #: Header column (stripped) → the row's raw cell.
    fields: dict[str, str]


def csv_records(path: Path, needed: Sequence[str]) -> Iterator[CsvRecord]:
    """The rows of a headed CSV file as column → cell; blank rows are skipped.

    The header is stripped (some copies write "emotion, Usage, pixels"). A missing
    ``needed`` column or a row whose field count differs from the header's raises
    DatasetFormatError naming the file and line.
    """
    rows = CsvRows(path)
    header = [h.strip() for h in next(rows, [])]
    require_columns(path, header, needed)
    index = {c: header.index(c) for c in header}  # a repeated column: its first occurrence
    for row in rows:
        if not any(cell.strip() for cell in row):
            continue
        where = f"{path}, line {rows.line_num}"
        if len(row) != len(header):
            raise DatasetFormatError(f"{where}: {len(row)} fields, the header has {len(header)}")
        yield CsvRecord(where, rows.line_num, {c: row[i] for c, i in index.items()})


def read_utf8(path: Path) -> str:
    """The whole of ``path`` as UTF-8 text; errors name the file and line."""
    return "".join(utf8_lines(path))


def parse_float(text: str, where: str, column: str) -> float:
    """``text`` as a float; DatasetFormatError naming ``where`` (file, line) and ``column``."""
    try:
        return float(text)
    except ValueError:
        raise DatasetFormatError(f"{where}, column {column!r}: {text!r} is not a number") from None


def emotion_soft_label(
    weights: Mapping[str, float], class_names: Sequence[str]
) -> tuple[float, ...] | None:
    """Non-negative per-emotion ``weights`` as a distribution over ``class_names``.

    Classes without a weight (neutral, for raters who could only choose among six
    emotions) get 0. None when every weight is 0: nothing to learn from.
    """
    unknown = set(weights) - set(class_names)
    if unknown:
        raise ValueError(f"weights for unknown classes {sorted(unknown)}")
    total = sum(weights.values())
    if total <= 0:
        return None
    return tuple(weights.get(name, 0.0) / total for name in class_names)
