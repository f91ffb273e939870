"""``python -m ray_fer.tune`` end to end on a real local Ray: Optuna proposes inside the YAML
bounds, ASHA stops trials early, the results table, best config, best checkpoint and the
TensorBoard files (per-trial scalars and hparams) are written, and ``--resume`` finishes an
interrupted experiment (a killed driver, Ctrl-C) without re-running finished trials."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
import yaml
from support.tiny_shards import write_tiny_shards
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ray_fer.data.targets import derived_targets_note
from ray_fer.tune import main, warn_uncached_bytecode
from ray_fer.tuning.space import load_search_space

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]

SPACE = {
    "method": "deep_emotion",
    "fixed": {"train.epochs": 3, "train.batch_size": 32, "model.options.dropout": 0.1},
    "search": {"optim.lr": {"loguniform": [1.0e-5, 3.0e-3]},
               "loss.l2": {"loguniform": [1.0e-6, 1.0e-2]}},
    "start_with": [{"optim.lr": 1.0e-3, "loss.l2": 1.0e-4}],
}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    return write_tiny_shards(tmp_path_factory.mktemp("tiny") / "shards")


@pytest.fixture(scope="module")
def space_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("space") / "deep_emotion.yaml"
    path.write_text(yaml.safe_dump(SPACE))
    return path


def _args(shards: str, space: Path, storage: Path, name: str, *extra: str) -> list[str]:
    return ["deep_emotion", "--data", shards, "--space", str(space), "--storage", str(storage),
            "--name", name, "--grace-period", "1", "--reduction-factor", "2", "--seed", "3",
            *extra]


@pytest.fixture(scope="module")
def search(shards, space_file, tmp_path_factory) -> Path:
    storage = tmp_path_factory.mktemp("searches")
    try:
        assert main(_args(shards, space_file, storage, "de", "--num-samples", "4",
                          "--max-concurrent", "1")) == 0
    finally:
        ray.shutdown()
    return storage / "de"


def _rows(exp: Path) -> list[dict]:
    with (exp / "results.csv").open() as f:
        return list(csv.DictReader(f))


def _trial_dirs(exp: Path) -> list[Path]:
    return sorted(d for d in exp.iterdir() if d.name.startswith("run_trial_"))


def test_one_worker_trials_train_in_one_reused_trial_process(search):
    """No Ray Train controller or worker per trial: every trial reports from the Tune trial
    process itself, the same one for all four (one at a time), and Tune keeps the
    checkpoints, where Ray Train would have kept them in the run folders."""
    trials = _trial_dirs(search)
    pids = {json.loads(line)["pid"] for trial in trials
            for line in (trial / "result.json").read_text().splitlines()}
    assert len(trials) == 4 and len(pids) == 1, pids
    assert all(any(trial.glob("checkpoint_*")) for trial in trials)
    assert not list((search / "train").glob("*/checkpoint_*"))


def test_trials_can_run_on_ray_train_instead(shards, space_file, tmp_path):
    """``resources.in_trial=false``: the path DDP trials always take (a TorchTrainer per
    trial), with the checkpoints in the trial's run folder and the best one exported."""
    try:
        assert main(_args(shards, space_file, tmp_path, "rt", "--num-samples", "1",
                          "--epochs", "1", "--set", "resources.in_trial=false")) == 0
    finally:
        ray.shutdown()
    runs = list((tmp_path / "rt" / "train").iterdir())
    assert len(runs) == 1
    assert (runs[0] / "checkpoint_epoch-0000" / "meta.json").is_file()
    assert not any(_trial_dirs(tmp_path / "rt")[0].glob("checkpoint_*"))
    exported = json.loads((tmp_path / "rt" / "best_checkpoint" / "meta.json").read_text())
    assert exported["epoch"] == 0


def test_trials_run_with_values_inside_the_yaml_bounds(search, space_file):
    rows = _rows(search)
    assert len(rows) == 4
    space = load_search_space(space_file, lambda m, k, v: None)
    for row in rows:
        for param in space.params:
            assert param.contains(float(row[param.key])), (param.key, row[param.key])
        assert row["status"] in ("completed", "stopped early")
    assert len({row["optim.lr"] for row in rows}) == 4


def test_the_start_point_is_tried_as_given(search):
    start = SPACE["start_with"][0]
    matches = [r for r in _rows(search)
               if all(float(r[k]) == pytest.approx(v, rel=1e-9) for k, v in start.items())]
    assert len(matches) == 1


def test_asha_stops_weak_trials_early(search):
    rows = _rows(search)
    epochs = sorted(int(r["epochs"]) for r in rows)
    assert epochs[0] < 3 <= epochs[-1], epochs
    assert any(r["status"] == "stopped early" for r in rows)


def test_results_table_best_config_and_checkpoint_are_exported(search):
    rows = _rows(search)
    best = max(rows, key=lambda r: float(r["val_accuracy"]))
    assert rows[0]["trial_id"] == best["trial_id"]
    assert (search / "results.md").read_text().count("\n") == len(rows) + 2
    config = yaml.safe_load((search / "best_config.yaml").read_text())
    assert config["optim"]["lr"] == pytest.approx(float(best["optim.lr"]), rel=1e-5)
    assert any((search / "best_checkpoint").iterdir())
    # best_epoch numbers epochs from 0, as the checkpoints do: the exported best checkpoint
    # is of that epoch.
    exported = json.loads((search / "best_checkpoint" / "meta.json").read_text())
    assert int(best["best_epoch"]) == exported["epoch"]


def _event_files(exp: Path) -> list[Path]:
    return [p for p in exp.rglob("events.out.tfevents.*") if "train" not in p.parts]


def test_tensorboard_holds_per_trial_scalars_and_hparams(search):
    files = _event_files(search)
    trial_dirs = {p.parent for p in files}
    assert len(trial_dirs) == 4
    with_hparams = 0
    for folder in trial_dirs:
        acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        acc.Reload()
        assert any(tag.endswith("val_accuracy") for tag in acc.Tags()["scalars"])
        with contextlib.suppress(KeyError):  # KeyError: the file has no hparams at all
            with_hparams += "_hparams_/session_start_info" in acc.PluginTagToContent("hparams")
    assert with_hparams == 4


def test_each_trial_run_logs_every_epoch_it_ran_to_its_own_tensorboard(search):
    """Also the last epoch of a trial that ASHA stopped or that reached max_t: the run
    writes TensorBoard before it reports, since Tune may end the trial on the report.
    (A stopped trial may finish one more epoch before its worker is killed.)"""
    for row in _rows(search):
        acc = EventAccumulator(str(search / "train" / row["trial_id"] / "tensorboard"),
                               size_guidance={"scalars": 0, "images": 0})
        acc.Reload()
        steps = [e.step for e in acc.Scalars("accuracy/val")]
        epochs = int(row["epochs"])
        # Steps are epochs, numbered from 0 as the checkpoints number them.
        assert steps[:epochs] == list(range(epochs)) and len(steps) <= epochs + 1, row
        assert acc.Images("best/confusion"), row


def _synthetic_faces(out: Path, *, size: int, channels: int, images_per_subject: int) -> str:
    """Six synthetic subjects (with V/A) split by subject: a few seconds of training."""
    from ray_fer.ingest import ingest

    ingest("synthetic", "default", str(out), size=size, channels=channels, folds=1, workers=1,
           progress=False, reader_options={"subjects": 6, "size": size,
                                           "images_per_subject": images_per_subject})
    return str(out)


def test_caf_search_reports_ccc_and_shows_each_trials_va_agreement(tmp_path):
    data = _synthetic_faces(tmp_path / "faces", size=48, channels=1, images_per_subject=28)
    # As ingest records V/A derived from ratings (FER+, JAFFE, Taiwanese): reports say so.
    manifest = Path(data) / "manifest.json"
    manifest.write_text(json.dumps(json.loads(manifest.read_text())
                                   | {"targets": derived_targets_note()}))
    try:
        assert main(["caf", "--data", data, "--storage", str(tmp_path), "--name", "caf",
                     "--num-samples", "2", "--max-concurrent", "2", "--epochs", "1",
                     "--set", "data.shuffle_buffer=0"]) == 0
    finally:
        ray.shutdown()
    rows = _rows(tmp_path / "caf")
    assert len(rows) == 2
    assert all(-1.0 <= float(r["val_mean_ccc"]) <= 1.0 for r in rows)
    # Each trial's run shows its best epoch's V/A agreement (target vs prediction) image.
    for folder in (tmp_path / "caf" / "train").glob("*/tensorboard"):
        events = EventAccumulator(str(folder), size_guidance={"images": 0})
        events.Reload()
        assert events.Images("best/va_agreement")[-1].encoded_image_string[:4] == b"\x89PNG"
        assert any(tag.startswith("run/targets") for tag in events.Tags()["tensors"])
    assert len(list((tmp_path / "caf" / "train").glob("*/tensorboard"))) == 2
    assert (tmp_path / "caf" / "results.md").read_text().startswith("Targets: derived V/A.")


def test_face_ae_search_ranks_trials_by_pair_error_and_flags_override_fixed_settings(
        tmp_path):
    data = _synthetic_faces(tmp_path / "faces", size=64, channels=3, images_per_subject=21)
    try:
        # --set beats the space's fixed batch size (64 would not fit the 84 train rows).
        assert main(["face_ae", "--data", data, "--storage", str(tmp_path), "--name", "ae",
                     "--num-samples", "2", "--max-concurrent", "2", "--epochs", "1",
                     "--set", "train.batch_size=16", "--set", "model.options.width=8"]) == 0
    finally:
        ray.shutdown()
    rows = _rows(tmp_path / "ae")
    assert len(rows) == 2 and all(float(r["val_pair_mse"]) > 0 for r in rows)
    assert (tmp_path / "ae" / "best_checkpoint").is_dir()
    space = load_search_space(REPO / "search_spaces" / "face_ae.yaml", lambda m, k, v: None)
    assert all(p.contains(float(row[p.key])) for row in rows for p in space.params)


def _finished_trials(exp: Path, epochs: int) -> list[Path]:
    done = []
    for result in exp.glob("*/result.json"):
        lines = [json.loads(x) for x in result.read_text().splitlines() if x.strip()]
        if lines and lines[-1].get("training_iteration") == epochs:
            done.append(result.parent)
    return done


def _saved_study(exp: Path) -> list | None:
    """The Optuna trials in the search's newest saved searcher state (OptunaSearch pickles
    its attributes, the study among them); None before the first or during a write."""
    files = list(exp.glob("searcher-state-*.pkl"))
    if not files:
        return None
    newest = max(files, key=lambda f: f.stat().st_mtime)
    try:
        return pickle.loads(newest.read_bytes())["_ot_study"].trials
    except (EOFError, pickle.UnpicklingError, KeyError, OSError):
        return None


def test_resume_after_the_driver_is_killed_finishes_without_rerunning(shards, space_file,
                                                                      tmp_path):
    args = _args(shards, space_file, tmp_path, "killed", "--num-samples", "2",
                 "--max-concurrent", "1", "--epochs", "2")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "ray_fer.tune", *args], cwd=tmp_path,
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    exp = tmp_path / "killed"
    try:
        # Kill once a trial has finished and the searcher's saved state knows both trials:
        # Tune snapshots its trial list and the searcher at different moments, and a kill
        # between them loses the second trial from Optuna's study (not ours to fix).
        deadline = time.monotonic() + 600
        while not (_finished_trials(exp, 2) and len(_saved_study(exp) or []) == 2):
            assert proc.poll() is None, "the search ended before it could be interrupted"
            assert time.monotonic() < deadline, "no trial finished within 10 minutes"
            time.sleep(0.5)
        finished = _finished_trials(exp, 2)
    finally:
        # The driver and the local Ray it started share its session: kill them all.
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = {p: p.joinpath("result.json").read_text() for p in finished}
    try:
        assert main(args + ["--resume"]) == 0
    finally:
        ray.shutdown()
    rows = _rows(exp)
    assert len(rows) == 2
    for trial, text in before.items():
        assert trial.joinpath("result.json").read_text() == text, f"{trial.name} re-ran"
    # The Optuna study kept its history: the trials finished before the kill are in it,
    # complete, with the value they reported (the searcher's saved state: OptunaSearch
    # pickles its attributes, the study among them).
    study = _saved_study(exp)
    assert len(study) == 2
    for trial in before:
        last = json.loads(trial.joinpath("result.json").read_text().splitlines()[-1])
        kept = [t for t in study
                if t.params["optim.lr"] == pytest.approx(last["config"]["optim.lr"])]
        assert len(kept) == 1 and kept[0].state.name == "COMPLETE", study
        assert kept[0].value == pytest.approx(last["val_accuracy"])


def _epochs_reported(exp: Path) -> list[int]:
    return [len(r.read_text().splitlines()) for r in exp.glob("*/result.json")]


def test_ctrl_c_ends_a_search_as_interrupted_and_resume_finishes_it(shards, space_file,
                                                                   tmp_path):
    """Tune takes the first Ctrl-C itself and returned as if the search had finished: exit
    0, a best config and checkpoint, the running trial labelled "stopped early"."""
    epochs = 8
    args = _args(shards, space_file, tmp_path, "ctrl-c", "--num-samples", "2",
                 "--max-concurrent", "1", "--epochs", str(epochs), "--grace-period",
                 str(epochs))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    # Its own session: the SIGINT goes to its process group, as a terminal's Ctrl-C does.
    proc = subprocess.Popen([sys.executable, "-m", "ray_fer.tune", *args], cwd=tmp_path,
                            env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    exp = tmp_path / "ctrl-c"
    try:
        deadline = time.monotonic() + 600
        while not any(2 <= n < epochs - 2 for n in _epochs_reported(exp)):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no trial reported within 10 minutes"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the local Ray it started
        proc.wait()
    assert proc.returncode == 130, err[-3000:]
    # One line (Ray's streamed worker logs may share stderr with it).
    assert (f"search 'ctrl-c' interrupted; resume with --resume: python -m ray_fer.tune "
            f"deep_emotion --space {space_file} --storage {tmp_path} --name ctrl-c "
            "--resume\n") in err
    assert not (exp / "best_config.yaml").exists() and not (exp / "best_checkpoint").exists()
    assert "best config:" not in out and "best checkpoint:" not in out
    rows = _rows(exp)
    assert {r["status"] for r in rows} <= {"completed", "interrupted"}, rows
    assert [int(r["epochs"]) < epochs for r in rows if r["status"] == "interrupted"] == [True]
    assert (exp / "results.md").read_text().startswith("Interrupted: partial results")
    try:
        assert main(args + ["--resume"]) == 0
    finally:
        ray.shutdown()
    rows = _rows(exp)
    assert len(rows) == 2 and {r["status"] for r in rows} == {"completed"}, rows
    assert all(int(r["epochs"]) == epochs for r in rows)
    assert (exp / "best_config.yaml").is_file() and any((exp / "best_checkpoint").iterdir())
    assert not (exp / "results.md").read_text().startswith("Interrupted")


def test_a_search_says_how_to_cache_bytecode_only_where_python_has_none(tmp_path, monkeypatch,
                                                                         capsys):
    import torch

    warn_uncached_bytecode()  # this environment's own cache, written by pip or by imports
    assert capsys.readouterr().err == ""
    # An empty cache folder is what an interpreter told not to write bytecode sees.
    monkeypatch.setattr(sys, "pycache_prefix", str(tmp_path / "pyc"))
    warn_uncached_bytecode()
    note = capsys.readouterr().err
    assert str(tmp_path / "pyc") in note
    assert f"compileall -q -j 0 {Path(torch.__file__).parents[1]}" in note


def test_a_reused_trial_process_trains_the_next_trial_from_the_rows_on_its_device(
        shards, space_file, tmp_path):
    """The first trial streams its rows and caches them; the next trials in the same
    process start from those caches (no Ray Data read), from their first epoch on."""
    try:
        assert main(_args(shards, space_file, tmp_path, "kept", "--num-samples", "3",
                          "--max-concurrent", "1", "--epochs", "2",
                          "--set", "data.cache=on")) == 0
    finally:
        ray.shutdown()
    reports = [[json.loads(line) for line in (trial / "result.json").read_text().splitlines()]
               for trial in _trial_dirs(tmp_path / "kept")]
    first = min(reports, key=lambda r: r[0]["timestamp"])
    assert [r["rows_cached"] for r in first] == [0, 1]
    later = [r for r in reports if r is not first]
    assert all(r[0]["rows_cached"] == 1 for r in later)
    assert len({r[0]["pid"] for r in reports}) == 1
