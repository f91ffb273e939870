"""Bad flag values on every CLI (ingest, train, tune, evaluate): a one-line error and a
non-zero exit before any work starts (no Ray, no output folder, no traceback)."""

from __future__ import annotations

import pytest
import ray

from ray_fer import evaluate, ingest, tune
from ray_fer.train import __main__ as train_cli


@pytest.fixture(autouse=True)
def no_ray_allowed(monkeypatch):
    # Should a bad value slip through, Ray must not start a cluster on this machine: an
    # unreachable address makes any ray.init fail instead (after Ray's connection retries).
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    yield
    assert not ray.is_initialized(), "Ray was started before the bad flag was refused"


def _run(main, argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse: usage error, exit 2
        code = exc.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


INGEST = [
    (["--size", "0"], "--size must be between 8 and 1024"),
    (["--size", "100000"], "--size must be between 8 and 1024"),
    (["--size", "big"], "invalid int value"),
    (["--channels", "2"], "invalid choice"),
    (["--folds", "0"], "--folds must be >= 1"),
    (["--workers", "0"], "--workers must be >= 1"),
    (["--holdout", "train=abc"], "expected split=count pairs"),
    (["--class-map", "/nonexistent/map.yaml"], "--class-map /nonexistent/map.yaml"),
]


@pytest.mark.parametrize(("flags", "message"), INGEST, ids=[" ".join(f) for f, _ in INGEST])
def test_ingest_refuses_bad_values_before_writing(flags, message, tmp_path, capsys):
    out = tmp_path / "out"
    code, err = _run(ingest.main, ["synthetic", "default", "--out", str(out), "--no-progress",
                                   *flags], capsys)
    assert code != 0 and message in err
    assert not out.exists()


@pytest.mark.parametrize(("out", "message"), [("ftp://host/x", "unsupported URI scheme"),
                                               ("s3://", "names no bucket")])
def test_ingest_refuses_bad_output_uris(out, message, capsys):
    code, err = _run(ingest.main, ["synthetic", "default", "--out", out, "--no-progress"],
                     capsys)
    assert code == 1 and message in err


TRAIN = [
    (["--epochs", "0"], "train.epochs"),
    (["--batch-size", "0"], "train.batch_size"),
    (["--lr", "-1"], "optim.lr"),
    (["--workers", "0"], "resources.workers"),
    (["--image-size", "-3"], "image_size"),
    (["--label-smoothing", "2"], "label_smoothing"),
    (["--set", "optim.nonsense=1"], "optim.nonsense"),
    (["--set", "train.epochs=many"], "train.epochs"),
    (["--optimizer", "rmsprop"], "invalid choice"),
    (["--resume"], "--resume needs --name"),
    (["--lr", "inf"], "optim.lr': must be a finite number"),
    (["--l2", "inf"], "loss.l2': must be a finite number"),
    (["--set", "optim.warmup=nan"], "optim.warmup': must be a finite number"),
    (["--set", "model.options.dropout=.inf"], "model.options.dropout' must be a finite"),
    (["--name", ".."], "--name '..' must be one plain folder name"),
    (["--name", "."], "--name '.' must be one plain folder name"),
    (["--name", "../elsewhere"], "must be one plain folder name"),
    (["--name", "..", "--resume"], "--name '..' must be one plain folder name"),
    (["--set", "model.options.dropout=5"], "dropout probability has to be between 0 and 1"),
    (["--set", "optim.beta1=7"], "optim.beta1' must be in [0, 1)"),
    (["--optimizer", "sgd", "--set", "optim.momentum=-0.9"], "optim.momentum' must be in"),
]


@pytest.mark.parametrize(("flags", "message"), TRAIN, ids=[" ".join(f) for f, _ in TRAIN])
def test_train_refuses_bad_values_before_ray_starts(flags, message, tmp_path, capsys):
    storage = tmp_path / "runs" / "storage"
    code, err = _run(train_cli.main, ["deep_emotion", "--storage", str(storage), *flags],
                     capsys)
    assert code == 2 and message in err
    assert err.startswith("usage:") or err.count("\n") == 1  # argparse adds its usage
    assert not (tmp_path / "runs").exists()  # nor a run beside the storage folder


def test_train_refuses_a_prefix_without_manifest_before_ray_starts(tmp_path, capsys):
    code, err = _run(train_cli.main, ["deep_emotion", "--data", str(tmp_path / "nothing"),
                                      "--storage", str(tmp_path / "runs")], capsys)
    assert code != 0 and "manifest.json not found" in err


TUNE = [
    (["--space", "/nonexistent/space.yaml"], "space.yaml"),
    (["--max-failures", "-1"], "--max-failures must be >= 0"),
    (["--set", "optim.lr=-1"], "optim.lr"),
    (["--epochs", "0"], "train.epochs"),
    (["--workers-per-trial", "0"], "resources.workers"),
    (["--num-samples", "0"], "--num-samples must be >= 1"),
    (["--max-concurrent", "0"], "--max-concurrent must be >= 1"),
    (["--grace-period", "0"], "--grace-period must be >= 1"),
    (["--reduction-factor", "1"], "--reduction-factor must be >= 2"),
    (["--time-budget", "0"], "--time-budget must be >= 1"),
    (["--epochs", "1"], "is longer than the longest schedule (1 epochs"),
    (["--time-budget", "nan"], "--time-budget must be >= 1"),
    (["--time-budget", "inf"], "--time-budget must be a finite number"),
    (["--gpus-per-trial", "inf"], "resources.gpus_per_worker': must be a finite number"),
    (["--set", "loss.l2=inf"], "loss.l2': must be a finite number"),
    (["--name", ".."], "--name '..' must be one plain folder name"),
    (["--name", "a/b"], "--name 'a/b' must be one plain folder name"),
    (["--set", "model.options.dropout=5"], "dropout probability has to be between 0 and 1"),
    (["--set", "optim.beta1=7"], "optim.beta1' must be in [0, 1)"),
]


@pytest.mark.parametrize(("flags", "message"), TUNE, ids=[" ".join(f) for f, _ in TUNE])
def test_tune_refuses_bad_values_before_ray_starts(flags, message, tmp_path, capsys):
    storage = tmp_path / "runs" / "searches"
    code, err = _run(tune.main, ["deep_emotion", "--storage", str(storage), *flags], capsys)
    assert code == 2 and message in err
    assert not (tmp_path / "runs").exists()


EVALUATE = [
    (["CKPT", "--tta", "sideways"], "invalid choice"),
    (["CKPT", "--fold", "x"], "invalid int value"),
]


@pytest.mark.parametrize(("argv", "message"), EVALUATE, ids=[" ".join(a) for a, _ in EVALUATE])
def test_evaluate_refuses_bad_values(argv, message, tmp_path, capsys):
    argv = [str(tmp_path / "ckpt") if a == "CKPT" else a for a in argv]
    code, err = _run(evaluate.main, argv, capsys)
    assert code != 0 and message in err


def test_evaluate_says_a_missing_checkpoint_folder_does_not_exist(capsys):
    code, err = _run(evaluate.main, ["/nonexistent/checkpoint_epoch-0001"], capsys)
    assert code == 2
    assert err == ("error: /nonexistent/checkpoint_epoch-0001: no such checkpoint folder; "
                   "pass a checkpoint folder such as <storage>/<run>/checkpoint_epoch-0004\n")
