"""Credentials never leak: an ingest, a training run, a search and a two-worker (DDP)
training run against an S3 server whose secret key is known only through the standard AWS
variables; then every output is searched for the key: the printed output, every file of
Ray's session folder (the logs included, e.g. the runtime-env agent's, which logs every
runtime environment it creates), and every object of the bucket (manifest, shards, run
and experiment folders: configs, checkpoints, TensorBoard events, Tune's state)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
from support.s3 import SeaweedFS, exported, start_seaweedfs

from ray_fer import ingest, tune
from ray_fer.train import __main__ as train_cli

pytestmark = pytest.mark.slow


@pytest.fixture
def keyed_s3(tmp_path) -> Iterator[SeaweedFS]:
    """An S3 server of its own (its secret key is random) and the AWS variables set to it."""
    with exported(start_seaweedfs(tmp_path / "seaweedfs")) as server:
        yield server


@pytest.fixture
def ray_dir(monkeypatch) -> Iterator[Path]:
    """The temp dir of the local Ray that the command starts itself (a short path: Ray's
    socket paths must stay under the Unix limit); removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="rf-sec-"))
    monkeypatch.setenv("RAY_TMPDIR", str(path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    try:
        yield path
    finally:
        ray.shutdown()
        shutil.rmtree(path, ignore_errors=True)


def _files_holding(root: Path, needle: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*")
            if p.is_file() and not p.is_symlink() and needle in p.read_bytes()]


def _objects_holding(server, bucket: str, needle: bytes) -> tuple[list[str], list[str]]:
    """(keys of the objects holding ``needle``, every key) of ``bucket``."""
    client = server.client()
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])]
    found = [k for k in keys
             if needle in client.get_object(Bucket=bucket, Key=k)["Body"].read()]
    return found, keys


def _faces_on_s3(bucket: str) -> str:
    data = f"{bucket}/shards"
    ingest.ingest("synthetic", "default", data, size=32, channels=1, folds=2, workers=1,
                  progress=False, reader_options={"subjects": 8, "images_per_subject": 40,
                                                  "size": 32})
    return data


def _assert_secret_nowhere(server: SeaweedFS, bucket: str, ray_dir: Path, printed) -> list[str]:
    """Search everything for the secret key (Ray stopped first: its logs are complete);
    returns the bucket's keys, to show what the search covered."""
    ray.shutdown()
    secret = server.secret_key.encode()
    assert server.secret_key not in printed.out + printed.err
    leaked, keys = _objects_holding(server, bucket.removeprefix("s3://"), secret)
    assert not leaked, f"the secret key is in {leaked}"
    sessions = list(ray_dir.rglob("session_*"))
    assert sessions and any((s / "logs").is_dir() for s in sessions), "no Ray session searched"
    assert not _files_holding(ray_dir, secret), "the secret key is in Ray's session folder"
    return keys


def _kinds(keys: list[str]) -> set[str]:
    return {k.rsplit("/", 1)[-1].split(".")[0] for k in keys}


def test_secret_key_appears_in_no_output_of_ingest_and_training(keyed_s3, ray_dir, capsys):
    bucket = keyed_s3.new_bucket("secrets")
    data = _faces_on_s3(bucket)
    try:
        ray.init(num_cpus=2, include_dashboard=False)
        assert train_cli.main(["deep_emotion", "--data", data, "--storage", f"{bucket}/runs",
                               "--name", "leak-check", "--epochs", "1",
                               "--batch-size", "64", "--set", "data.shuffle_buffer=0"]) == 0
    finally:
        keys = _assert_secret_nowhere(keyed_s3, bucket, ray_dir, capsys.readouterr())
    # The search covered what a run leaves: manifest, shards, config, checkpoint state and
    # metadata, TensorBoard events, history and curves.
    assert len(keys) > 8
    for kind in ("manifest", "shard-00000", "config", "state", "meta", "history", "curves"):
        assert kind in _kinds(keys), (kind, sorted(_kinds(keys)))
    assert any(k.startswith("events") for k in _kinds(keys)), sorted(_kinds(keys))


def test_secret_key_appears_in_no_output_of_a_search(keyed_s3, ray_dir, capsys):
    """Tune copied AWS_SECRET_ACCESS_KEY into every trial's runtime environment, which
    Ray's runtime-env agent logged about 30 times per search."""
    bucket = keyed_s3.new_bucket("search")
    data = _faces_on_s3(bucket)
    try:
        assert tune.main(["deep_emotion", "--data", data, "--storage", f"{bucket}/searches",
                          "--name", "leak-check", "--num-samples", "2", "--max-concurrent",
                          "2", "--epochs", "1", "--grace-period", "1",
                          "--set", "train.batch_size=64",
                          "--set", "data.shuffle_buffer=0"]) == 0
    finally:
        keys = _assert_secret_nowhere(keyed_s3, bucket, ray_dir, capsys.readouterr())
    experiment = [k.removeprefix("searches/leak-check/") for k in keys
                  if k.startswith("searches/leak-check/")]
    assert {"results.csv", "best_config.yaml", "base_configs.yaml"} <= set(experiment)
    assert any(k.startswith("experiment_state") for k in experiment), experiment
    assert any(k.startswith("best_checkpoint/") for k in experiment), experiment


def test_secret_key_appears_in_no_output_of_a_two_worker_run(keyed_s3, ray_dir, capsys):
    bucket = keyed_s3.new_bucket("ddp")
    data = _faces_on_s3(bucket)
    try:
        assert train_cli.main(["deep_emotion", "--data", data, "--storage", f"{bucket}/runs",
                               "--name", "ddp", "--workers", "2", "--epochs", "1",
                               "--batch-size", "32", "--set", "data.shuffle_buffer=0"]) == 0
    finally:
        keys = _assert_secret_nowhere(keyed_s3, bucket, ray_dir, capsys.readouterr())
    assert {"runs/ddp/config.yaml", "runs/ddp/history.json"} <= set(keys)
    assert any(k.startswith("runs/ddp/checkpoint_epoch-0000/") for k in keys), keys
