"""A Ray Train worker killed with SIGKILL mid-epoch: the worker group restarts from the last
checkpoint (``run.max_failures``), does not redo the epochs before it, and finishes the run
exactly where an uninterrupted run with the same seed ends (CPU, deterministic algorithms,
tiny model and shards): same metrics every epoch, same final weights. The same for a
one-worker Tune trial, which trains in its own process: Tune retries it from its
checkpoint."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from pathlib import Path

import pytest
import yaml
from support.tiny_shards import write_tiny_shards

from ray_fer.checkpoint import load_checkpoint
from ray_fer.methods import classify
from ray_fer.methods.registry import get_method, method_config
from ray_fer.train import driver, worker
from ray_fer.train import plan as planning
from ray_fer.tune import build_tuner
from ray_fer.tuning.search import make_search
from ray_fer.tuning.space import load_search_space
from ray_fer.tuning.trial import run_trial

pytestmark = pytest.mark.slow

EPOCHS = 3
#: The worker dies in this epoch, after this many training steps of it. Epoch 2, not 1:
#: Ray Train's controller takes a report off a worker's one-slot queue when it polls
#: (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S), so a worker killed right after reporting epoch 0
#: may take that checkpoint with it; the epoch-1 report blocks until epoch 0's was taken,
#: so by epoch 2 the epoch-0 checkpoint is surely registered.
KILL_EPOCH, KILL_AFTER_STEPS = 2, 2
KILLED_MARK = "worker-killed"
#: Files ``trained-epoch<E>-pid<P>``: which worker processes trained which epochs.
TRAINED = "trained-epoch"


def _config(shards: str, storage: Path, name: str):
    return method_config("deep_emotion", flags={
        "data.uri": shards, "run.storage": str(storage), "run.name": name,
        "train.epochs": EPOCHS, "train.batch_size": 32, "train.eval_batch_size": 64,
        "optim.schedule": "step", "optim.step_epochs": 2, "optim.lr": 3e-3,
        "data.shuffle_buffer": 64, "run.max_failures": 1})


def _learning(metrics: dict) -> dict:
    """Metrics without the ``time_*`` ones, which measure the machine, not learning."""
    return {k: v for k, v in metrics.items() if not k.startswith("time_")}


#: Steps this worker process has trained in the kill epoch (a fresh process starts at 0).
_steps_in_kill_epoch = [0]


def _dying_train(state, batch):
    """The real training step, but the first worker to reach step KILL_AFTER_STEPS of
    epoch KILL_EPOCH leaves a mark and SIGKILLs its own process (no cleanup, no report)."""
    storage = Path(state.cfg.run.storage)
    (storage / f"{TRAINED}{state.epoch}-pid{os.getpid()}").touch()
    mark = storage / KILLED_MARK
    if state.epoch == KILL_EPOCH and not mark.exists():
        _steps_in_kill_epoch[0] += 1
        if _steps_in_kill_epoch[0] > KILL_AFTER_STEPS:
            mark.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
    return classify.train_batch(state, batch)


def _dying_worker(loop_config: dict) -> None:
    worker.run_worker(planning.Plan(**loop_config),
                    dataclasses.replace(get_method("deep_emotion"), train_batch=_dying_train))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted run and the same run whose worker is SIGKILLed in epoch 2."""
    import ray.cloudpickle

    tmp = tmp_path_factory.mktemp("worker-kill")
    ray.cloudpickle.register_pickle_by_value(__import__(__name__))
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
    try:
        shards = write_tiny_shards(tmp / "shards", train=128)
        started = time.perf_counter()
        clean = driver.train(_config(shards, tmp / "clean", "run"))
        print(f"uninterrupted run: {time.perf_counter() - started:.1f} s")
        started = time.perf_counter()
        storage = tmp / "killed"
        cfg = _config(shards, storage, "run")
        method, plan = planning.plan_run(cfg)
        result = driver.build_trainer(cfg, method, plan, worker_fn=_dying_worker).fit()
        outcome = driver.finish_run(cfg, result)
        print(f"killed and restarted run: {time.perf_counter() - started:.1f} s")
    finally:
        ray.shutdown()
    return clean, outcome, storage


def test_killed_worker_is_replaced_and_resumes_from_the_last_checkpoint(runs):
    clean, outcome, storage = runs
    killed_pid = int((storage / KILLED_MARK).read_text())
    assert killed_pid != os.getpid()  # a Ray worker died, not this test process
    with pytest.raises(ProcessLookupError):
        os.kill(killed_pid, 0)
    # The new worker went on from a checkpoint: it did not train epoch 0 again (its
    # checkpoint was registered, see KILL_EPOCH), and the epoch that was cut short was
    # trained again by the new process.
    trainers = {e: sorted(p.name.rsplit("pid", 1)[1] for p in storage.glob(f"{TRAINED}{e}-*"))
                for e in range(EPOCHS)}
    assert trainers[0] == [str(killed_pid)]
    assert len(trainers[KILL_EPOCH]) == 2 and str(killed_pid) in trainers[KILL_EPOCH]
    assert [m["epoch"] for m in outcome.history] == list(range(EPOCHS))
    # The epochs trained once, before the kill, come back from the checkpoint as the
    # uninterrupted run had them.
    once = [e for e in range(KILL_EPOCH) if len(trainers[e]) == 1]
    assert [_learning(outcome.history[e]) for e in once] == [
        _learning(clean.history[e]) for e in once]
    assert load_checkpoint(outcome.latest_checkpoint).meta["epoch"] == EPOCHS - 1


def test_killed_worker_run_ends_with_the_uninterrupted_runs_metrics_and_weights(runs):
    """The restarted group reads the remaining epochs' blocks in the uninterrupted order:
    the training dataset's factory sets Ray Data's execution index to the resumed epoch."""
    clean, outcome, _ = runs
    assert [_learning(m) for m in outcome.history] == [_learning(m) for m in clean.history]
    a = load_checkpoint(clean.latest_checkpoint).state["modules"]
    b = load_checkpoint(outcome.latest_checkpoint).state["modules"]
    for name in a:
        for key, tensor in a[name].items():
            assert tensor.equal(b[name][key]), f"{name}.{key} differs after the restart"


# ------------------------------------------------------- a one-worker Tune trial killed

#: One trial, exactly the run above: its only searched key has one value, the run's own.
TRIAL_SPACE = {"method": "deep_emotion", "search": {"optim.lr": {"choice": [3e-3]}}}


def _dying_trial(params: dict, *, search, storage: str) -> None:
    """``run_trial`` with the training step of :func:`_dying_train`: the trial's own
    process (it trains there, no Ray Train worker) SIGKILLs itself in epoch 2."""
    planning.get_method = lambda name: dataclasses.replace(get_method(name),
                                                         train_batch=_dying_train)
    run_trial(params, search=search, storage=storage)


def _search(cfg, space, storage: Path, trial_fn=None) -> list[dict]:
    """A one-trial search of ``cfg`` (retried once after a failure): the trial's reports."""
    opts = {"num_samples": 1, "max_concurrent": 1, "grace_period": EPOCHS,
            "reduction_factor": 2, "time_budget_s": None}
    tuner = build_tuner(make_search({cfg.method: cfg}, space), opts,
                        storage=str(storage), name="search", seed=0, resume=False,
                        max_failures=1, trial_fn=trial_fn)
    grid = tuner.fit()
    assert grid[0].error is None, grid[0].error
    (results,) = (storage / "search").glob("*/result.json")
    return [json.loads(line) for line in results.read_text().splitlines()]


@pytest.fixture(scope="module")
def trials(tmp_path_factory):
    """The reports of an uninterrupted one-worker trial and of the same trial whose process
    is SIGKILLed in epoch 2 and retried by Tune."""
    import ray.cloudpickle

    tmp = tmp_path_factory.mktemp("trial-kill")
    (tmp / "space.yaml").write_text(yaml.safe_dump(TRIAL_SPACE))
    space = load_search_space(tmp / "space.yaml", lambda m, key, value: None)
    ray.cloudpickle.register_pickle_by_value(__import__(__name__))
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
    try:
        shards = write_tiny_shards(tmp / "shards", train=128)
        clean = _search(_config(shards, tmp / "clean", "unused"), space, tmp / "clean")
        killed = _search(_config(shards, tmp / "killed", "unused"), space, tmp / "killed",
                         trial_fn=_dying_trial)
    finally:
        ray.shutdown()
    return clean, killed, tmp / "killed" / "search" / "train"


def test_killed_trial_process_is_retried_from_its_last_checkpoint(trials):
    """Tune restarts the trial in a new process from the checkpoint it kept: epochs 0-1
    are not trained again, the epoch cut short is, and the run ends with the uninterrupted
    trial's metrics (the stream is ordered from the checkpoint's epoch)."""
    clean, killed, storage = trials
    killed_pid = int((storage / KILLED_MARK).read_text())
    assert killed_pid != os.getpid()
    trainers = {e: sorted(p.name.rsplit("pid", 1)[1] for p in storage.glob(f"{TRAINED}{e}-*"))
                for e in range(EPOCHS)}
    assert trainers[0] == [str(killed_pid)]
    assert len(trainers[KILL_EPOCH]) == 2 and str(killed_pid) in trainers[KILL_EPOCH]
    # An epoch trained again after the restart is reported again: keep its last report.
    last = {r["epoch"]: r for r in killed}
    assert sorted(last) == list(range(EPOCHS))
    assert killed[0]["pid"] == killed_pid and last[EPOCHS - 1]["pid"] != killed_pid
    keys = [k for k in clean[0] if k.startswith(("train_", "val_"))]
    assert [{k: last[e][k] for k in keys} for e in range(EPOCHS)] == [
        {k: r[k] for k in keys} for r in clean]
