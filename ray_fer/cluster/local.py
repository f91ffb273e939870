"""A real multi-node Ray cluster on one machine (loopback), for tests and local trials.

Each node is one ``ray start --block`` process, started here in its own session with its
own temp dir, ports and resources (a custom resource per node tells them apart). Stopping a
node ends exactly the processes of that node, by pid, and nothing else on the machine:
every process ``ray start`` spawns (GCS, raylet, dashboard, agents, workers) inherits a
marker variable unique to the node, so the node's processes are found in ``/proc`` even
after their parent died and they were re-parented, or renamed themselves (``ray::IDLE``).
``ray stop`` is never used: it would stop every Ray instance of the user.

Addresses: the nodes are started with ``--node-ip-address=127.0.0.1`` and the dashboard
listens on 127.0.0.1 only, but Ray 2.60 replaces a loopback node address with the machine's
own (``services.resolve_ip_for_localhost``) and its GCS listens on all interfaces. The
cluster therefore runs with token authentication (``RAY_AUTH_MODE=token``, a fresh token
per cluster): nothing reaches it without the token, which only this process and the
cluster's own processes hold (``RayNode.client_env()`` passes it to drivers).

    head = start_head(num_cpus=2, resources={"node_a": 1})
    node = add_node(head, num_cpus=2, resources={"node_b": 1})
    ...                      # RAY_ADDRESS=head.address python ...; ray job submit --address
    stop_nodes([node, head])  # (head.dashboard_url) ...
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ray_fer.errors import UserError

#: Environment variable whose value marks every process of one node.
MARKER = "RAY_FER_LOCAL_NODE"
LOOPBACK = "127.0.0.1"
#: Ray puts Unix sockets under ``<temp_dir>/session_<date>_<pid>/sockets/``; a socket path
#: must fit in 107 bytes, so the temp dir may use at most this many.
MAX_TEMP_DIR = 40
#: Ray's defaults assume an idle machine: on a loaded one the agents may need longer than
#: that to register, and the raylet then aborts its start (seen on 2 busy cores).
SLOW_MACHINE_ENV = {
    "RAY_agent_register_timeout_ms": "180000",
    "RAY_USAGE_STATS_ENABLED": "0",
}


class ClusterError(UserError, RuntimeError):
    """A node did not come up; the message holds the tail of its output."""


@dataclass
class RayNode:
    """One running node: its ``ray start --block`` process and where to reach the cluster.

    ``address`` is the GCS address of the cluster's head (``RAY_ADDRESS`` for drivers);
    ``dashboard_url`` is set on the head only (``ray job submit --address``).
    """

    name: str
    temp_dir: Path
    process: subprocess.Popen
    marker: str
    address: str
    resources: dict[str, float]
    num_cpus: int
    dashboard_url: str | None = None
    owns_temp_dir: bool = True
    #: Ray's id of the node (as in ``ray.util.state`` listings); set once it is up.
    node_id: str = ""
    #: The cluster's authentication token (``RAY_AUTH_MODE=token``; one per cluster).
    token: str = field(default="", repr=False)
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.temp_dir / "ray-start.log"

    @property
    def is_head(self) -> bool:
        return self.dashboard_url is not None

    def pids(self) -> list[int]:
        """Pids of every live process of this node (the ``ray start`` process first)."""
        found = [pid for pid in _marked_pids(self.marker) if pid != self.process.pid]
        alive = self.process.poll() is None
        return ([self.process.pid] if alive else []) + sorted(found)

    def raylet_pid(self) -> int | None:
        """Pid of this node's raylet, None when it is not running."""
        for pid in self.pids():
            if _process_name(pid) == "raylet":
                return pid
        return None

    def client_env(self) -> dict[str, str]:
        """Variables a driver or ``ray job submit`` needs to talk to this cluster."""
        return {"RAY_ADDRESS": self.address, "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN": self.token}

    def log_tail(self, lines: int = 40) -> str:
        if not self.log.is_file():
            return "(no output)"
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _marked_pids(marker: str) -> Iterator[int]:
    """Pids whose environment holds ``MARKER=marker`` (processes we may read only)."""
    needle = f"{MARKER}={marker}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone meanwhile, or another user's process
            continue
        if needle in environ.split(b"\0"):
            yield int(entry.name)


def _node_temp_dir(temp_dir: Path | None, name: str) -> tuple[Path, bool]:
    if temp_dir is None:
        return Path(tempfile.mkdtemp(prefix=f"rf-{name}-", dir="/tmp")), True
    temp_dir = Path(temp_dir).resolve()
    if len(str(temp_dir)) > MAX_TEMP_DIR:
        raise ValueError(f"temp dir {temp_dir} is longer than {MAX_TEMP_DIR} characters: Ray's "
                         "Unix socket paths below it would not fit; pass a shorter one "
                         "(e.g. under /tmp) or none")
    temp_dir.mkdir(parents=True, exist_ok=True)
    return temp_dir, False


def _ray_executable() -> str:
    here = Path(sys.executable).parent / "ray"
    found = str(here) if here.is_file() else shutil.which("ray")
    if not found:
        raise ClusterError("`ray` not found: install ray[default] in this environment")
    return found


def _node_ports() -> list[str]:
    """Per-node ports Ray would otherwise take from fixed defaults shared by all nodes."""
    flags = ("--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
             "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port")
    return [f"{flag}={free_port()}" for flag in flags]


def _launch(args: list[str], temp_dir: Path, marker: str, token: str, address: str,
            env: dict[str, str] | None) -> subprocess.Popen:
    # Token authentication with a token of this cluster only: a token file of the user
    # (~/.ray/auth_token) would otherwise switch it on or off depending on the machine.
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    # RAY_ADDRESS: Ray's own actors that look the cluster up (e.g. Train's placement-group
    # cleaner) would otherwise find every Ray instance on the machine and give up.
    environ = (os.environ | SLOW_MACHINE_ENV | (env or {}) | auth
               | {MARKER: marker, "RAY_ADDRESS": address})
    with (temp_dir / "ray-start.log").open("wb") as log:
        return subprocess.Popen(
            [_ray_executable(), "start", "--block", *args], stdout=log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=environ,
            start_new_session=True)


def _wait(node: RayNode, ready, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node.process.poll() is not None:
            tail = node.log_tail()
            stop_node(node)
            raise ClusterError(f"node {node.name}: `ray start` exited with "
                               f"{node.process.returncode} before {what}; output:\n{tail}")
        with contextlib.suppress(Exception):
            if ready():
                return
        time.sleep(0.5)
    tail = node.log_tail()
    stop_node(node)
    raise ClusterError(f"node {node.name}: not {what} within {timeout:.0f} s; output:\n{tail}")


def _http_answers(url: str) -> bool:
    """True once ``url`` gives any HTTP reply (401 = token authentication is on)."""
    try:
        with urllib.request.urlopen(url, timeout=5):
            return True
    except urllib.error.HTTPError:
        return True


def dashboard_get(head: RayNode, path: str) -> dict:
    """JSON of GET ``path`` on the head's dashboard, with the cluster's token.

    Plain HTTP, so the calling process keeps no Ray client state (e.g. ``/api/jobs/<id>``).
    """
    request = urllib.request.Request(f"{head.dashboard_url}{path}",
                                     headers={"Authorization": f"Bearer {head.token}"})
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.loads(reply.read())


def list_state(head: RayNode, kind: str, **filters: str) -> list[dict]:
    """Ray's state listing ``kind`` (nodes, actors, ...) from the head's dashboard.

    ``filters``: key=value equality filters, e.g. ``class_name="RayTrainWorker"``.
    """
    query = [("limit", "10000"), ("detail", "true")]
    for key, value in filters.items():
        query += [("filter_keys", key), ("filter_predicates", "="), ("filter_values", value)]
    body = dashboard_get(head, f"/api/v0/{kind}?{urllib.parse.urlencode(query)}")
    if not body.get("result"):
        raise ClusterError(f"state listing {kind!r} failed: {body.get('msg')}")
    return body["data"]["result"]["result"]


def alive_nodes(head: RayNode) -> dict[str, dict[str, float]]:
    """Node id → total resources of the cluster's alive nodes, as the head sees them."""
    return {n["node_id"]: n["resources_total"] for n in list_state(head, "nodes")
            if n["state"] == "ALIVE"}


def _wait_joined(node: RayNode, head: RayNode, before: set[str], timeout: float) -> None:
    """Wait until ``head`` lists a new alive node like ``node``; record its id."""
    def joined() -> bool:
        if not (node.temp_dir / "ray_current_cluster").is_file():
            return False
        new = [i for i, res in alive_nodes(head).items() if i not in before
               and res.get("CPU") == node.num_cpus
               and all(res.get(k) == v for k, v in node.resources.items())]
        if new:
            node.node_id = new[0]
        return bool(new)

    _wait(node, joined, timeout, "listed by the head")


def _start(name: str, args: list[str], *, head: RayNode | None, num_cpus: int,
           resources: dict[str, float], temp_dir: Path | None, env: dict[str, str] | None,
           object_store_mb: int, timeout: float, attempts: int) -> RayNode:
    """Launch ``ray start --block args`` until the node is up (fresh ports each attempt).

    A loaded machine can make Ray's own start-up deadlines (30 s for the raylet to register,
    not configurable) fail; another attempt usually succeeds.
    """
    failures = 0
    while True:
        node_dir, owned = _node_temp_dir(temp_dir, name)
        before = set(alive_nodes(head)) if head else set()
        port = free_port()
        address = head.address if head else f"{LOOPBACK}:{port}"
        dashboard_port = free_port()
        url = None if head else f"http://{LOOPBACK}:{dashboard_port}"
        placed = [a.format(port=port, dashboard_port=dashboard_port, client_port=free_port())
                  for a in args]
        marker = secrets.token_hex(8)
        token = head.token if head else secrets.token_hex(32)
        process = _launch([*placed, f"--temp-dir={node_dir}", f"--num-cpus={num_cpus}",
                           "--num-gpus=0", f"--resources={json.dumps(resources)}",
                           f"--object-store-memory={object_store_mb * 2**20}",
                           "--disable-usage-stats", *_node_ports()], node_dir, marker, token,
                          address, env)
        node = RayNode(name=name, temp_dir=node_dir, process=process, marker=marker,
                       address=address, resources=resources, num_cpus=num_cpus,
                       dashboard_url=url, owns_temp_dir=owned, token=token)
        try:
            if url:
                _wait(node, lambda n=node: _http_answers(f"{n.dashboard_url}/api/version"),
                      timeout, "serving its dashboard")
            _wait_joined(node, head or node, before, timeout)
        except ClusterError:
            failures += 1
            if failures >= attempts:
                raise
            continue
        return node


def start_head(*, num_cpus: int = 2, resources: dict[str, float] | None = None,
               temp_dir: Path | None = None, env: dict[str, str] | None = None,
               object_store_mb: int = 512, timeout: float = 180, attempts: int = 3) -> RayNode:
    """Start a head node (GCS, dashboard, raylet) on 127.0.0.1 with free ports.

    Returns once the dashboard answers (``ray job submit`` works then) and the head lists
    itself. ``env`` adds variables to every process of the node (on a real cluster the
    instance profile plays this part for S3 credentials); ``temp_dir`` (at most 40
    characters) defaults to a new folder under /tmp that :func:`stop_node` removes.
    ``object_store_mb`` caps the node's shared-memory object store (Ray's default takes
    30% of RAM per node).
    """
    args = ["--head", f"--node-ip-address={LOOPBACK}", "--port={port}",
            f"--dashboard-host={LOOPBACK}", "--dashboard-port={dashboard_port}",
            "--include-dashboard=true", "--ray-client-server-port={client_port}"]
    return _start("head", args, head=None, num_cpus=num_cpus, resources=dict(resources or {}),
                  temp_dir=temp_dir, env=env, object_store_mb=object_store_mb, timeout=timeout,
                  attempts=attempts)


def add_node(head: RayNode, *, name: str = "worker", num_cpus: int = 2,
             resources: dict[str, float] | None = None, temp_dir: Path | None = None,
             env: dict[str, str] | None = None, object_store_mb: int = 512,
             timeout: float = 180, attempts: int = 3) -> RayNode:
    """Start a node on 127.0.0.1 that joins ``head``; returns once the head lists it.

    Give every node a distinct custom resource (e.g. ``{"node_b": 1}``) to tell it apart
    and to pin work to it.
    """
    args = [f"--address={head.address}", f"--node-ip-address={LOOPBACK}"]
    return _start(name, args, head=head, num_cpus=num_cpus, resources=dict(resources or {}),
                  temp_dir=temp_dir, env=env, object_store_mb=object_store_mb, timeout=timeout,
                  attempts=attempts)


def _signal_all(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def kill_raylet(node: RayNode) -> int:
    """SIGKILL the node's raylet (a node failure as the cluster sees it); returns its pid."""
    pid = node.raylet_pid()
    if pid is None:
        raise ClusterError(f"node {node.name}: no raylet running")
    os.kill(pid, signal.SIGKILL)
    return pid


def stop_node(node: RayNode, *, grace: float = 10) -> None:
    """End every process of ``node`` by pid: SIGTERM, then SIGKILL after ``grace`` s.

    Safe to call twice and on a node that is already (partly) dead.
    """
    deadline = time.monotonic() + grace
    pids = node.pids()
    _signal_all(pids, signal.SIGTERM)
    while pids and time.monotonic() < deadline:
        time.sleep(0.2)
        node.process.poll()
        pids = node.pids()
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        _signal_all(pids, signal.SIGKILL)
        time.sleep(0.2)
        node.process.poll()
        pids = node.pids()
    if pids:
        raise ClusterError(f"node {node.name}: processes {pids} survived SIGKILL")
    with contextlib.suppress(subprocess.TimeoutExpired):
        node.process.wait(timeout=5)
    if node.owns_temp_dir:
        shutil.rmtree(node.temp_dir, ignore_errors=True)


def stop_nodes(nodes: Iterable[RayNode]) -> None:
    """Stop ``nodes`` in order (worker nodes before their head)."""
    for node in nodes:
        stop_node(node)
