"""Every reader fuzzed with hypothesis: malformed rows, wrong types, broken and oversized
images, non-UTF-8 names, ``../`` paths, absolute paths and symlinks.

The contract for any input: ingest either succeeds with images of the stored shape, or
stops with a clear :class:`DatasetFormatError` / ``ValueError`` / :class:`ShardError`
(a message, never a crash deep inside csv, json, OpenCV or Arrow); nothing is read from
outside the dataset folder and nothing is written outside the output prefix.
"""

from __future__ import annotations

import csv
import io
import json
import os
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ray_fer.data.formats import DatasetFormatError
from ray_fer.data.formats.base import decode_image
from ray_fer.data.shards import ShardError, read_manifest
from ray_fer.ingest import ingest
from ray_fer.storage import resolve

#: Examples per reader: enough to hit every branch of the layouts below in a few seconds.
EXAMPLES = 100
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
#: What a user may see: a message naming the file, column or option.
CLEAR_ERRORS = (DatasetFormatError, ValueError, ShardError)
#: A file outside every dataset folder; a reader that follows ``../`` or an absolute path
#: from a label file would read it (it is a valid image, so it would be ingested).
OUTSIDE = "outside.png"


def _png(side: int = 8, channels: int = 1, value: int = 128) -> bytes:
    import cv2

    shape = (side, side) if channels == 1 else (side, side, channels)
    ok, data = cv2.imencode(".png", np.full(shape, value, np.uint8))
    assert ok
    return data.tobytes()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _huge_png(side: int) -> bytes:
    """A PNG whose header declares ``side`` x ``side`` pixels (far more than it holds)."""
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b""))


#: Image file contents: valid (gray, RGB, RGBA, 1 px), empty, truncated, random bytes,
#: and headers declaring huge images.
GOOD_IMAGES = st.sampled_from([_png(48), _png(16, 3), _png(16, 4)])
IMAGES = st.one_of(
    GOOD_IMAGES, GOOD_IMAGES,
    st.sampled_from([_png(), _png(1), b"",
                     _png(16)[:30], _huge_png(100_000), _huge_png(0), b"GIF89a\0\0"]),
    st.binary(max_size=64),
)
#: Table cells: valid-looking values, hostile paths, separators, quotes, NUL, non-ASCII.
CELLS = st.one_of(
    st.sampled_from(["0", "1", "3", "-1", "-2", "10", "0.5", "nan", "inf", "-inf", "1e309",
                     "", " ", "a.png", "b.png", "../" + OUTSIDE, "../../" + OUTSIDE,
                     "/etc/hostname", "sub/../a.png", "(0, 0, 8, 8)", "(0,0,0,0)",
                     "(nan, 0, inf, 8)", '"', ",", "\0", "Training", "PublicTest", "é",
                     "\ud800"]),
    st.text(max_size=8),
)


def _csv(header: list[str] | None, rows: list[list[str]]) -> str:
    """Rows as CSV text, quoted where needed (FER+ boxes hold commas)."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(([header] if header else []) + rows)
    return out.getvalue()


def _write_text(path: Path, text: str, garbage: bytes) -> None:
    """``text`` as UTF-8 (lone surrogates kept as bytes), with ``garbage`` bytes appended:
    non-UTF-8 input is part of the fuzz."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8", "surrogatepass") + garbage)


def _tree(root: Path) -> dict[str, float]:
    return {str(p): p.lstat().st_mtime for p in root.rglob("*")}


def check_ingest(fmt: str, build, **options) -> str:
    """Build a dataset with ``build(root)`` in a sandbox, ingest it, check the contract.

    Returns "ok" or the error's type and message tail, so that tests can see both
    outcomes happen (``--hypothesis-show-statistics`` lists them).
    """
    with tempfile.TemporaryDirectory(prefix="ray_fer-fuzz-") as tmp:
        sandbox = Path(tmp)
        (sandbox / OUTSIDE).write_bytes(_png(8, 1, value=7))
        root = sandbox / "data"
        root.mkdir()
        build(root)
        out = sandbox / "out"
        before = _tree(sandbox)
        try:
            manifest = ingest(fmt, root, str(out), folds=1, workers=1, progress=False,
                              reader_options=options or None)
        except CLEAR_ERRORS as exc:
            # A bare codec error names neither the file nor the line: not a clear error.
            assert not isinstance(exc, UnicodeError), exc
            assert str(exc), f"{type(exc).__name__} without a message"
            outcome = f"{type(exc).__name__}: {str(exc).rsplit(': ', 1)[-1][:40]}"
        else:
            outcome = "ok"
            assert read_manifest(resolve(out)) == manifest
            for skipped in manifest.skipped:
                assert skipped["file"] and skipped["reason"]
        after = _tree(sandbox)
        written = {p for p in after if p not in before or after[p] != before[p]}
        assert all(Path(p).is_relative_to(out) for p in written), written - {
            p for p in written if Path(p).is_relative_to(out)}
        if outcome == "ok":
            # The image outside the dataset (value 7) must not have been ingested.
            import pyarrow.parquet as pq

            for shard in out.glob("shard-*.parquet"):
                names = pq.read_table(shard, columns=["source_file"])["source_file"]
                assert all(".." not in n and not n.startswith("/")
                           for n in names.to_pylist())
        return outcome


def fuzz_ingest(fmt: str, build, **options) -> None:
    """:func:`check_ingest` inside a hypothesis test, recording the outcome as an event."""
    event(f"{fmt}: {check_ingest(fmt, build, **options)}")


def mostly(valid: str) -> st.SearchStrategy[str]:
    """``valid`` three times in four, else a hostile cell: deep code paths get reached."""
    return st.one_of(st.just(valid), st.just(valid), st.just(valid), CELLS)


# ----------------------------------------------------------------------------- CSV layouts

PIXELS = st.one_of(st.just(" ".join(["300"] * 2304)),
                   st.lists(st.integers(-5, 300).map(str), max_size=6).map(" ".join), CELLS)


@FUZZ
@given(header=st.one_of(st.just(["emotion", "pixels", "Usage"]),
                        st.just(["emotion", " Usage", " pixels"]),
                        st.lists(CELLS, max_size=4)),
       rows=st.lists(st.tuples(mostly("3"), st.one_of(st.just(" ".join(["9"] * 2304)),
                                                       PIXELS),
                               mostly("Training")), max_size=4),
       garbage=st.sampled_from([b"", b"", b"\xff\xfe", b"\x00", b"\x80abc\n"]))
def test_fer2013_csv(header, rows, garbage):
    def build(root):
        order = {"emotion": 0, "pixels": 1, "Usage": 2}
        cells = [[r[order.get(h.strip(), 0)] for h in header] for r in rows]
        _write_text(root / "fer2013.csv", _csv(header, cells), garbage)

    fuzz_ingest("fer2013-csv", build)


def test_fer2013_csv_with_an_oversized_field_is_a_clear_error(tmp_path):
    # csv refuses fields over 128 KiB with its own error type (csv.Error, not ValueError).
    csv_file = tmp_path / "fer2013.csv"
    csv_file.write_text(_csv(["emotion", "pixels", "Usage"], [["0", "1 " * 70_000, "Training"]]))
    with pytest.raises(DatasetFormatError, match="fer2013.csv"):
        ingest("fer2013-csv", csv_file, str(tmp_path / "out"), folds=1, workers=1,
               progress=False)


VOTES = st.lists(st.one_of(st.integers(0, 9).map(str), st.integers(0, 9).map(str), CELLS),
                 min_size=10, max_size=10)


@FUZZ
@given(
       rows=st.lists(st.tuples(mostly("a.png"), mostly("(0, 0, 8, 8)"), VOTES), max_size=4),
       images=st.dictionaries(st.sampled_from(["a.png", "b.png"]), IMAGES),
       width=st.sampled_from([12, 12, 12, 11, 13]),
       garbage=st.sampled_from([b"", b"", b"\xff", b"\x00"]))
def test_ferplus_label_csv(rows, images, width, garbage):
    def build(root):
        folder = root / "FER2013Train"
        lines = [[name, box, *votes][:width] for name, box, votes in rows]
        _write_text(folder / "label.csv", _csv(None, lines), garbage)
        for name, data in images.items():
            (folder / name).write_bytes(data)

    fuzz_ingest("ferplus", build)


AFFECTNET_HEADER = ["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
                    "facial_landmarks", "expression", "valence", "arousal"]


@FUZZ
@given(
       rows=st.lists(st.tuples(*map(mostly, ["1/a.png", "0", "0", "8", "8", "", "1", "0.5",
                                             "-2"])).map(list), max_size=4),
       files=st.lists(st.sampled_from(["1/a.png", "a.png", "../" + OUTSIDE]), max_size=4),
       images=st.dictionaries(st.sampled_from(["1/a.png", "a.png"]), IMAGES),
       header=st.one_of(st.just(AFFECTNET_HEADER), st.just(AFFECTNET_HEADER),
                        st.lists(CELLS, max_size=3)))
def test_affectnet_csv(rows, files, images, header):
    def build(root):
        cells = [[f, *r[1:]] for f, r in zip(files, rows, strict=False)] + rows[len(files):]
        _write_text(root / "training.csv", _csv(header, cells), b"")
        folder = root / "Manually_Annotated_Images"
        for name, data in images.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)

    fuzz_ingest("affectnet", build)


TAIWANESE_HEADER = ["file_name", *(f"{k}_{e}" for k in ("prop", "intensity")
                                  for e in ("happy", "sad", "angry", "disgusted", "fearful",
                                            "surprised"))]


@FUZZ
@given(names=st.lists(st.sampled_from(["0111b01.jpg", "0201a02.jpg", "1201002.jpg",
                                       "9999z99.jpg", "x.jpg"]), max_size=3, unique=True),
       images=st.lists(IMAGES, min_size=3, max_size=3),
       rows=st.lists(st.tuples(*map(mostly, ["0.5", "0.1", "0", "0", "0.4", "0"] + ["3"] * 6))
                     .map(list), max_size=3),
       with_info=st.booleans())
def test_taiwanese_ratings(names, images, rows, with_info):
    def build(root):
        folder = root / "faces_256x256"
        folder.mkdir()
        for name, data in zip(names, images, strict=False):
            (folder / name).write_bytes(data)
        if with_info:
            cells = [[n, *r] for n, r in zip(names + ["x.jpg"] * 3, rows, strict=False)]
            _write_text(root / "image_info.csv", _csv(TAIWANESE_HEADER, cells), b"")

    fuzz_ingest("taiwanese", build)


# ------------------------------------------------------------------------- label files, JSON

@FUZZ
@given(
       names=st.lists(st.sampled_from(["KA.AN1.39.tiff", "KM.NE1.1.tiff", "KA.HA2.4.tiff",
                                       "KA.XX1.2.tiff", "bad.tiff", ".hidden.tiff"]),
                      min_size=1, max_size=3, unique=True),
       images=st.lists(IMAGES, min_size=3, max_size=3),
       lines=st.lists(st.one_of(st.just("1 2.87 2.52 2.10 1.97 1.97 2.06 KM-NE1"),
                                st.just("# HAP SAD SUR ANG DIS FEA"),
                                st.lists(CELLS, max_size=9).map(" ".join)), max_size=4),
       garbage=st.sampled_from([b"", b"", b"\xc3\x28"]))
def test_jaffe_labels(names, images, lines, garbage):
    def build(root):
        for name, data in zip(names, images, strict=False):
            (root / name).write_bytes(data)
        _write_text(root / "JAFFE_labels.txt", "\n".join(lines), garbage)

    fuzz_ingest("jaffe", build)


JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-20, 20), st.floats(allow_nan=True),
              CELLS),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(CELLS, inner, max_size=3)),
    max_leaves=8,
)
FRAME = st.fixed_dictionaries(
    {"valence": st.one_of(st.integers(-12, 12), st.integers(-10, 10), JSON_VALUES),
     "arousal": st.one_of(st.integers(-12, 12), st.integers(-10, 10), JSON_VALUES),
     "landmarks": st.one_of(st.just([[1, 1], [6, 7]]), st.just([[1, 1], [6, 7]]),
                           st.just([[0, 0], [0, 0]]),
                            st.just([[1e308, 1], [-1e308, 2]]), JSON_VALUES)})


@FUZZ
@given(doc=st.one_of(
           st.fixed_dictionaries({
               "actor": st.one_of(st.just("a1"), st.just("a1"), JSON_VALUES),
               "frames": st.dictionaries(st.one_of(st.sampled_from(["00000", "00001"]), CELLS),
                                         st.one_of(FRAME, FRAME, JSON_VALUES), max_size=3)}),
           JSON_VALUES),
       frames=st.dictionaries(st.sampled_from(["00000", "00001"]), IMAGES),
       raw=st.sampled_from([None, None, None, "{", "[1,", "\ud800",
                            '{"actor": "\\ud800", "frames": {"00000": {"valence": 1, '
                            '"arousal": 1, "landmarks": [[1, 1], [6, 7]]}}}']))
def test_afew_va_json(doc, frames, raw):
    def build(root):
        clip = root / "001"
        text = raw if raw is not None else json.dumps(doc)
        _write_text(clip / "001.json", text, b"")
        for name, data in frames.items():
            (clip / f"{name}.png").write_bytes(data)

    fuzz_ingest("afew-va", build)


# ------------------------------------------------------------------ folders, names, symlinks

#: Folder and file names, as bytes: Linux allows any byte but '/' and NUL.
NAMES = st.one_of(st.sampled_from([b"happy", b"sad", b"train", b"test", b"\xff\xfe", b".hidden",
                                   "기쁨".encode(), b"a b", b"-"]),
                  st.binary(min_size=1, max_size=6).filter(
                      lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b"..")))
FILES = st.one_of(st.sampled_from([b"Training_1.png", b"PublicTest_2.jpg", b"S010_004_00000017.png",
                                   b"x.png", b"\xff.png", b"notes.txt"]),
                  NAMES.map(lambda b: b + b".png"))
LINKS = st.sampled_from(["none", "outside-file", "outside-dir", "loop", "broken"])


def _folder_tree(classes, files, images, link):
    def build(root):
        rootb = os.fsencode(root)
        for cls in classes:
            folder = os.path.join(rootb, cls)
            os.makedirs(folder, exist_ok=True)
            for name, data in zip(files, images, strict=False):
                with open(os.path.join(folder, name), "wb") as f:
                    f.write(data)
        if classes and link != "none":
            first = os.path.join(rootb, classes[0])
            target = {"outside-file": os.path.join(os.path.dirname(rootb), OUTSIDE.encode()),
                      "outside-dir": os.path.dirname(rootb), "loop": first,
                      "broken": b"/nonexistent/x.png"}[link]
            os.symlink(target, os.path.join(first, b"link.png" if "dir" not in link
                                            and link != "loop" else b"linkdir"))
    return build


FOLDER_FORMATS = ["class-folders", "ckplus48", "fer2013-folders"]


@FUZZ
@given(fmt=st.sampled_from(FOLDER_FORMATS),
       nest=st.booleans(),
       classes=st.lists(NAMES, max_size=3, unique=True),
       files=st.lists(FILES, max_size=3, unique=True),
       images=st.lists(IMAGES, min_size=3, max_size=3),
       link=LINKS)
def test_folder_layouts(fmt, nest, classes, files, images, link):
    if nest:  # fer2013-folders and split folders: <root>/<split>/<class>/<image>
        classes = [b"train/" + c for c in classes]
    fuzz_ingest(fmt, _folder_tree(classes, files, images, link))


# -------------------------------------------------------------------------------- images

@FUZZ
@given(data=IMAGES)
def test_decode_image_accepts_or_names_the_file(data):
    try:
        image = decode_image(Path("fuzz.png"), data)
    except DatasetFormatError as exc:
        assert "fuzz.png" in str(exc)
    else:
        assert image.dtype == np.uint8 and image.size > 0
        assert image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)


def test_image_declaring_ten_billion_pixels_is_refused_clearly():
    with pytest.raises(DatasetFormatError, match="huge.png"):
        decode_image(Path("huge.png"), _huge_png(100_000))


def test_fuzz_reaches_both_outcomes():
    """The fuzz above is not vacuous: the same harness accepts good input and refuses bad."""
    good = _folder_tree([b"happy", b"sad"], [b"x.png"], [_png(16)] * 1, "none")
    assert check_ingest("class-folders", good) == "ok"
    escaping = _folder_tree([b"happy"], [b"x.png"], [_png(16)], "none")

    def climbing(root):
        escaping(root)
        folder = root / "FER2013Train"
        folder.mkdir()
        (folder / "label.csv").write_text(
            f'../../{OUTSIDE},"(0, 0, 8, 8)",9,0,0,0,0,0,0,0,0,0\n')

    assert f"image path '../../{OUTSIDE}'" in check_ingest("ferplus", climbing)
