"""One Tune trial = one ``ray_fer.train`` run with the trial's hyperparameters.

Ray 2.60 (Train V2) no longer runs a ``TorchTrainer`` directly under a ``Tuner``: a Tune
function trainable builds the trainer itself and forwards each per-epoch report to Tune
through :class:`ray.tune.integration.ray_train.TuneReportCallback` (which also passes the
checkpoint path). The trainable needs only a fraction of a CPU; the Train workers reserve
their own resources.
"""

from __future__ import annotations

from typing import Any

import pyarrow.fs as pafs

from ray_fer.config import Config, override


def trial_config(base: dict, params: dict[str, Any], *, storage: str, name: str) -> Config:
    """The run config of one trial: ``base`` with ``params`` (dotted keys) applied.

    Train runs live in ``<storage>/<name>``; the name is the Tune trial id, so a restored
    experiment finds each unfinished trial's run and continues it from its checkpoint.
    """
    cfg = Config.from_dict(base)
    for key, value in params.items():
        cfg = override(cfg, key, value)
    cfg = override(cfg, "run.storage", storage)
    return override(cfg, "run.name", name)


def run_trial(params: dict[str, Any], *, base: dict, storage: str) -> None:
    """Tune function trainable: train with ``params`` and report every epoch to Tune."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from ray_fer.train.loop import build_trainer, plan_run, run_location

    cfg = trial_config(base, params, storage=storage, name=tune.get_context().get_trial_id())
    run = run_location(cfg)
    if run.fs.get_file_info(run.join("config.yaml")).type == pafs.FileType.File:
        # The experiment was interrupted and restored: continue this trial's run.
        cfg = override(cfg, "run.resume", True)
    method, plan = plan_run(cfg)
    result = build_trainer(cfg, method, plan, callbacks=[TuneReportCallback()]).fit()
    if result.error is not None:
        raise result.error
