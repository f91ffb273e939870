"""A real two-node Ray cluster on loopback: training and a submitted search span both nodes.

The head (custom resource ``node_a``) and a second node (``node_b``) run from their own
temp dirs with 8 logical CPUs each. A search's Train worker takes 5 CPUs, so two concurrent
trials cannot share a node: the placement has to use both, and each node keeps
CPUs free for Ray Data's read tasks (1 CPU each) beside a worker and two trial drivers
(Ray Data's tasks must not take the CPUs a second trial's worker needs). Shards
and results live in the SeaweedFS S3 server; the nodes get its credentials in their
environment, as instance-profile credentials reach every process of a cloud node, and no
file of either node ever holds the secret key. Every process the tests start is stopped
by pid at the end, also on failure.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ray_fer.cluster.local import (
    RayNode,
    add_node,
    dashboard_get,
    kill_raylet,
    list_state,
    start_head,
    stop_nodes,
)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CPUS_PER_NODE = 8
#: More than half a node: two Train workers never fit on one node.
CPUS_PER_WORKER = 5
#: A trial retried after losing its node waits on the head for the other trial's CPUs;
#: Train's default (60 s) to start a worker group would fail it meanwhile.
NODE_ENV = {"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "900",
            # The job log is searched for each trial's checkpoint lines: Ray must not fold
            # alike lines of different trials into one "[repeated Nx across cluster]".
            "RAY_DEDUP_LOGS": "0"}


@pytest.fixture(scope="module")
def faces(s3_server) -> str:
    """A small synthetic face set ingested to S3 (48 px gray, subject splits)."""
    from ray_fer.ingest import ingest

    uri = s3_server.new_bucket("faces") + "/synthetic"
    ingest("synthetic", "synthetic", uri, size=48, channels=1, folds=2, workers=1, progress=False,
           reader_options={"subjects": 8, "images_per_subject": 28})
    return uri


@pytest.fixture(scope="module")
def cluster(s3_server):
    """(head, second node) of a loopback cluster; both stopped by pid afterwards."""
    nodes: list[RayNode] = []
    try:
        env = s3_server.env() | NODE_ENV
        head = start_head(num_cpus=CPUS_PER_NODE, resources={"node_a": 1}, env=env)
        nodes.append(head)
        nodes.insert(0, add_node(head, name="b", num_cpus=CPUS_PER_NODE,
                                 resources={"node_b": 1}, env=env))
        yield head, nodes[0]
    finally:
        stop_nodes(nodes)
        for node in nodes:
            assert node.pids() == [], f"node {node.name} left processes behind"


def _driver_env(head: RayNode, s3_server) -> dict[str, str]:
    env = os.environ | s3_server.env() | head.client_env()
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _keys(s3_server, uri: str) -> list[str]:
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    pages = s3_server.client().get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def _train_workers(head: RayNode) -> dict[str, str]:
    """Actor id → node id of every Ray Train worker the cluster has run so far."""
    return {a["actor_id"]: a["node_id"]
            for a in list_state(head, "actors", class_name="RayTrainWorker")}


def _nodes_used_since(head: RayNode, before: dict[str, str]) -> set[str]:
    return {node for actor, node in _train_workers(head).items() if actor not in before}


def _train(head: RayNode, s3_server, faces: str, storage: str, name: str, *flags: str) -> dict:
    """Run ``python -m ray_fer.train deep_emotion`` (1 epoch) on the cluster; its outcome."""
    cmd = [sys.executable, "-m", "ray_fer.train", "deep_emotion", "--data", faces,
           "--storage", storage, "--name", name, "--epochs", "1", "--batch-size", "16",
           "--augment", "off", *flags]
    done = subprocess.run(cmd, env=_driver_env(head, s3_server), cwd=REPO, timeout=420,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout[done.stdout.index("{"):])


def test_two_worker_training_spans_both_nodes_and_checkpoints_to_s3(cluster, faces, s3_server):
    """STRICT_SPREAD places the workers on two nodes although both would fit on one."""
    head, node_b = cluster
    storage = s3_server.new_bucket("runs")
    before = _train_workers(head)
    outcome = _train(head, s3_server, faces, storage, "two-nodes", "--workers", "2",
                     "--placement", "STRICT_SPREAD")

    assert _nodes_used_since(head, before) == {head.node_id, node_b.node_id}
    keys = _keys(s3_server, f"{storage}/two-nodes/")
    assert any("/checkpoint_epoch-0000/" in k for k in keys), keys
    assert {"two-nodes/config.yaml", "two-nodes/history.json"} <= set(keys)
    assert outcome["latest_checkpoint"].startswith(storage + "/two-nodes/checkpoint_epoch-")


def test_a_custom_resource_pins_the_workers_to_the_node_that_has_it(cluster, faces, s3_server):
    head, node_b = cluster
    before = _train_workers(head)
    _train(head, s3_server, faces, s3_server.new_bucket("runs"), "pinned", "--workers", "2",
           "--set", "resources.custom.node_b=0.5")
    assert _nodes_used_since(head, before) == {node_b.node_id}


def _submit(head: RayNode, s3_server, entrypoint: list[str], timeout: float = 600) -> str:
    """``ray job submit --no-wait`` the entrypoint; returns the submission id."""
    done = subprocess.run(
        [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address",
         head.dashboard_url, "--working-dir", str(REPO), "--no-wait", "--", *entrypoint],
        env=_driver_env(head, s3_server), cwd=REPO, timeout=timeout, capture_output=True,
        text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for line in done.stdout.splitlines():
        if "submitted successfully" in line:
            return line.split("'")[1]
    raise AssertionError(f"no submission id in:\n{done.stdout}")


def _logs(head: RayNode, job_id: str) -> str:
    return dashboard_get(head, f"/api/jobs/{job_id}/logs")["logs"]


def _wait_job(head: RayNode, job_id: str, timeout: float) -> str:
    """The job's final status (SUCCEEDED, FAILED, STOPPED), or TIMEOUT."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = dashboard_get(head, f"/api/jobs/{job_id}")["status"]
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            return status
        time.sleep(3)
    return "TIMEOUT"


def _tune_caf(storage: str, name: str, epochs: int, *data: str) -> list[str]:
    """The user's main job, ``python -m ray_fer.tune caf``, sized for two small nodes, with
    its trials on Ray Train (``resources.in_trial=false``, the path DDP trials take), whose
    workers and checkpoints these tests follow across the nodes."""
    return ["python", "-m", "ray_fer.tune", "caf", *data, "--storage", storage,
            "--name", name, "--num-samples", "2", "--max-concurrent", "2", "--epochs",
            str(epochs), "--grace-period", str(epochs), "--workers-per-trial", "1",
            "--cpus-per-worker", str(CPUS_PER_WORKER), "--set", "augment.enabled=false",
            "--set", "resources.in_trial=false"]


def test_submitted_caf_search_succeeds_over_both_nodes_with_results_in_s3(cluster, s3_server):
    """No --data: the embedded faces are written under the S3 storage for every node."""
    head, node_b = cluster
    storage = s3_server.new_bucket("searches")
    before = _train_workers(head)
    job = _submit(head, s3_server, _tune_caf(storage, "spread", 1))
    final = _wait_job(head, job, timeout=600)
    logs = _logs(head, job)
    assert final == "SUCCEEDED", logs[-5000:]

    assert _nodes_used_since(head, before) == {head.node_id, node_b.node_id}
    keys = _keys(s3_server, f"{storage}/")
    assert any(k.startswith("embedded-faces/synthetic-v1-") and k.endswith("manifest.json")
               for k in keys), keys
    assert {"spread/results.csv", "spread/results.md", "spread/best_config.yaml"} <= set(keys)
    events = {k.rsplit("/", 1)[0] for k in keys
              if k.startswith("spread/") and "tfevents" in k.rsplit("/", 1)[-1]}
    assert len(events) >= 2, keys


def _checkpointed_trial_on(head: RayNode, node: RayNode, logs: str, s3_server,
                           train_uri: str) -> str | None:
    """A trial whose live Train worker runs on ``node`` and has a registered checkpoint.

    Registered: listed in the run's checkpoint-manager snapshot, which Ray Train writes
    after the upload; a run restarted before that would not find the checkpoint.
    """
    pids = {a["pid"] for a in list_state(head, "actors", class_name="RayTrainWorker")
            if a["node_id"] == node.node_id and a["state"] == "ALIVE"}
    for pid in pids:
        found = re.search(rf"\(RayTrainWorker pid={pid}\).*Checkpoint successfully created at: "
                          r".*/train/(\w+)/checkpoint_epoch-", logs)
        if found:
            bucket, _, prefix = f"{train_uri}/{found.group(1)}".removeprefix(
                "s3://").partition("/")
            with contextlib.suppress(s3_server.client().exceptions.NoSuchKey):
                snapshot = s3_server.client().get_object(
                    Bucket=bucket, Key=f"{prefix}/checkpoint_manager_snapshot.json")
                if b"checkpoint_epoch-" in snapshot["Body"].read():
                    return found.group(1)
    return None


#: Enough epochs that node b's trial is still training when its checkpoint is seen.
FAILOVER_EPOCHS = 6


def test_search_survives_losing_a_node(cluster, faces, s3_server):
    """Kill node b's raylet under a checkpointed trial: the trial resumes on the head."""
    head, node_b = cluster
    storage = s3_server.new_bucket("failover")
    job = _submit(head, s3_server, _tune_caf(storage, "failover", FAILOVER_EPOCHS, "--data",
                                             faces))
    deadline = time.monotonic() + 420
    train_uri = f"{storage}/failover/train"
    while (trial := _checkpointed_trial_on(head, node_b, _logs(head, job), s3_server,
                                           train_uri)) is None:
        if time.monotonic() > deadline or dashboard_get(head, f"/api/jobs/{job}")["status"] in (
                "SUCCEEDED", "FAILED", "STOPPED"):
            pytest.fail("no trial trained on node b with a checkpoint:\n"
                        + _logs(head, job)[-3000:])
        time.sleep(1)
    kill_raylet(node_b)
    final = _wait_job(head, job, timeout=900)
    logs = _logs(head, job)
    assert final == "SUCCEEDED", logs[-5000:]
    assert f"Trial run_trial_{trial} errored" in logs, logs[-5000:]
    assert "The trial terminated successfully after retrying" in logs, logs[-5000:]
    assert f"Trial run_trial_{trial} completed after" in logs, logs[-5000:]
    results = s3_server.client().get_object(Bucket=storage.removeprefix("s3://"),
                                            Key="failover/results.csv")["Body"].read().decode()
    rows = {row["trial_id"]: row for row in csv.DictReader(io.StringIO(results))}
    assert rows[trial]["status"] != "error", results
    # Resumed, not restarted: its first checkpoint was written once, before the kill.
    first = f"/train/{trial}/checkpoint_epoch-0000"
    assert len(re.findall(rf"Checkpoint successfully created at: [^\n]*{first}\)", logs)) == 1
    keys = _keys(s3_server, f"{storage}/failover/train/{trial}/")
    last = f"/checkpoint_epoch-{FAILOVER_EPOCHS - 1:04d}/"
    assert any(last in k for k in keys), keys


def test_no_node_wrote_the_secret_key(cluster, s3_server):
    """Run after the tests above: their runs and submitted searches read S3 with the
    secret key of the nodes' own environment (as a cloud node's processes get theirs),
    never from a runtime environment, so no file of either node's temp dir (Ray's logs,
    the jobs' logs and working dirs) holds it."""
    secret = s3_server.secret_key.encode()
    files = [p for node in cluster for p in node.temp_dir.rglob("*")
             if p.is_file() and not p.is_symlink()]
    assert any(p.name == "runtime_env_agent.log" for p in files)
    assert [str(p) for p in files if secret in p.read_bytes()] == []
