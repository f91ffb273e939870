"""Credentials never leak: ingest and a short training run against an S3 server whose
secret key is known only through the standard AWS variables; then every output (printed
output, Ray's logs, the run's config, checkpoints, TensorBoard events, history, manifest,
shards) is searched for the key."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
import ray
from support.s3 import exported, start_seaweedfs

from ray_fer import ingest
from ray_fer.train import __main__ as train_cli

pytestmark = pytest.mark.slow


@pytest.fixture
def keyed_s3(tmp_path):
    """An S3 server of its own (its secret key is random) and the AWS variables set to it."""
    with exported(start_seaweedfs(tmp_path / "seaweedfs")) as server:
        yield server


def _files_holding(root: Path, needle: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*")
            if p.is_file() and not p.is_symlink() and needle in p.read_bytes()]


def _objects_holding(server, bucket: str, needle: bytes) -> tuple[list[str], int]:
    client = server.client()
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])]
    found = [k for k in keys
             if needle in client.get_object(Bucket=bucket, Key=k)["Body"].read()]
    return found, len(keys)


def test_secret_key_appears_in_no_output(keyed_s3, capsys):
    secret = keyed_s3.secret_key.encode()
    bucket = keyed_s3.new_bucket("secrets")
    data, runs = f"{bucket}/shards", f"{bucket}/runs"
    # A short path: Ray's socket paths must stay under the Unix limit.
    ray_dir = Path(tempfile.mkdtemp(prefix="rf-sec-"))
    try:
        ingest.ingest("synthetic", "default", data, size=32, channels=1, folds=2, workers=1,
                      progress=False, reader_options={"subjects": 8, "images_per_subject": 40,
                                                      "size": 32})
        ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(ray_dir))
        assert train_cli.main(["deep_emotion", "--data", data, "--storage", runs,
                               "--name", "leak-check", "--epochs", "1",
                               "--batch-size", "64", "--set", "data.shuffle_buffer=0"]) == 0
    finally:
        ray.shutdown()
        printed = capsys.readouterr()
        try:
            assert secret.decode() not in printed.out + printed.err
            leaked, searched = _objects_holding(keyed_s3, bucket.removeprefix("s3://"), secret)
            kinds = {k.rsplit("/", 1)[-1].split(".")[0] for k in
                     _objects_holding(keyed_s3, bucket.removeprefix("s3://"), b"")[0]}
            assert not leaked, f"the secret key is in {leaked}"
            assert not _files_holding(ray_dir, secret), "the secret key is in Ray's logs"
        finally:
            shutil.rmtree(ray_dir, ignore_errors=True)
    # The search covered what a run leaves: manifest, shards, config, checkpoint state and
    # metadata, TensorBoard events, history and curves.
    assert searched > 8
    for kind in ("manifest", "shard-00000", "config", "state", "meta", "history", "curves"):
        assert kind in kinds, (kind, sorted(kinds))
    assert any(k.startswith("events") for k in kinds), sorted(kinds)
