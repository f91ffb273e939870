"""Checkpoints and output folders that cannot be used, given to evaluate, predict, export
and ``--init``: one ``error:`` line naming the file and what to do, exit code 2, no
traceback, nothing written; a hostile ``state.pt`` is never run, and the message never
suggests loading with ``weights_only=False``."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pyarrow.fs as pafs
import pytest
import torch
from support.trained import train_checkpoint

from ray_fer import evaluate, export, predict
from ray_fer.checkpoint import STATE_FILE, copy_folder
from ray_fer.storage import resolve
from ray_fer.train import __main__ as train_cli


@pytest.fixture(autouse=True)
def no_ray_allowed(monkeypatch):
    # None of these may get as far as Ray: an unreachable address makes any ray.init fail.
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return train_checkpoint(tmp_path_factory.mktemp("good") / "checkpoint_epoch-0000",
                            steps=2)


class _RunsCode:
    """A pickle that, if unpickled without ``weights_only``, creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _garbage(state: Path, tmp: Path) -> None:
    state.write_bytes(np.random.default_rng(0).bytes(300))


def _truncated(state: Path, tmp: Path) -> None:
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])


def _hostile(state: Path, tmp: Path) -> None:
    torch.save({"modules": _RunsCode(tmp / "ran")}, state)


def _foreign(state: Path, tmp: Path) -> None:
    torch.save({"weights": torch.zeros(3)}, state)


DAMAGE = {"garbage": _garbage, "truncated": _truncated, "hostile": _hostile,
          "foreign": _foreign}


def _damaged(good: Path, tmp: Path, how: str) -> Path:
    folder = tmp / f"{how}-checkpoint"
    copy_folder(pafs.LocalFileSystem(), str(good), pafs.LocalFileSystem(), str(folder))
    DAMAGE[how](folder / STATE_FILE, tmp)
    return folder


def _cli(main, argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err
    return code, err


def _image(tmp: Path) -> Path:
    path = tmp / "photo.png"
    cv2.imwrite(str(path), np.full((64, 64), 128, np.uint8))
    return path


def _commands(checkpoint: Path, tmp: Path) -> dict[str, tuple]:
    return {
        "evaluate": (evaluate.main, [str(checkpoint), "--out", str(tmp / "eval")]),
        "export": (export.main, [str(checkpoint), "--out", str(tmp / "out" / "m.onnx")]),
        "predict": (predict.main, [str(checkpoint), str(_image(tmp)), "--out",
                                   str(tmp / "pred")]),
        "--init": (train_cli.main, ["deep_emotion", "--init", str(checkpoint),
                                    "--storage", str(tmp / "runs"), "--name", "ft"]),
    }


@pytest.mark.parametrize("command", ["evaluate", "export", "predict", "--init"])
@pytest.mark.parametrize("how", sorted(DAMAGE))
def test_a_damaged_or_hostile_state_file_is_one_error_line(good, tmp_path, capsys, how,
                                                           command):
    checkpoint = _damaged(good, tmp_path, how)
    main, argv = _commands(checkpoint, tmp_path)[command]
    code, err = _cli(main, argv, capsys)
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert str(checkpoint) in err
    assert "weights_only" not in err and "Traceback" not in err
    assert not (tmp_path / "ran").exists(), "the hostile pickle ran"
    for left in ("eval", "out", "pred", "runs"):
        assert not (tmp_path / left).exists(), left


@pytest.mark.parametrize("command", ["evaluate", "export", "predict", "--init"])
def test_a_checkpoint_folder_that_does_not_exist_is_named_as_such(tmp_path, capsys, command):
    missing = tmp_path / "runs-elsewhere" / "checkpoint_epoch-0003"
    main, argv = _commands(missing, tmp_path)[command]
    code, err = _cli(main, argv, capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert f"{missing}: no such checkpoint folder" in err


@pytest.fixture
def checkpoint_on_s3(good, s3_server) -> str:
    uri = f"{s3_server.new_bucket('ckpt')}/run/checkpoint_epoch-0000"
    dst = resolve(uri)
    copy_folder(pafs.LocalFileSystem(), str(good), dst.fs, dst.path)
    return uri


@pytest.mark.parametrize("command", ["evaluate", "export", "predict"])
def test_wrong_s3_credentials_are_one_line_naming_the_checkpoint_and_the_fix(
        checkpoint_on_s3, tmp_path, capsys, monkeypatch, command):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-key")
    main, argv = _commands(Path("/placeholder"), tmp_path)[command]
    argv = [checkpoint_on_s3, *argv[1:]]
    code, err = _cli(main, argv, capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: cannot use {checkpoint_on_s3} at endpoint ")
    assert "AWS_SECRET_ACCESS_KEY" in err and "not-the-key" not in err


def _file_in_the_way(tmp: Path) -> Path:
    """A --out below a regular file: no user can write there (root included)."""
    blocker = tmp / "a-file"
    blocker.write_text("x")
    return blocker / "out"


def test_export_to_an_unwritable_out_is_one_line_before_exporting(good, tmp_path, capsys):
    out = _file_in_the_way(tmp_path) / "model.onnx"
    code, err = _cli(export.main, [str(good), "--out", str(out)], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: --out {out.parent}: cannot write there")


def test_export_to_an_existing_folder_is_refused(good, tmp_path, capsys):
    code, err = _cli(export.main, [str(good), "--out", str(tmp_path)], capsys)
    assert code == 2 and f"--out {tmp_path}: is a folder" in err


def test_predict_into_an_unwritable_out_is_one_line(good, tmp_path, capsys):
    out = _file_in_the_way(tmp_path)
    code, err = _cli(predict.main, [str(good), str(_image(tmp_path)), "--out", str(out)],
                     capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: --out {out}: cannot write there")
