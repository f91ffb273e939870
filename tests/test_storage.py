"""URIs resolve to the right filesystem; unusable S3 locations fail fast with advice."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest
from support.s3 import free_ports

from ray_fer.storage import StorageError, check_reachable, resolve


def test_local_path_resolves_to_absolute_local_location(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    loc = resolve("shards/fer")
    assert isinstance(loc.fs, pafs.LocalFileSystem)
    assert not loc.is_s3
    assert loc.path == str(tmp_path / "shards" / "fer")
    assert resolve(f"file://{tmp_path}/x").path == str(tmp_path / "x")
    assert loc.join("a.parquet") == str(tmp_path / "shards" / "fer" / "a.parquet")
    check_reachable(loc)  # local paths need no check


def test_s3_uri_resolves_bucket_and_prefix_with_explicit_endpoint():
    loc = resolve("s3://bucket/some/prefix/", endpoint="http://127.0.0.1:9")
    assert isinstance(loc.fs, pafs.S3FileSystem)
    assert loc.is_s3
    assert (loc.uri, loc.path) == ("s3://bucket/some/prefix", "bucket/some/prefix")
    assert loc.endpoint == "http://127.0.0.1:9"
    assert loc.child_uri("manifest.json") == "s3://bucket/some/prefix/manifest.json"


@pytest.mark.parametrize(("uri", "says"), [("s3://", "names no bucket"),
                                           ("gs://bucket/x", "unsupported URI scheme")])
def test_unusable_uris_are_refused(uri, says):
    with pytest.raises(StorageError, match=says):
        resolve(uri)


def test_existing_bucket_is_reachable_and_writable(s3_server):
    loc = resolve(s3_server.new_bucket() + "/prefix")
    assert loc.endpoint == s3_server.endpoint  # taken from AWS_ENDPOINT_URL_S3
    check_reachable(loc)
    with loc.fs.open_output_stream(loc.join("hello.txt")) as f:
        f.write(b"hello")
    assert loc.fs.get_file_info(loc.join("hello.txt")).size == 5


def test_missing_bucket_is_named(s3_server):
    with pytest.raises(StorageError, match="'no-such-bucket-here'.*create it first"):
        check_reachable(resolve("s3://no-such-bucket-here/prefix"))


def test_unreachable_endpoint_fails_within_seconds_naming_it(s3_server):
    (port,) = free_ports(1)  # nothing listens there once the probe socket is closed
    endpoint = f"http://127.0.0.1:{port}"
    start = time.monotonic()
    with pytest.raises(StorageError) as err:
        check_reachable(resolve("s3://bucket/prefix", endpoint=endpoint))
    assert time.monotonic() - start < 15
    message = str(err.value)
    assert endpoint in message and "'bucket'" in message and "--endpoint" in message


def test_wrong_credentials_fail_fast_without_printing_the_secret(s3_server, monkeypatch):
    bucket = s3_server.new_bucket()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    start = time.monotonic()
    with pytest.raises(StorageError) as err:
        check_reachable(resolve(bucket + "/prefix"))
    assert time.monotonic() - start < 15
    message = str(err.value)
    assert bucket.removeprefix("s3://") in message and s3_server.endpoint in message
    assert "AWS_SECRET_ACCESS_KEY" in message and "not-the-secret" not in message
    assert s3_server.secret_key not in message


def test_weed_log_and_data_live_in_the_server_directory(s3_server):
    assert Path(s3_server.directory).is_dir() and s3_server.log.is_file()
    assert s3_server.process.poll() is None
