"""FER+ reader: real label.csv files, the FER+ majority protocol, malformed rows."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from ray_fer.data.formats import DatasetFormatError, get_reader
from ray_fer.data.formats.ferplus import EMOTIONS, FerPlus, majority_vote

FOLDERS = {"FER2013Train": "train", "FER2013Valid": "val"}


@pytest.fixture(scope="module")
def ferplus(real_dataset) -> Path:
    return real_dataset("ferplus")


@pytest.fixture(scope="module")
def votes(ferplus) -> dict[str, np.ndarray]:
    """source_file → the 10 vote counts, read here independently of the reader."""
    out = {}
    for folder in FOLDERS:
        with (ferplus / folder / "label.csv").open(newline="") as f:
            for row in csv.reader(f):
                out[f"{folder}/{row[0]}"] = np.array(row[2:], dtype=np.int64)
    return out


@pytest.fixture(scope="module")
def scans(ferplus) -> dict[str, tuple[list[dict], list]]:
    """majority rule → (skipped rows, items) of one scan of the real folders."""
    out = {}
    for rule in ("ferplus", "argmax"):
        reader = get_reader("ferplus", majority=rule)
        items = list(reader.scan(ferplus))
        out[rule] = (reader.skipped, items)
    return out


def test_label_csv_row_counts_match_the_datasets_readme(votes):
    per_split = Counter(FOLDERS[f.split("/")[0]] for f in votes)
    assert per_split == {"train": 28_558, "val": 3_579}


@pytest.mark.parametrize("majority", ["ferplus", "argmax"])
def test_kept_and_skipped_rows_partition_label_csv(scans, votes, majority):
    skipped, items = scans[majority]
    kept = [i.source_file for i in items]
    assert sorted(kept + [s["file"] for s in skipped]) == sorted(votes)
    assert all(s["reason"] for s in skipped)


def test_ferplus_majority_keeps_what_the_protocol_keeps(scans, votes):
    _, items = scans["ferplus"]
    files = list(votes)
    v = np.stack([votes[f] for f in files])
    # Microsoft's FERPlus "majority" mode, vectorised: single votes are outliers; the top
    # column needs more than half of the rest and must be an emotion (not unknown / NF).
    v = np.where(v > 1, v, 0)
    keep = (v.max(1) > 0.5 * v.sum(1)) & (v.argmax(1) < len(EMOTIONS))
    expected = {f: int(label) for f, label, k in zip(files, v.argmax(1), keep, strict=True) if k}
    assert {i.source_file: i.label for i in items} == expected
    # The image counts reported with this protocol in the FER+ literature.
    assert Counter(i.split for i in items) == {"train": 25_045, "val": 3_191}


def test_argmax_majority_drops_only_unknown_and_not_face_winners(scans, votes):
    skipped, items = scans["argmax"]
    files = list(votes)
    winners = np.stack([votes[f] for f in files]).argmax(1)  # first maximum on ties
    expected = {f: int(w) for f, w in zip(files, winners, strict=True) if w < len(EMOTIONS)}
    assert {i.source_file: i.label for i in items} == expected
    assert Counter(i.split for i in items) == {"train": 28_385, "val": 3_555}
    assert {s["reason"] for s in skipped} == {
        "majority vote is 'unknown'", "majority vote is 'NF'"
    }  # fmt: skip


def test_items_carry_vote_shares_box_split_and_label_name(scans, votes):
    _, items = scans["ferplus"]
    emotion_votes = np.stack([votes[i.source_file][: len(EMOTIONS)] for i in items])
    np.testing.assert_allclose(
        np.array([i.soft_label for i in items]),
        emotion_votes / emotion_votes.sum(1, keepdims=True),
    )
    assert all(i.label_name == EMOTIONS[i.label] for i in items)
    assert all(i.split == FOLDERS[i.source_file.split("/")[0]] for i in items)
    assert {i.box for i in items} == {(0.0, 0.0, 48.0, 48.0)}


def test_a_sample_of_images_decodes_to_48x48_uint8(ferplus, scans):
    _, items = scans["ferplus"]
    for item in items[::2000]:
        image = FerPlus().load(ferplus, item)
        assert image.shape == (48, 48) and image.dtype == np.uint8


@pytest.mark.parametrize(
    ("votes", "ferplus_rule", "argmax_rule"),
    [
        ([4, 4, 0, 0, 0, 0, 0, 0, 2, 0], None, 0),  # tie of emotions: argmax takes the first
        ([2, 0, 0, 0, 0, 0, 0, 0, 6, 2], 8, 8),  # unknown wins
        ([0, 0, 0, 1, 0, 0, 0, 0, 0, 9], 9, 9),  # not a face
        ([6, 1, 1, 1, 1, 0, 0, 0, 0, 0], 0, 0),  # clear majority
        ([4, 1, 1, 1, 1, 1, 1, 0, 0, 0], 0, 0),  # 4 of 4 votes once the single votes go
        ([4, 3, 3, 0, 0, 0, 0, 0, 0, 0], None, 0),  # 4 of 10 is no majority
    ],
)
def test_majority_vote_rules(votes, ferplus_rule, argmax_rule):
    assert majority_vote(votes, "ferplus") == ferplus_rule
    assert majority_vote(votes, "argmax") == argmax_rule


def _write_labels(root: Path, rows: list[str], folder: str = "FER2013Test") -> Path:
    (root / folder).mkdir(parents=True, exist_ok=True)
    path = root / folder / "label.csv"
    path.write_text("".join(row + "\n" for row in rows))
    return path


def test_test_folder_rows_are_kept_or_skipped_with_their_reason(tmp_path):
    _write_labels(
        tmp_path,
        [
            'fer0032220.png,"(0, 0, 48, 48)",0,0,0,0,0,0,0,0,0,10',
            'fer0032221.png,"(1, 2, 40, 44)",0,8,1,0,0,0,0,0,1,0',
            'fer0032222.png,"(0, 0, 48, 48)",4,4,0,0,0,0,0,0,2,0',
        ],
    )
    reader = FerPlus()
    items = list(reader.scan(tmp_path))
    assert [(i.source_file, i.label_name, i.split, i.box) for i in items] == [
        ("FER2013Test/fer0032221.png", "happiness", "test", (1.0, 2.0, 40.0, 44.0))
    ]
    assert items[0].soft_label == (0.0, 8 / 9, 1 / 9, 0.0, 0.0, 0.0, 0.0, 0.0)
    assert reader.skipped == [
        {"file": "FER2013Test/fer0032220.png", "reason": "majority vote is 'NF'"},
        {"file": "FER2013Test/fer0032222.png", "reason": "no majority (FER+ protocol)"},
    ]
    assert reader.split_source() == {
        "train": "FER2013Train", "val": "FER2013Valid", "test": "FER2013Test"
    }  # fmt: skip
    list(reader.scan(tmp_path))  # a second scan starts a fresh list
    assert len(reader.skipped) == 2


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ('a.png,"(0, 0, 48, 48)",4,0,0', ["5 fields"]),
        ('a.png,"(0, 0, 48, 48)",4,0,0,1,x,2,0,0,0,0', ["column 'anger'", "'x'"]),
        ('a.png,"(0, 0, 48, 48)",4,0,0,1,3,2,0,0,0,-1', ["column 'NF'", "'-1'"]),
        ('a.png,"(0, 0, 48)",4,0,0,1,3,2,0,0,0,0', ["column 'face box'"]),
        ('a.png,"(0, 0, 48, 48)",0,0,0,0,0,0,0,0,0,0', ["no votes"]),
    ],
    ids=["field-count", "non-integer-vote", "negative-vote", "bad-box", "no-votes"],
)
def test_malformed_rows_raise_errors_naming_file_line_and_column(tmp_path, row, expected):
    path = _write_labels(tmp_path, ['ok.png,"(0, 0, 48, 48)",9,0,0,1,0,0,0,0,0,0', row])
    with pytest.raises(DatasetFormatError) as err:
        list(FerPlus().scan(tmp_path))
    message = str(err.value)
    assert f"{path}, line 2" in message
    for part in expected:
        assert part in message


def test_missing_folders_or_label_file_are_errors(tmp_path):
    with pytest.raises(DatasetFormatError, match="none of the FER\\+ folders"):
        list(FerPlus().scan(tmp_path))
    (tmp_path / "FER2013Valid").mkdir()
    with pytest.raises(DatasetFormatError, match="label.csv: missing"):
        list(FerPlus().scan(tmp_path))


def test_unknown_majority_rule_is_refused():
    with pytest.raises(ValueError, match="unknown majority rule 'mean'"):
        FerPlus(majority="mean")
