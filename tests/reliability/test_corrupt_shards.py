"""A shard damaged after ingest (truncated, one bit flipped), on local disk and on S3: the
manifest's sha256 catches it and the error names the damaged shard; train and evaluate
say so in one error line (before Ray starts where sizes already show it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.fs as pafs
import pytest
from support.tiny_shards import write_tiny_shards
from support.trained import train_checkpoint

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


def _damage(uri: str, how: str, shard: str = DAMAGED) -> None:
    loc = resolve(uri)
    path = loc.join(shard)
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


REPO = Path(__file__).resolve().parents[2]


def _cli(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


@pytest.mark.parametrize("how", ["missing", "truncated"])
def test_train_tune_and_evaluate_refuse_a_missing_or_cut_shard_before_ray_starts(
        how, tmp_path, capsys, monkeypatch):
    from ray_fer import evaluate, tune
    from ray_fer.train import __main__ as train_cli

    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")  # any ray.init would fail
    uri = write_tiny_shards(tmp_path / "shards")
    if how == "missing":
        resolve(uri).fs.delete_file(resolve(uri).join(DAMAGED))
    else:
        _damage(uri, "truncated")
    named = f"error: {resolve(uri).child_uri(DAMAGED)}: "
    code = train_cli.main(["deep_emotion", "--data", uri, "--storage",
                           str(tmp_path / "runs"), "--name", "r"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(named) and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists()
    code = tune.main(["deep_emotion", "--data", uri, "--storage", str(tmp_path / "searches"),
                      "--name", "s"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(named) and err.count("\n") == 1, err
    assert not (tmp_path / "searches").exists()
    checkpoint = train_checkpoint(tmp_path / "ckpt", "deep_emotion", steps=1)
    code = evaluate.main([str(checkpoint), "--data", uri, "--split", "val",
                          "--out", str(tmp_path / "eval")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(named) and err.count("\n") == 1, err
    assert not (tmp_path / "eval").exists()


@pytest.mark.slow
def test_training_on_a_damaged_shard_ends_on_one_error_line_and_leaves_no_run(tmp_path):
    """The damage shows only when the shard is read, in a Ray worker: the run fails with
    the shard named as the last line (Ray's worker logs come before it), exit code 2,
    and leaves no run folder whose config.yaml would refuse the same --name (but never
    removes a folder that was there before)."""
    bad = write_tiny_shards(tmp_path / "bad")
    _damage(bad, "bit-flipped")
    good = write_tiny_shards(tmp_path / "good")

    def train(name: str, data: str) -> subprocess.CompletedProcess:
        return _cli("ray_fer.train", "deep_emotion", "--storage", str(tmp_path / "runs"),
                    "--name", name, "--epochs", "1", "--set", "data.shuffle_buffer=0",
                    "--data", data, cwd=tmp_path)

    failed = train("same", bad)
    assert failed.returncode == 2, failed.stderr[-3000:]
    lines = failed.stderr.rstrip("\n").splitlines()
    assert _error_lines(failed.stderr) == [lines[-1]]
    assert lines[-1].startswith(f"error: {resolve(bad).child_uri(DAMAGED)}: corrupt")
    assert not any(line.startswith("Traceback") for line in lines)  # none of the driver's
    assert not (tmp_path / "runs" / "same").exists()
    again = train("same", good)
    assert again.returncode == 0, again.stderr[-3000:]
    # A folder the run did not create is never removed.
    theirs = tmp_path / "runs" / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("kept")
    assert train("theirs", bad).returncode == 2
    assert (theirs / "notes.txt").read_text() == "kept"


@pytest.mark.slow
def test_evaluating_a_damaged_shard_ends_on_one_error_line(tmp_path):
    from ray_fer.ingest import ingest

    # The embedded faces: the classes of the checkpoint below.
    bad = str(tmp_path / "bad")
    ingest("synthetic", "default", bad, size=48, channels=1, folds=1, workers=1,
           progress=False, reader_options={"subjects": 4, "images_per_subject": 14,
                                           "size": 48})
    shard = read_manifest(resolve(bad)).shards[0].file
    _damage(bad, "bit-flipped", shard)
    checkpoint = train_checkpoint(tmp_path / "ckpt", "deep_emotion", steps=1)
    failed = _cli("ray_fer.evaluate", str(checkpoint), "--data", bad, "--split", "train",
                  "--out", str(tmp_path / "eval"), cwd=tmp_path)
    assert failed.returncode == 2, failed.stderr[-3000:]
    lines = failed.stderr.rstrip("\n").splitlines()
    assert _error_lines(failed.stderr) == [lines[-1]]
    assert lines[-1].startswith(f"error: {resolve(bad).child_uri(shard)}: corrupt")
    assert not (tmp_path / "eval").exists()
