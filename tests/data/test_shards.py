"""The shard contract: write → manifest → verify → decode, and refusal of anything incomplete."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support.s3 import free_ports

from ray_fer.data.shards import (
    MANIFEST,
    FaceRow,
    Manifest,
    ShardError,
    ShardWriter,
    decode_images,
    read_manifest,
    verify_shards,
)
from ray_fer.storage import StorageError, resolve

SHAPE = (6, 5, 3)
CLASSES = ["happy", "sad", "angry"]


def make_rows(n: int, seed: int = 0) -> list[FaceRow]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = i % len(CLASSES)
        rows.append(FaceRow(
            image=rng.integers(0, 256, SHAPE, dtype=np.uint8), label=label,
            label_name=CLASSES[label], soft_label=None if i % 2 else [0.5, 0.25, 0.25],
            valence=float("nan") if i % 3 else 0.5, arousal=-0.25, subject_id=f"S{i % 4}",
            split="train" if i < n - 3 else "val", fold=i % 4 if i < n - 3 else -1,
            dataset="toy", source_file=f"img/{i:03d}.png",
        ))
    return rows


def write(loc, rows, rows_per_shard=7) -> Manifest:
    writer = ShardWriter(loc, SHAPE, CLASSES, rows_per_shard=rows_per_shard)
    for row in rows:
        writer.add(row)
    return writer.finish(dataset="toy", format="toy-format", folds={"k": 4})


def read_table(loc, manifest: Manifest) -> pa.Table:
    return pa.concat_tables(
        pq.read_table(loc.join(s.file), filesystem=loc.fs) for s in manifest.shards)


def check_round_trip(loc) -> None:
    rows = make_rows(20)
    written = write(loc, rows)
    manifest = read_manifest(loc)
    assert manifest == written
    verify_shards(loc, manifest)
    assert [s.rows for s in manifest.shards] == [7, 7, 6]
    assert manifest.image_shape == list(SHAPE) and manifest.num_rows == 20
    assert manifest.counts == {"train": {"angry": 5, "happy": 6, "sad": 6},
                               "val": {"angry": 1, "happy": 1, "sad": 1}}
    table = read_table(loc, manifest)
    assert json.loads(table.schema.metadata[b"ray_fer.image_shape"]) == list(SHAPE)
    np.testing.assert_array_equal(decode_images(table["image"], SHAPE),
                                  np.stack([r.image for r in rows]))
    assert table["source_file"].to_pylist() == [r.source_file for r in rows]
    soft = table["soft_label"].to_pylist()
    assert soft[0] == [0.5, 0.25, 0.25]
    assert np.isnan(soft[1]).all()  # no soft label: stored as NaNs
    assert table["fold"].to_pylist()[-3:] == [-1, -1, -1]
    assert np.isnan(table["valence"].to_numpy()[1])


def test_round_trip_local(tmp_path):
    check_round_trip(resolve(tmp_path / "shards"))


def test_round_trip_s3(s3_server):
    check_round_trip(resolve(s3_server.new_bucket() + "/toy/shards"))


def test_decode_images_is_zero_copy_also_for_slices():
    images = np.random.default_rng(1).integers(0, 256, (10, *SHAPE), dtype=np.uint8)
    column = pa.Array.from_buffers(pa.binary(int(np.prod(SHAPE))), 10,
                                   [None, pa.py_buffer(images)])
    whole = decode_images(column, SHAPE)
    assert whole.shape == (10, *SHAPE) and whole.dtype == np.uint8
    assert np.shares_memory(whole, images)
    part = decode_images(column.slice(3, 4), SHAPE)
    np.testing.assert_array_equal(part, images[3:7])
    assert np.shares_memory(part, images)
    chunked = pa.chunked_array([column.slice(0, 2), column.slice(2, 3)])
    np.testing.assert_array_equal(decode_images(chunked, SHAPE), images[:5])
    assert decode_images(column.slice(10), SHAPE).shape == (0, *SHAPE)


@pytest.mark.parametrize("damage", ["bit flip", "truncation"])
def test_corrupt_shard_is_detected_naming_it(tmp_path, damage):
    loc = resolve(tmp_path)
    manifest = write(loc, make_rows(20))
    victim = tmp_path / manifest.shards[1].file
    data = bytearray(victim.read_bytes())
    if damage == "bit flip":
        data[len(data) // 2] ^= 0x01
    else:
        del data[-100:]
    victim.write_bytes(bytes(data))
    verify_shards(loc, Manifest(**{**manifest.__dict__, "shards": manifest.shards[:1]}))
    with pytest.raises(ShardError, match=f"{manifest.shards[1].file}: corrupt"):
        verify_shards(loc, manifest)


def test_missing_shard_is_named(tmp_path):
    loc = resolve(tmp_path)
    manifest = write(loc, make_rows(20))
    (tmp_path / manifest.shards[2].file).unlink()
    with pytest.raises(ShardError, match=f"{manifest.shards[2].file}: listed in the manifest"):
        verify_shards(loc, manifest)


def test_prefix_without_manifest_is_refused_local_and_s3(tmp_path, s3_server):
    for loc in (resolve(tmp_path), resolve(s3_server.new_bucket() + "/nothing")):
        with pytest.raises(ShardError, match=r"manifest.json not found.*python -m ray_fer.ingest"):
            read_manifest(loc)


@pytest.mark.parametrize(("text", "says"), [
    ("{not json", "not valid JSON"),
    (json.dumps({"schema_version": 99}), "unsupported manifest"),
    (json.dumps({"schema_version": 1, "shards": []}), "missing or has bad fields"),
])
def test_malformed_manifest_is_refused(tmp_path, text, says):
    (tmp_path / MANIFEST).write_text(text)
    with pytest.raises(ShardError, match=says):
        read_manifest(resolve(tmp_path))


def test_opening_a_writer_withdraws_the_old_manifest_until_finish(tmp_path):
    loc = resolve(tmp_path)
    write(loc, make_rows(20))
    writer = ShardWriter(loc, SHAPE, CLASSES, rows_per_shard=7)
    for row in make_rows(9, seed=5):
        writer.add(row)  # one shard flushed, then the run "fails": no finish()
    with pytest.raises(ShardError, match="not found"):
        read_manifest(loc)


def test_rewrite_is_idempotent_and_drops_stale_shards(tmp_path):
    a, b = resolve(tmp_path / "a"), resolve(tmp_path / "b")
    first, second = write(a, make_rows(20)), write(b, make_rows(20))
    assert first.to_json() == second.to_json()
    assert [s.sha256 for s in first.shards] == [s.sha256 for s in second.shards]
    assert (tmp_path / "a" / MANIFEST).read_bytes() == (tmp_path / "b" / MANIFEST).read_bytes()
    smaller = write(a, make_rows(5))
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [MANIFEST, "shard-00000.parquet"]
    verify_shards(a, smaller)


def test_writer_rejects_wrong_shapes_and_soft_label_widths(tmp_path):
    writer = ShardWriter(resolve(tmp_path), SHAPE, CLASSES)
    row = make_rows(1)[0]
    with pytest.raises(ValueError, match="img/000.png: image"):
        writer.add(FaceRow(**{**row.__dict__, "image": np.zeros((5, 5, 3), np.uint8)}))
    writer.add(FaceRow(**{**row.__dict__, "soft_label": [1.0, 0.0]}))
    with pytest.raises(ValueError, match="soft label has 2 values, expected 3"):
        writer.finish(dataset="toy", format="toy")


def test_finish_without_rows_is_an_error(tmp_path):
    with pytest.raises(ShardError, match="no faces to write"):
        ShardWriter(resolve(tmp_path), SHAPE, CLASSES).finish(dataset="toy", format="toy")


def test_write_failure_mid_run_names_the_shard(tmp_path):
    out = tmp_path / "out"
    writer = ShardWriter(resolve(out), SHAPE, CLASSES, rows_per_shard=2)
    rows = make_rows(4)
    writer.add(rows[0])
    writer.add(rows[1])  # first shard written
    shutil.rmtree(out)
    out.write_text("the prefix is gone: a file now stands where the folder was")
    writer.add(rows[2])
    with pytest.raises(StorageError, match=r"out/shard-00001.parquet: cannot write"):
        writer.add(rows[3])


def test_unreachable_s3_prefix_names_the_endpoint():
    (port,) = free_ports(1)
    loc = resolve("s3://bucket/prefix", endpoint=f"http://127.0.0.1:{port}")
    with pytest.raises(StorageError, match=f"manifest.json at endpoint http://127.0.0.1:{port}"):
        ShardWriter(loc, SHAPE, CLASSES)
