"""How a ray_fer driver joins Ray: the cluster at RAY_ADDRESS or a local Ray sized for the
job, and the environment every Ray process of the job gets."""

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


#: The standard AWS credential variables. They never travel in a runtime environment: Ray's
#: runtime-env agent logs every environment it creates (``runtime_env_agent.log``, readable
#: by every user of the machine). Workers read them from their own environment instead,
#: which a local Ray started by the driver inherits and a cluster node has from the
#: environment of its ``ray start`` (or an instance profile, a pod's role, a profile).
CREDENTIAL_VARIABLES = frozenset({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                  "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN"})


def stop_tune_copying_credentials() -> None:
    """Make Ray Tune stop copying this driver's AWS credentials into the runtime
    environment of every trial process.

    Ray Tune 2.60 puts each variable of ``ray.tune.execution.class_cache``'s
    ``ENV_VARS_TO_PROPAGATE`` that the driver has, AWS credentials included, into the
    ``env_vars`` of the trials' actor class, read when a trial starts. No public setting
    turns that off, so the credential names leave that set, the one place Tune reads
    them from. Without this, every search with AWS_SECRET_ACCESS_KEY set wrote the secret
    about 30 times into the session's ``runtime_env_agent.log`` (tests/test_security.py).
    tests/cluster/test_runtime.py pins it to Ray 2.60: a newer Ray must be checked again.
    """
    from ray.tune.execution import class_cache

    class_cache.ENV_VARS_TO_PROPAGATE = frozenset(
        set(class_cache.ENV_VARS_TO_PROPAGATE) - CREDENTIAL_VARIABLES)


def job_runtime_env(extra: dict[str, str] | None = None) -> dict:
    """The ``runtime_env`` of a ray_fer driver's ``ray.init``: variables for every worker
    and actor (the S3 endpoint and region, Ray Train's poll interval, a value already set
    in this environment winning), then ``extra``."""
    env = ray_runtime_env().get("env_vars", {})
    env[TRAIN_POLL_ENV] = os.environ.get(TRAIN_POLL_ENV) or TRAIN_POLL_S
    return {"env_vars": env | (extra or {})}


def connect(cpus_per_worker: int, workers: int = 1, *, num_gpus: int | None = None,
            extra: dict[str, str] | None = None) -> None:
    """Start Ray for this driver unless it runs: the cluster at RAY_ADDRESS, else local Ray
    (``num_gpus``: the GPUs it may use, default all) with ``job_runtime_env(extra)``."""
    import ray

    if ray.is_initialized():
        return
    env = job_runtime_env(extra)
    if os.environ.get("RAY_ADDRESS"):
        ray.init(runtime_env=env)
        return
    # Local Ray: workers (of one DDP run, or of two one-worker trials), their Ray Data reads
    # and the trial drivers share the machine's cores. Logical CPUs beyond the physical ones
    # let them all be scheduled (else a 2-worker run on 2 cores waits forever for a CPU to
    # read its data) and let small trials overlap their I/O.
    needed = max(workers, 2) * cpus_per_worker + 2
    ray.init(num_cpus=max(os.cpu_count() or 1, needed), num_gpus=num_gpus, runtime_env=env)


def _import(modules: tuple[str, ...]) -> int:
    import importlib

    for name in modules:
        importlib.import_module(name)
    return os.getpid()


def warm_workers(count: int, runtime_env: dict,
                 modules: tuple[str, ...] = ("ray_fer.data.shard_source",)) -> list:
    """Start ``count`` Ray worker processes with ``runtime_env`` that import ``modules``;
    returns the tasks' refs (each the worker's process id) without waiting for them.

    A task runs in an idle worker of its runtime environment, else in a new process that
    Ray starts for it and that imports what the task needs: a Tune search's first trials
    waited 2-3 s for their first Ray Data read that way (2-core VM). Tune gives trials a
    runtime environment of their own, so their reads never found the job's idle workers.
    Workers warmed with that environment wait in Ray's idle pool and take the reads at
    once. The tasks hold no CPU (``num_cpus=0``): they never delay a task that needs one.
    """
    import ray

    task = ray.remote(num_cpus=0)(_import).options(runtime_env=runtime_env)
    return [task.remote(modules) for _ in range(count)]


def uncached_bytecode(modules: tuple[str, ...] = ("torch", "torch._dynamo")) -> list[str]:
    """The bytecode files of ``modules`` that Python's cache lacks (honouring
    ``PYTHONPYCACHEPREFIX``): every new process compiles those modules from source again.

    pip writes the cache at install time, but an interpreter run with
    ``PYTHONDONTWRITEBYTECODE`` over an install without ``__pycache__`` never has it. Each
    new Tune trial process then spent about 5 s more compiling torch and its compiler stack
    (which ``torch.optim`` imports) on an H100 machine
    (benchmarks/RESULTS.md#where-a-first-round-trials-start-goes).
    """
    import importlib.util

    missing = []
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.has_location or not str(spec.origin).endswith(".py"):
            continue
        # From the source path, not ``spec.cached``: an imported module's spec keeps the
        # cache path of its own import; a new process looks where the prefix says now.
        cached = importlib.util.cache_from_source(spec.origin)
        if not os.path.exists(cached):
            missing.append(cached)
    return missing
