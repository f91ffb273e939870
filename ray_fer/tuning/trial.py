"""One Tune trial = one ``ray_fer.train`` run with the trial's hyperparameters.

A one-worker trial (``resources.workers == 1`` and ``resources.in_trial``, the default)
trains in the Tune trial's own process, which holds the worker's CPUs and GPU share and is
reused from trial to trial (``reuse_actors``): no Ray Train controller, worker group,
process group or dataset split coordinator to start, and torch, CUDA and Ray Data are
already warm after the first trial. It runs the same epochs (:func:`run_worker`) on the
same Ray Datasets, read directly instead of through Train's split, and reports to Tune,
which keeps its checkpoints and restores a failed or restored trial from them.

A DDP trial (several workers) builds a ``TorchTrainer`` itself (Ray 2.60's Train V2 no
longer runs one directly under a ``Tuner``) and forwards each per-epoch report to Tune
through :class:`ray.tune.integration.ray_train.TuneReportCallback`; its driver needs only
a fraction of a CPU, the Train workers reserve their own resources.
"""

from __future__ import annotations

import os
from typing import Any

import pyarrow.fs as pafs

from ray_fer.config import Config, override
from ray_fer.tuning.search import Search

#: CPU reserved by a DDP trial's driver; its Train workers reserve their own resources.
TRIAL_DRIVER_CPU = 0.25


def trial_runtime_env() -> dict:
    """The runtime environment Tune gives its trial processes (Ray 2.60: its default
    variables and those it propagates from this driver's environment, never the
    credentials: :func:`~ray_fer.cluster.runtime.stop_tune_copying_credentials`), which
    the tasks a trial starts, e.g. its Ray Data reads, inherit."""
    from ray.tune.execution.class_cache import DEFAULT_ENV_VARS, ENV_VARS_TO_PROPAGATE

    from ray_fer.cluster.runtime import CREDENTIAL_VARIABLES

    return {"env_vars": DEFAULT_ENV_VARS | {name: os.environ[name]
                                            for name in ENV_VARS_TO_PROPAGATE
                                            if name in os.environ
                                            and name not in CREDENTIAL_VARIABLES}}


def in_trial(cfg: Config) -> bool:
    """Whether a trial of ``cfg`` trains in its own process (one worker, ``in_trial``)."""
    return cfg.resources.workers == 1 and cfg.resources.in_trial


def trial_resources(cfg: Config) -> dict[str, float]:
    """What each trial's process reserves: the worker's resources when it trains itself,
    else a fraction of a CPU to drive Ray Train."""
    from ray_fer.train.driver import worker_resources

    return worker_resources(cfg) if in_trial(cfg) else {"CPU": TRIAL_DRIVER_CPU}


def trial_device(cfg: Config):
    """The device of a trial that trains itself: the GPU Ray assigned it (the only one it
    sees), else the CPU."""
    import torch

    if not cfg.resources.gpu:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("the trial was given a GPU share but sees no CUDA device; check "
                           "the node's GPUs and CUDA_VISIBLE_DEVICES")
    device = torch.device("cuda", 0)
    torch.cuda.set_device(device)
    return device


class KeptRows:
    """The device caches of the last trial this process ran, for the next one.

    Tune reuses a trial's process for the next trial (``reuse_actors``); a trial of the
    same rows then trains from the caches on its device at once, instead of streaming,
    decoding and copying every row again in its first epoch. Only the rows of one
    selection are kept (a new one frees the old), so they never outgrow the cache budget
    that admitted them.
    """

    def __init__(self) -> None:
        self.key: tuple = ()
        self.sources: dict = {}

    def get(self, key: tuple) -> dict:
        """The cached ``train`` and ``val`` rows of ``key``, or {} when not both are kept."""
        return dict(self.sources) if key == self.key and len(self.sources) == 2 else {}

    def keep(self, key: tuple, sources: dict) -> None:
        from ray_fer.data.device_cache import DeviceCache

        self.key = key
        self.sources = {k: v for k, v in sources.items() if isinstance(v, DeviceCache)}


#: This process's kept rows (a trial process runs one trial at a time).
KEPT_ROWS = KeptRows()


def rows_key(cfg: Config, plan, method, device) -> tuple:
    """What selects and orders a trial's cached rows; () when its rows cannot be kept
    (resampled per run, or augmented by Ray Data and so read anew every epoch)."""
    if method.resample_train is not None or (cfg.augment.enabled
                                             and cfg.augment.where == "data"):
        return ()
    data = cfg.data
    return (plan.data_uri, data.endpoint, tuple(data.train_splits), data.val_split, data.fold,
            data.cache, data.cache_fraction, str(device))


def trial_session(cfg: Config, plan, method):
    """The :class:`~ray_fer.train.runtime.Runtime` of a trial that trains in its own
    process (:func:`~ray_fer.train.runtime.trial_runtime`), with the rows an earlier trial
    left on its device when they are the same rows, and keeping its own for the next."""
    from ray_fer.train.runtime import trial_runtime

    device = trial_device(cfg)
    key = rows_key(cfg, plan, method, device)
    kept = KEPT_ROWS.get(key) if key else {}
    return trial_runtime(cfg, plan, method, device, kept=kept,
                         keep=(lambda rows: KEPT_ROWS.keep(key, rows)) if key else None)


def run_trial(params: dict[str, Any], *, search: Search, storage: str) -> None:
    """Tune function trainable: train with ``params`` (Optuna's names → values) and report
    every epoch to Tune."""
    from ray import tune

    from ray_fer.train.driver import build_trainer
    from ray_fer.train.plan import plan_run, run_location, write_run_config
    from ray_fer.train.worker import run_worker

    cfg = search.trial_config(params, storage=storage, name=tune.get_context().get_trial_id())
    run = run_location(cfg)
    if run.fs.get_file_info(run.join("config.yaml")).type == pafs.FileType.File:
        # The experiment was interrupted and restored, or the trial failed: continue its run.
        cfg = override(cfg, "run.resume", True)
    method, plan = plan_run(cfg)
    if in_trial(cfg):
        write_run_config(cfg)
        run_worker(plan, method, trial_session(cfg, plan, method))
        return
    from ray.tune.integration.ray_train import TuneReportCallback

    result = build_trainer(cfg, method, plan, callbacks=[TuneReportCallback()]).fit()
    if result.error is not None:
        raise result.error
