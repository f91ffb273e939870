"""Ingestion end to end: real datasets → shards on disk and on a real S3 server → Ray Data.

Bad input must fail with a message naming the file, column or endpoint, and must leave
no manifest behind (also when a valid one was there before).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support.images import huge_png_header
from support.s3 import free_ports

from ray_fer.data.detectors import mtcnn_installed, resolve_detector
from ray_fer.data.formats import DatasetFormatError
from ray_fer.data.shards import MANIFEST, ShardError, decode_images, read_manifest, verify_shards
from ray_fer.ingest import ingest, main
from ray_fer.storage import resolve

CKPLUS_COUNTS = {"anger": 135, "contempt": 54, "disgust": 177, "fear": 75, "happy": 207,
                 "sadness": 84, "surprise": 249}


@pytest.fixture(scope="module")
def ray_local(s3_server, local_ray):
    """A real local Ray whose workers inherit the S3 variables set by ``s3_server``."""
    return local_ray


@pytest.fixture(scope="module")
def ckplus_local(real_dataset, tmp_path_factory):
    """CK+48 ingested once to a local folder: (source root, shard location, manifest)."""
    root = real_dataset("ckplus48")
    loc = resolve(tmp_path_factory.mktemp("ckplus-shards"))
    return root, loc, ingest("ckplus48", root, loc.uri, progress=False)


def read_all(loc, manifest) -> pa.Table:
    return pa.concat_tables(
        pq.read_table(loc.join(s.file), filesystem=loc.fs) for s in manifest.shards)


def row_digests(source_files, images: np.ndarray) -> list[tuple[str, str]]:
    return sorted((f, hashlib.sha256(img.tobytes()).hexdigest())
                  for f, img in zip(source_files, images, strict=True))


def test_ckplus48_manifest_counts_shape_and_subject_disjoint_folds(ckplus_local):
    _, loc, manifest = ckplus_local
    assert read_manifest(loc) == manifest
    verify_shards(loc, manifest)
    assert manifest.counts == {"train": CKPLUS_COUNTS}
    assert manifest.num_rows == 981 and manifest.image_shape == [48, 48, 1]
    assert (manifest.dataset, manifest.format, manifest.split_source) == (
        "ckplus48", "ckplus48", {})
    folds = manifest.folds
    assert (folds["k"], folds["seed"], folds["by"]) == (10, 0, "subject")
    assert sum(folds["subjects_per_fold"]) == 118 and sum(folds["rows_per_fold"]) == 981
    assert manifest.face_detection == {"attempted": 0, "found": 0, "failed": []}
    table = read_all(loc, manifest)
    fold_of: dict[str, set[int]] = {}
    for subject, fold in zip(table["subject_id"].to_pylist(), table["fold"].to_pylist(),
                             strict=True):
        fold_of.setdefault(subject, set()).add(fold)
    assert len(fold_of) == 118 and all(len(f) == 1 for f in fold_of.values())
    assert {f for fs in fold_of.values() for f in fs} == set(range(10))


def test_reingest_is_idempotent(ckplus_local, tmp_path):
    root, loc, manifest = ckplus_local
    again = ingest("ckplus48", root, loc.uri, workers=1, progress=False)
    assert again.to_json() == manifest.to_json()
    elsewhere = ingest("ckplus48", root, str(tmp_path), progress=False)
    assert (tmp_path / MANIFEST).read_bytes() == (Path(loc.path) / MANIFEST).read_bytes()
    assert [s.sha256 for s in elsewhere.shards] == [s.sha256 for s in manifest.shards]


def test_s3_round_trip_through_ray_data_gives_the_same_rows(ckplus_local, s3_server, ray_local):
    root, local, local_manifest = ckplus_local
    uri = s3_server.new_bucket() + "/ckplus48/v1"
    manifest = ingest("ckplus48", root, uri, progress=False)
    assert [s.sha256 for s in manifest.shards] == [s.sha256 for s in local_manifest.shards]
    loc = resolve(uri)
    assert read_manifest(loc) == manifest
    verify_shards(loc, manifest)

    context = ray_local.data.DataContext.get_current()
    v2 = context.use_datasource_v2
    # Ray 2.60's default reader starts 32 footer-reader actors per read: tens of seconds
    # on 2 loaded cores. The v1 reader reads the same files (see benchmarks/RESULTS.md).
    context.use_datasource_v2 = False
    try:
        ds = ray_local.data.read_parquet([loc.join(s.file) for s in manifest.shards],
                                         filesystem=loc.fs)
        files: list[str] = []
        images = []
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=256):
            files += batch["source_file"].to_pylist()
            images.append(decode_images(batch["image"], manifest.image_shape).copy())
    finally:
        context.use_datasource_v2 = v2
    expected = read_all(local, local_manifest)
    assert row_digests(files, np.concatenate(images)) == row_digests(
        expected["source_file"].to_pylist(),
        decode_images(expected["image"], local_manifest.image_shape))


# --- bad input: small layouts written by the tests --------------------------------------

def write_ckplus_like(root: Path, classes=("anger", "happy"), subjects=3) -> Path:
    """A tiny CK+48-layout folder of random 48x48 PNGs (not faces; CK+48 needs no detection)."""
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for s in range(subjects):
            img = rng.integers(0, 256, (48, 48), dtype=np.uint8)
            assert cv2.imwrite(str(root / c / f"S{s:03d}_001_{s:08d}.png"), img)
    return root


def assert_no_manifest(out) -> None:
    with pytest.raises(ShardError, match="manifest.json not found"):
        read_manifest(resolve(out))


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = main([*argv, "--no-progress"])
    err = capsys.readouterr().err
    return code, err


def test_corrupt_image_names_the_file_and_a_previous_manifest_is_withdrawn(tmp_path, capsys):
    source, out = write_ckplus_like(tmp_path / "src"), tmp_path / "out"
    ingest("ckplus48", source, str(out), folds=2, progress=False)
    read_manifest(resolve(out))
    (source / "happy" / "S009_001_00000001.png").write_bytes(b"\x89PNG garbage, not pixels")
    code, err = run_cli(capsys, "ckplus48", str(source), "--out", str(out), "--workers", "2",
                        "--folds", "2")
    assert code == 1
    assert "happy/S009_001_00000001.png: not a decodable image" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert_no_manifest(out)


def test_fer2013_csv_missing_columns_names_file_and_columns(tmp_path, capsys):
    csv = tmp_path / "fer2013.csv"
    csv.write_text("emotion,Usage\n0,Training\n")
    out = tmp_path / "out"
    ingest("ckplus48", write_ckplus_like(tmp_path / "ck"), str(out), folds=2, progress=False)
    code, err = run_cli(capsys, "fer2013-csv", str(csv), "--out", str(out))
    assert code == 1 and f"{csv}: missing column(s) pixels" in err
    assert_no_manifest(out)


def test_empty_folder_is_named(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, err = run_cli(capsys, "ckplus48", str(tmp_path / "empty"), "--out",
                        str(tmp_path / "out"))
    assert code == 1 and str(tmp_path / "empty") in err and "no class folders" in err
    assert_no_manifest(tmp_path / "out")


def test_unknown_class_folder_is_named(tmp_path, capsys):
    source = write_ckplus_like(tmp_path / "src", classes=("anger", "joy"))
    code, err = run_cli(capsys, "ckplus48", str(source), "--out", str(tmp_path / "out"))
    assert code == 1 and "unknown class folder 'joy'" in err and "anger" in err
    assert_no_manifest(tmp_path / "out")


def test_unreachable_endpoint_is_named_before_reading_the_source(tmp_path, capsys):
    (port,) = free_ports(1)
    endpoint = f"http://127.0.0.1:{port}"
    code, err = run_cli(capsys, "ckplus48", str(tmp_path / "does-not-exist"),
                        "--out", "s3://bucket/ck", "--endpoint", endpoint)
    assert code == 1 and endpoint in err and "'bucket'" in err
    assert "does-not-exist" not in err


def test_wrong_credentials_are_reported_without_the_secret(s3_server, tmp_path, capsys,
                                                            monkeypatch):
    bucket = s3_server.new_bucket()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-value")
    code, err = run_cli(capsys, "ckplus48", str(write_ckplus_like(tmp_path)), "--out",
                        bucket + "/ck")
    assert code == 1 and "AWS_SECRET_ACCESS_KEY" in err and bucket.removeprefix("s3://") in err
    assert "wrong-secret-value" not in err and s3_server.secret_key not in err


def test_failed_reingest_on_s3_leaves_no_manifest(s3_server, tmp_path):
    source = write_ckplus_like(tmp_path / "src")
    out = s3_server.new_bucket() + "/ck"
    ingest("ckplus48", source, out, folds=2, progress=False)
    read_manifest(resolve(out))
    (source / "anger" / "S008_001_00000001.png").write_bytes(b"")
    with pytest.raises(DatasetFormatError, match="S008_001_00000001.png: empty file"):
        ingest("ckplus48", source, out, folds=2, workers=1, progress=False)
    assert_no_manifest(out)


def test_reading_a_prefix_without_manifest_is_refused(s3_server, tmp_path):
    source = write_ckplus_like(tmp_path / "src")
    out = s3_server.new_bucket() + "/ck"
    ingest("ckplus48", source, out, folds=2, progress=False)
    resolve(out).fs.delete_file(resolve(out).join(MANIFEST))
    with pytest.raises(ShardError, match=f"{out}/manifest.json not found.*ray_fer.ingest"):
        read_manifest(resolve(out))


def test_more_folds_than_subjects_is_refused(tmp_path):
    with pytest.raises(ValueError, match="--folds 10 needs at least 10 subjects.*found 3"):
        ingest("ckplus48", write_ckplus_like(tmp_path / "src"), str(tmp_path / "out"),
               progress=False)


@pytest.mark.parametrize(("flags", "says"), [
    (["--folds", "0"], "--folds must be >= 1"),
    (["--size", "4"], "--size must be between 8 and 1024"),
    (["--workers", "0"], "--workers must be >= 1"),
    (["--holdout", "train=120,val=x"], "expected split=count pairs"),
])
def test_bad_flags_fail_before_any_work(tmp_path, capsys, flags, says):
    code, err = run_cli(capsys, "ckplus48", str(tmp_path / "missing"), "--out",
                        str(tmp_path / "out"), *flags)
    assert code == 1 and says in err
    assert not (tmp_path / "out").exists()


def test_cli_module_writes_shards_and_a_summary(tmp_path):
    source = write_ckplus_like(tmp_path / "src", subjects=4)
    done = subprocess.run(
        [sys.executable, "-m", "ray_fer.ingest", "ckplus48", str(source), "--out",
         str(tmp_path / "out"), "--folds", "4", "--size", "32", "--no-progress"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "wrote 8 faces (32x32x1) in 1 shard(s)" in done.stdout
    manifest = read_manifest(resolve(tmp_path / "out"))
    assert manifest.folds["subjects_per_fold"] == [1, 1, 1, 1]


@pytest.fixture
def photos_with_blanks(real_dataset, tmp_path) -> Path:
    """A class folder of three JAFFE photos and two blank images."""
    source = tmp_path / "photos"
    (source / "happy").mkdir(parents=True)
    for photo in sorted(real_dataset("jaffe").glob("*.HA1.*.tiff"))[:3]:
        shutil.copy(photo, source / "happy" / photo.name)
    for i in range(2):
        assert cv2.imwrite(str(source / "happy" / f"blank{i}.png"),
                           np.full((256, 256), 128, np.uint8))
    return source


@pytest.mark.parametrize("detector", ["haar", pytest.param("mtcnn", marks=pytest.mark.skipif(
    not mtcnn_installed(), reason="facenet-pytorch not installed (extra 'detect')"))])
def test_faces_not_found_are_listed_not_dropped_silently(photos_with_blanks, tmp_path,
                                                         detector):
    manifest = ingest("class-folders", photos_with_blanks, str(tmp_path / "out"), folds=1,
                      reader_options={"needs_detection": True}, detector=detector,
                      progress=False)
    failed = ["happy/blank0.png", "happy/blank1.png"]
    assert manifest.face_detection == {"attempted": 5, "found": 3, "failed": failed,
                                       "detector": detector}
    assert manifest.skipped == [{"file": f, "reason": "no face found"} for f in failed]
    assert manifest.num_rows == 3 and manifest.image_shape == [64, 64, 3]


def test_the_detector_auto_chose_is_named_in_the_manifest_and_summary(real_dataset, tmp_path):
    source = tmp_path / "jaffe"
    source.mkdir()
    for photo in sorted(real_dataset("jaffe").glob("*.tiff"))[::40]:
        shutil.copy(photo, source / photo.name)
    done = subprocess.run(
        [sys.executable, "-m", "ray_fer.ingest", "jaffe", str(source), "--out",
         str(tmp_path / "out"), "--folds", "1", "--workers", "1", "--no-progress"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    chosen = resolve_detector("auto")
    assert f"faces found by {chosen} 6/6" in done.stdout
    assert read_manifest(resolve(tmp_path / "out")).face_detection["detector"] == chosen


def test_mtcnn_without_its_package_fails_before_any_work(photos_with_blanks, tmp_path, capsys,
                                                         monkeypatch):
    monkeypatch.setitem(sys.modules, "facenet_pytorch", None)
    code, err = run_cli(capsys, "class-folders", str(photos_with_blanks), "--out",
                        str(tmp_path / "out"), "--detector", "mtcnn")
    assert code == 1 and "pip install 'ray_fer[detect]'" in err
    assert not (tmp_path / "out").exists()


def test_class_map_file_renames_class_folders(tmp_path, capsys):
    source = write_ckplus_like(tmp_path / "src", classes=("기쁨", "분노"))
    class_map = tmp_path / "map.yaml"
    class_map.write_text("기쁨: happy\n분노: anger\n", encoding="utf-8")
    out = tmp_path / "out"
    code, err = run_cli(capsys, "class-folders", str(source), "--out", str(out),
                        "--class-map", str(class_map), "--folds", "3")
    assert code == 0, err
    manifest = read_manifest(resolve(out))
    assert manifest.class_names == ["happy", "anger"]
    assert manifest.counts == {"train": {"anger": 3, "happy": 3}}
    assert manifest.image_shape == [64, 64, 3]  # whole photos default to 64 px RGB


@pytest.mark.parametrize(("text", "says"), [("[not, a, mapping]", "expected a mapping"),
                                            ("happy: [1, 2]", "expected a mapping")])
def test_malformed_class_map_is_named(tmp_path, capsys, text, says):
    class_map = tmp_path / "map.yaml"
    class_map.write_text(text)
    code, err = run_cli(capsys, "class-folders", str(tmp_path), "--out", str(tmp_path / "out"),
                        "--class-map", str(class_map))
    assert code == 1 and f"--class-map {class_map}: {says}" in err


def test_class_map_for_a_format_without_one_is_refused(tmp_path, capsys):
    class_map = tmp_path / "map.yaml"
    class_map.write_text("a: b\n")
    code, err = run_cli(capsys, "ckplus48", str(tmp_path), "--out", str(tmp_path / "out"),
                        "--class-map", str(class_map))
    assert code == 1 and "format 'ckplus48'" in err and "class_map" in err


def test_rated_datasets_get_derived_valence_arousal_marked_as_derived(real_dataset, tmp_path):
    out = tmp_path / "jaffe"
    manifest = ingest("jaffe", real_dataset("jaffe"), str(out), folds=10, workers=1,
                      progress=False)
    assert manifest.targets["valence_arousal"] == "derived"
    assert "Warriner" in manifest.targets["source"]
    table = pq.read_table(out / manifest.shards[0].file, columns=["valence", "arousal",
                                                                   "label_name"])
    valence = table["valence"].to_numpy()
    names = np.array(table["label_name"].to_pylist())
    assert np.isfinite(valence).all() and np.isfinite(table["arousal"].to_numpy()).all()
    assert valence[names == "happy"].mean() > 0 > valence[names == "sad"].mean()


def test_jaffe_paper_holdout_gives_120_23_70_with_every_class_in_each_split(real_dataset,
                                                                            tmp_path):
    out = tmp_path / "jaffe"
    manifest = ingest("jaffe", real_dataset("jaffe"), str(out), folds=10, workers=1,
                      progress=False, holdout={"train": 120, "val": 23, "test": 70})
    assert {s: sum(c.values()) for s, c in manifest.counts.items()} == {
        "test": 70, "train": 120, "val": 23}
    assert all(len(manifest.counts[s]) == 7 for s in ("train", "test"))
    assert "stratified by class, seed 0" in manifest.split_source["val"]
    assert sum(manifest.folds["rows_per_fold"]) == 120  # folds only over the train split
    with pytest.raises(ValueError, match="adds up to 200, but the source has 213"):
        ingest("jaffe", real_dataset("jaffe"), str(tmp_path / "bad"), workers=1,
               progress=False, holdout={"train": 120, "val": 10, "test": 70})


def test_holdout_of_a_dataset_with_official_splits_is_refused(tmp_path):
    source = tmp_path / "fer2013.csv"
    source.write_text("emotion,pixels,Usage\n0," + " ".join(["0"] * 2304) + ",Training\n")
    with pytest.raises(ValueError, match="has official splits"):
        ingest("fer2013-csv", source, str(tmp_path / "out"), folds=1, progress=False,
               holdout={"train": 1})


def test_rows_are_written_in_a_seeded_mixed_order_not_class_by_class(ckplus_local):
    _, loc, manifest = ckplus_local
    names = read_all(loc, manifest)["label_name"].to_pylist()
    runs = sum(a != b for a, b in zip(names, names[1:], strict=False))
    # Class-by-class order would change label about 6 times; a shuffle, hundreds.
    assert runs > len(names) // 3


def fer2013_csv(path: Path, usages: list[str]) -> Path:
    """A FER2013 CSV with one row per usage, labels cycling over the 7 classes."""
    rng = np.random.default_rng(0)
    lines = ["emotion,pixels,Usage"] + [
        f"{i % 7}," + " ".join(map(str, rng.integers(0, 256, 2304))) + f",{usage}"
        for i, usage in enumerate(usages)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_val_carved_from_train_turns_publictest_into_the_reported_test(tmp_path):
    source = fer2013_csv(tmp_path / "fer2013.csv", ["Training"] * 140 + ["PublicTest"] * 21)
    manifest = ingest("fer2013-csv", source, str(tmp_path / "out"), folds=2, workers=1,
                      progress=False, val_from_train=0.1)
    counts = {s: sum(c.values()) for s, c in manifest.counts.items()}
    assert counts == {"train": 126, "val": 14, "test": 21}
    assert all(n == 2 for n in manifest.counts["val"].values())  # 20 per class, 10 %
    assert manifest.split_source["test"] == "PublicTest"
    assert "14 of 140 train images (0.1), stratified by class" in manifest.split_source["val"]
    assert sum(manifest.folds["rows_per_fold"]) == 126  # folds only over what trains
    table = read_all(resolve(tmp_path / "out"), manifest)
    lines = {int(f.rpartition(":")[2]) for f, s in zip(
        table["source_file"].to_pylist(), table["split"].to_pylist(), strict=True)
        if s == "test"}
    assert lines == set(range(142, 163))  # the PublicTest rows and only them


def test_carving_beside_an_official_test_keeps_both_held_out_splits(tmp_path):
    source = fer2013_csv(tmp_path / "fer2013.csv",
                         ["Training"] * 70 + ["PublicTest"] * 7 + ["PrivateTest"] * 7)
    manifest = ingest("fer2013-csv", source, str(tmp_path / "out"), folds=1, workers=1,
                      progress=False, val_from_train=0.2)
    assert {s: sum(c.values()) for s, c in manifest.counts.items()} == {
        "train": 56, "val": 14, "publictest": 7, "test": 7}
    assert manifest.split_source["publictest"] == "PublicTest"
    assert manifest.split_source["test"] == "PrivateTest"


def test_carved_val_of_a_subject_dataset_shares_no_subject_with_train(ckplus_local, tmp_path):
    root, _, _ = ckplus_local
    out = resolve(tmp_path / "carved")
    manifest = ingest("ckplus48", root, out.uri, folds=5, workers=1, progress=False,
                      val_from_train=0.15, seed=3)
    table = read_all(out, manifest)
    by_split: dict[str, set[str]] = {}
    for subject, split in zip(table["subject_id"].to_pylist(), table["split"].to_pylist(),
                              strict=True):
        by_split.setdefault(split, set()).add(subject)
    assert set(by_split) == {"train", "val"}
    assert not by_split["train"] & by_split["val"]
    assert 0.1 <= sum(manifest.counts["val"].values()) / manifest.num_rows <= 0.2
    assert "subject-disjoint, seed 3" in manifest.split_source["val"]


@pytest.mark.parametrize("fraction, holdout, says", [
    (1.5, None, "must be a fraction in"),
    (0.1, {"train": 1, "val": 1}, "already gives a val split"),
])
def test_bad_validation_carving_is_refused_before_any_work(tmp_path, fraction, holdout, says):
    with pytest.raises(ValueError, match=says):
        ingest("fer2013-csv", tmp_path / "missing.csv", str(tmp_path / "out"),
               progress=False, val_from_train=fraction, holdout=holdout)


def test_a_class_map_listing_a_folder_twice_is_refused(tmp_path, capsys):
    """PyYAML keeps the last of two equal keys: 'happy' would silently become 'anger'."""
    source = write_ckplus_like(tmp_path / "src", classes=("happy", "sad"))
    class_map = tmp_path / "map.yaml"
    class_map.write_text("happy: happy\nsad: sad\nhappy: anger\n")
    code, err = run_cli(capsys, "class-folders", str(source), "--out", str(tmp_path / "out"),
                        "--class-map", str(class_map))
    assert code == 1
    assert f"--class-map {class_map}: 'happy' is listed twice (lines 1 and 3)" in err
    assert_no_manifest(tmp_path / "out")


def test_the_unknown_class_folder_hint_names_the_flag_that_skips_it(tmp_path, capsys):
    source = write_ckplus_like(tmp_path / "src", classes=("happy", "sad", "joy"))
    class_map = tmp_path / "map.yaml"
    class_map.write_text("happy: happy\nsad: sad\n")
    argv = ["class-folders", str(source), "--out", str(tmp_path / "out"), "--class-map",
            str(class_map), "--folds", "3"]
    code, err = run_cli(capsys, *argv)
    assert code == 1 and "unknown class folder 'joy'" in err
    assert "--ignore-unknown-classes" in err
    assert run_cli(capsys, *argv, "--ignore-unknown-classes")[0] == 0
    assert read_manifest(resolve(tmp_path / "out")).counts == {"train": {"happy": 3, "sad": 3}}


def test_symlink_loops_and_links_to_folders_are_counted_as_skipped_with_the_reason(
        tmp_path, capsys):
    """Looped files were dropped silently and the manifest said skipped 0."""
    source = write_ckplus_like(tmp_path / "src", classes=("happy", "sad"))
    (source / "happy" / "a.png").symlink_to("b.png")
    (source / "happy" / "b.png").symlink_to("a.png")
    (source / "happy" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (source / "sad" / "again").symlink_to(source / "sad", target_is_directory=True)
    out = tmp_path / "out"
    assert main(["class-folders", str(source), "--out", str(out), "--folds", "3",
                 "--no-progress"]) == 0
    assert "skipped 4" in capsys.readouterr().out
    manifest = read_manifest(resolve(out))
    assert manifest.skipped == [
        {"file": "happy/a.png", "reason": "symlink loop"},
        {"file": "happy/b.png", "reason": "symlink loop"},
        {"file": "happy/gone.png", "reason": "broken symlink (its target does not exist)"},
        {"file": "sad/again", "reason": "symlink to a folder, not followed"}]
    assert manifest.num_rows == 6


def test_images_above_the_pixel_cap_fail_the_ingest_naming_the_file_and_flag(
        tmp_path, capsys, monkeypatch):
    from ray_fer.data.formats.base import MAX_IMAGE_PIXELS, MAX_PIXELS_ENV

    monkeypatch.setenv(MAX_PIXELS_ENV, str(MAX_IMAGE_PIXELS))  # restored: --max-pixels sets it
    source = write_ckplus_like(tmp_path / "src")
    bomb = source / "happy" / "S009_001_00000001.png"
    bomb.write_bytes(huge_png_header())
    code, err = run_cli(capsys, "ckplus48", str(source), "--out", str(tmp_path / "out"),
                        "--folds", "2", "--workers", "1")
    assert code == 1 and f"{bomb}: more than" in err and "--max-pixels" in err
    bomb.unlink()
    code, err = run_cli(capsys, "ckplus48", str(source), "--out", str(tmp_path / "out"),
                        "--folds", "2", "--max-pixels", str(48 * 48 - 1))
    assert code == 1 and "48 x 48 pixels, above the limit of 2,303" in err
    assert run_cli(capsys, "ckplus48", str(source), "--out", str(tmp_path / "out"),
                   "--folds", "2", "--max-pixels", str(48 * 48))[0] == 0


def _marked(marker: str) -> list[int]:
    """Pids of the live processes whose environment holds ``INGEST_TEST_MARK=marker``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone, or not ours to read
            continue
        if f"INGEST_TEST_MARK={marker}".encode() in environ.split(b"\0"):
            pids.append(int(entry.name))
    return pids


@pytest.mark.slow
def test_sigterm_stops_the_workers_the_forkserver_and_the_resource_tracker(tmp_path):
    """SIGTERM killed only the driver: the pool's workers, forkserver and resource tracker
    lived on, orphaned. It now ends an ingest as Ctrl-C does."""
    marker = secrets.token_hex(8)
    env = dict(os.environ, INGEST_TEST_MARK=marker,
               PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "ray_fer.ingest", "synthetic", "default", "--out",
         str(tmp_path / "out"), "--workers", "2", "--folds", "2", "--no-progress"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        # The driver, the resource tracker, the forkserver and two workers.
        while len(_marked(marker)) < 5:
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, _marked(marker)
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 128 + signal.SIGTERM, err
        assert "ingest interrupted (no manifest written)" in err
        deadline = time.monotonic() + 10
        while _marked(marker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _marked(marker) == []
        assert_no_manifest(tmp_path / "out")
    finally:
        for pid in _marked(marker):  # only what this test started, by pid
            os.kill(pid, signal.SIGKILL)
        proc.kill()
        proc.wait()
