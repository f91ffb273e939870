"""The environment every Ray process of a ray_fer job gets (``ray.init(runtime_env=...)``)."""

from __future__ import annotations

import os

from ray_fer.storage import ray_runtime_env

#: Ray Train's controller collects a worker's reports when it polls the worker group, every
#: 2 s by default, and a worker's next report waits until the previous one was collected
#: (a queue of one). Every epoch of a small-data run therefore took at least 2 s (JAFFE:
#: 0.1 s of work). A poll is one small actor call, so poll often; a poll that times out
#: is only retried (a worker is declared dead after RAY_TRAIN_WORKER_HEALTH_CHECK_TIMEOUT_S).
TRAIN_POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
TRAIN_POLL_S = "0.1"


def job_runtime_env(extra: dict[str, str] | None = None) -> dict:
    """The ``runtime_env`` of a ray_fer driver's ``ray.init``: variables for every worker
    and actor (the S3 endpoint and region, Ray Train's poll interval, a value already set
    in this environment winning), then ``extra``."""
    env = ray_runtime_env().get("env_vars", {})
    env[TRAIN_POLL_ENV] = os.environ.get(TRAIN_POLL_ENV) or TRAIN_POLL_S
    return {"env_vars": env | (extra or {})}
