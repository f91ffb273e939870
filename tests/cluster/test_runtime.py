"""How a driver joins Ray: a local Ray sized so a run's workers leave CPUs for its data
reads, and the environment every process of the job gets, which never holds credentials."""

from __future__ import annotations

import importlib.util
import os
import py_compile
import sys

import pytest
import ray

from ray_fer.cluster.runtime import (
    CREDENTIAL_VARIABLES,
    TRAIN_POLL_ENV,
    connect,
    job_runtime_env,
    stop_tune_copying_credentials,
    uncached_bytecode,
    warm_workers,
)
from ray_fer.tuning.trial import trial_runtime_env


def test_runtime_env_polls_ray_train_often_unless_the_user_chose(monkeypatch):
    monkeypatch.delenv(TRAIN_POLL_ENV, raising=False)
    assert job_runtime_env({"X": "1"})["env_vars"][TRAIN_POLL_ENV] == "0.1"
    assert job_runtime_env({"X": "1"})["env_vars"]["X"] == "1"
    monkeypatch.setenv(TRAIN_POLL_ENV, "2")
    assert job_runtime_env()["env_vars"][TRAIN_POLL_ENV] == "2"


@pytest.mark.slow
def test_local_ray_leaves_cpus_for_data_reads_beside_every_worker(monkeypatch):
    """Four one-CPU workers on a 2-core machine: without the extra logical CPUs the
    workers take them all and Ray Data's read tasks wait forever."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert not ray.is_initialized()
    connect(1, 4, extra={"RAY_FER_TEST": "1"})
    try:
        assert ray.cluster_resources()["CPU"] >= max(os.cpu_count() or 1, 4 + 2)

        @ray.remote
        def env() -> tuple[str | None, str | None]:
            return os.environ.get("RAY_FER_TEST"), os.environ.get(TRAIN_POLL_ENV)

        assert ray.get(env.remote()) == ("1", job_runtime_env()["env_vars"][TRAIN_POLL_ENV])
    finally:
        ray.shutdown()


def _trial_class_env() -> dict[str, str]:
    """The ``env_vars`` Ray Tune gives a trial's actor class (Ray 2.60's class cache)."""
    from ray.tune.execution.class_cache import _ActorClassCache

    class Trainable:
        pass

    return dict(_ActorClassCache().get(Trainable)._default_options["runtime_env"]["env_vars"])


def test_tune_stops_copying_credentials_into_trials_on_this_ray_version(monkeypatch):
    """Pinned to Ray 2.60, whose Tune copies the driver's AWS credentials into every trial's
    runtime environment, which Ray's runtime-env agent writes to its log. Another Ray:
    check where its Tune propagates variables, then update the wrapper and this test."""
    from ray.tune.execution import class_cache

    assert ray.__version__.startswith("2.60."), ray.__version__
    for name in CREDENTIAL_VARIABLES:
        monkeypatch.setenv(name, f"value-of-{name}")
    # Restored after the test: the wrapper changes Tune for the whole process.
    monkeypatch.setattr(class_cache, "ENV_VARS_TO_PROPAGATE", class_cache.ENV_VARS_TO_PROPAGATE)
    assert set(_trial_class_env()) >= CREDENTIAL_VARIABLES  # what Tune does on its own
    stop_tune_copying_credentials()
    copied = _trial_class_env()
    assert not CREDENTIAL_VARIABLES & set(copied)
    assert copied == trial_runtime_env()["env_vars"]  # the warmed workers' environment
    assert not CREDENTIAL_VARIABLES & set(job_runtime_env()["env_vars"])


@pytest.mark.slow
def test_a_trials_first_task_runs_at_once_in_a_warmed_worker(monkeypatch):
    """A trial process has Tune's runtime environment; its first task (a Ray Data read)
    must find a worker warmed for that environment, with the reader already imported."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    connect(1, 2)
    try:
        env = trial_runtime_env()
        warmed = set(ray.get(warm_workers(2, env)))

        @ray.remote
        def probe() -> tuple[int, bool]:
            import sys
            return os.getpid(), "ray_fer.data.shard_source" in sys.modules

        @ray.remote(num_cpus=0, runtime_env=env)  # as Tune creates a trial's process
        class Trial:
            def first_task(self) -> tuple[int, bool]:
                return ray.get(probe.remote())

        pid, imported = ray.get(Trial.remote().first_task.remote())
        assert pid in warmed
        assert imported
    finally:
        ray.shutdown()


@pytest.mark.parametrize("prefix", [None, "pyc"], ids=["beside_source", "pycache_prefix"])
def test_uncached_bytecode_names_modules_until_their_cache_exists(tmp_path, monkeypatch,
                                                                   prefix):
    name = f"bytecode_probe_{prefix or 'beside'}"  # a parent imported once stays imported
    package = tmp_path / "src" / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "mod.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    monkeypatch.setattr(sys, "pycache_prefix", prefix and str(tmp_path / prefix))
    expected = importlib.util.cache_from_source(str(package / "mod.py"))

    assert uncached_bytecode((f"{name}.mod", "no_such_module_here")) == [expected]
    py_compile.compile(str(package / "mod.py"), cfile=expected)
    assert uncached_bytecode((f"{name}.mod",)) == []
