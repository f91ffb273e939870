"""Fault-injection fixtures: an S3 server of this module's own that can crash and come back.

The session ``s3_server`` is shared by other tests, so tests that take a server down start
their own with :func:`start_seaweedfs`. A crash is SIGKILL (no graceful shutdown); coming
back relaunches the same command line on the same ports and data folder, so objects
written before the crash are there again, as after a real server restart.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.s3 import SeaweedFS, exported, spawn, start_seaweedfs, wait_until_ready

#: Longest wait for a relaunched server to accept writes (it replays its volumes).
REVIVE_TIMEOUT_S = 120


def crash(server: SeaweedFS) -> None:
    """SIGKILL the server by its pid; its data folder stays."""
    server.process.kill()
    server.process.wait(timeout=30)


def revive(server: SeaweedFS) -> None:
    """Relaunch a crashed server on its ports and data; wait until it accepts writes."""
    server.process = spawn(server.process.args, server.directory, log_mode="ab")
    if not wait_until_ready(server, REVIVE_TIMEOUT_S):
        raise RuntimeError(f"SeaweedFS did not come back; log tail:\n{server.log_tail()}")


@pytest.fixture(scope="module")
def own_s3(tmp_path_factory) -> Iterator[SeaweedFS]:
    """A SeaweedFS for this module only; the AWS variables point at it meanwhile."""
    with exported(start_seaweedfs(tmp_path_factory.mktemp("own-seaweedfs"))) as server:
        yield server
