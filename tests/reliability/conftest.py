"""Fault-injection fixtures: an S3 server of this module's own that can crash and come back.

The session ``s3_server`` is shared by other tests, so tests that take a server down start
their own with :func:`start_seaweedfs`. A crash is SIGKILL (no graceful shutdown); coming
back relaunches the same command line on the same ports and data folder, so objects
written before the crash are there again, as after a real server restart.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest
from support.s3 import SeaweedFS, _die_with_parent, _ready, _server_env, start_seaweedfs

#: Longest wait for a relaunched server to accept writes (it replays its volumes).
REVIVE_TIMEOUT_S = 120


def crash(server: SeaweedFS) -> None:
    """SIGKILL the server by its pid; its data folder stays."""
    server.process.kill()
    server.process.wait(timeout=30)


def revive(server: SeaweedFS) -> None:
    """Relaunch a crashed server on its ports and data; wait until it accepts writes."""
    with server.log.open("ab") as log:
        server.process = subprocess.Popen(
            server.process.args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=_server_env(server.directory), preexec_fn=_die_with_parent)
    deadline = time.monotonic() + REVIVE_TIMEOUT_S
    while not _ready(server):
        if server.process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"SeaweedFS did not come back; log tail:\n{server.log_tail()}")
        time.sleep(0.3)


@pytest.fixture(scope="module")
def own_s3(tmp_path_factory) -> Iterator[SeaweedFS]:
    """A SeaweedFS for this module only; the AWS variables point at it meanwhile."""
    server = start_seaweedfs(tmp_path_factory.mktemp("own-seaweedfs"))
    with pytest.MonkeyPatch.context() as mp:
        for name in ("AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
            mp.delenv(name, raising=False)
        for name, value in server.env().items():
            mp.setenv(name, value)
        try:
            yield server
        finally:
            server.stop()
