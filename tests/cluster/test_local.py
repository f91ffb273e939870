"""Stopping a local node ends its processes by pid, orphans included, and nothing else."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from ray_fer.cluster.local import MARKER, RayNode, stop_node


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_stop_node_kills_the_nodes_processes_and_orphans_but_not_others(tmp_path):
    marker = "test-" + os.urandom(4).hex()
    env = os.environ | {MARKER: marker}
    # The "ray start" stand-in forks a daemon that outlives it (as raylets and workers do
    # once re-parented), and ignores SIGTERM so that the SIGKILL path runs too.
    pid_file = tmp_path / "orphan.pid"
    process = subprocess.Popen(
        ["bash", "-c", f"sleep 300 & echo $! > {pid_file}; trap '' TERM; sleep 300"],
        env=env, start_new_session=True)
    bystander = subprocess.Popen(["sleep", "300"])
    orphan = None
    try:
        deadline = time.monotonic() + 10
        while not pid_file.is_file() or not pid_file.read_text().strip():
            assert time.monotonic() < deadline, "the stand-in did not start its daemon"
            time.sleep(0.05)
        orphan = int(pid_file.read_text())
        node = RayNode(name="fake", temp_dir=tmp_path / "node", process=process, marker=marker,
                       address="127.0.0.1:1", resources={}, num_cpus=1, owns_temp_dir=False)
        assert orphan in node.pids() and process.pid in node.pids()
        assert bystander.pid not in node.pids()

        stop_node(node, grace=1)

        assert not _alive(orphan) and process.poll() is not None
        assert node.pids() == []
        assert _alive(bystander.pid)
    finally:
        for p in (process, bystander):
            if p.poll() is None:
                p.kill()
                p.wait()
        if orphan is not None and _alive(orphan):
            os.kill(orphan, 9)


def test_a_temp_dir_too_long_for_rays_sockets_is_refused(tmp_path):
    from ray_fer.cluster.local import start_head

    with pytest.raises(ValueError, match="Unix socket"):
        start_head(temp_dir=Path("/tmp") / ("x" * 60))
