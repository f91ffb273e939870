"""A shard damaged after ingest (truncated, one bit flipped), on local disk and on S3: the
manifest's sha256 catches it and the error names the damaged shard."""

from __future__ import annotations

import pyarrow.fs as pafs
import pytest
from support.tiny_shards import write_tiny_shards

from ray_fer.data.shards import ShardError, read_manifest, verify_shards
from ray_fer.storage import resolve

DAMAGED = "shard-00002.parquet"


def _truncate(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _flip_bit(data: bytes) -> bytes:
    # A pixel byte in the middle of the file: Parquet itself would read it back silently.
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1:]


DAMAGE = {"truncated": _truncate, "bit-flipped": _flip_bit}


def _damage(uri: str, how: str) -> None:
    loc = resolve(uri)
    path = loc.join(DAMAGED)
    with loc.fs.open_input_stream(path) as f:
        data = f.read()
    with loc.fs.open_output_stream(path) as f:
        f.write(DAMAGE[how](data))


def _local(tmp_path, _s3) -> str:
    return write_tiny_shards(tmp_path / "shards")


def _on_s3(tmp_path, s3) -> str:
    uri = s3.new_bucket("corrupt") + "/tiny"
    local = write_tiny_shards(tmp_path / "shards")
    src, dst = resolve(local), resolve(uri)
    for info in src.fs.get_file_info(pafs.FileSelector(src.path)):
        with src.fs.open_input_stream(info.path) as f, \
                dst.fs.open_output_stream(dst.join(info.base_name)) as out:
            out.write(f.read())
    return uri


@pytest.mark.parametrize("how", sorted(DAMAGE))
@pytest.mark.parametrize("where", [_local, _on_s3], ids=["local", "s3"])
def test_damaged_shard_is_detected_by_its_manifest_hash_and_named(where, how, tmp_path,
                                                                   s3_server):
    uri = where(tmp_path, s3_server)
    loc = resolve(uri)
    manifest = read_manifest(loc)
    verify_shards(loc, manifest)  # intact before the damage
    _damage(uri, how)
    with pytest.raises(ShardError, match="corrupt") as failure:
        verify_shards(loc, manifest)
    assert loc.child_uri(DAMAGED) in str(failure.value)
    assert "Re-run ingest" in str(failure.value)


def test_missing_shard_is_named(tmp_path):
    loc = resolve(write_tiny_shards(tmp_path / "shards"))
    loc.fs.delete_file(loc.join(DAMAGED))
    with pytest.raises(ShardError, match="unreadable") as failure:
        verify_shards(loc, read_manifest(loc))
    assert loc.child_uri(DAMAGED) in str(failure.value)


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.parametrize("where", [_local, _on_s3], ids=["local", "s3"])
def test_streaming_a_bit_flipped_shard_fails_naming_it(where, tmp_path, s3_server, local_ray):
    """Training reads check each shard against the manifest as they read it."""
    from ray_fer.data.shard_source import open_split

    uri = where(tmp_path, s3_server)
    _damage(uri, "bit-flipped")
    ds, _ = open_split(uri, splits=["train"])
    with pytest.raises(Exception, match="corrupt") as failure:  # noqa: B017 - Ray wraps it
        ds.take_all()
    assert resolve(uri).child_uri(DAMAGED) in str(failure.value)
