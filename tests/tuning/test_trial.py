"""A trial's process: the runtime environment Tune gives it, which ray_fer warms workers for."""

from __future__ import annotations

import pytest
import ray
from ray import tune

from ray_fer.cluster.runtime import connect
from ray_fer.tuning.trial import trial_runtime_env


@pytest.mark.slow
def test_trial_runtime_env_is_the_one_tune_gives_its_trials(monkeypatch, tmp_path):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "61")  # one Tune propagates
    expected = trial_runtime_env()["env_vars"]
    connect(1, 1)
    try:
        def trial(config: dict) -> None:
            env = ray.get_runtime_context().runtime_env.get("env_vars", {})
            tune.report({"same": all(env.get(k) == v for k, v in expected.items())})

        grid = tune.Tuner(trial, run_config=tune.RunConfig(storage_path=str(tmp_path))).fit()
        assert expected["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] == "61"
        assert grid[0].metrics["same"] is True
    finally:
        ray.shutdown()
