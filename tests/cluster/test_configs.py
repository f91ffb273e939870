"""The cluster configs, checked offline: Ray's own schema and validation, then our rules,
and that what each installs exists once the checkout is built as cluster/README.md says.

No cloud call: ``prepare_config`` only merges the AWS defaults file shipped with Ray.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"
RAY_SCHEMA = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
#: Things that would be credentials if they appeared in a config.
SECRET_PATTERNS = [r"AKIA[0-9A-Z]{16}", r"aws_access_key_id", r"aws_secret_access_key",
                   r"AWS_SECRET_ACCESS_KEY", r"AWS_ACCESS_KEY_ID", r"RAY_AUTH_TOKEN\s*[:=]",
                   r"BEGIN [A-Z ]*PRIVATE KEY", r"ssh_private_key"]


@pytest.fixture(scope="module")
def aws() -> dict:
    return yaml.safe_load((CLUSTER / "aws.yaml").read_text())


@pytest.fixture(scope="module")
def kuberay() -> list[dict]:
    return [d for d in yaml.safe_load_all((CLUSTER / "kuberay.yaml").read_text()) if d]


def test_aws_config_matches_the_schema_shipped_with_ray(aws):
    jsonschema.validate(aws, json.loads(RAY_SCHEMA.read_text()))


def test_aws_config_passes_rays_own_validation_after_defaults(aws):
    prepared = prepare_config(aws)
    validate_config(prepared)
    assert prepared["available_node_types"]["gpu_worker"]["max_workers"] == 4


def test_aws_head_runs_no_work_and_workers_autoscale_from_zero(aws):
    types = aws["available_node_types"]
    assert types[aws["head_node_type"]]["resources"] == {"CPU": 0}
    gpu, cpu = types["gpu_worker"], types["cpu_worker"]
    assert gpu["min_workers"] == 0 < gpu["max_workers"] <= aws["max_workers"]
    assert cpu["min_workers"] == 0 < cpu["max_workers"]
    assert gpu["node_config"]["InstanceType"].startswith(("g5.", "p4d.", "p5."))
    assert gpu["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert 0 < aws["idle_timeout_minutes"] <= 30
    assert aws["provider"]["cache_stopped_nodes"] is False


def test_aws_nodes_get_s3_access_from_an_instance_profile_not_keys(aws):
    text = (CLUSTER / "aws.yaml").read_text()
    for pattern in SECRET_PATTERNS:
        assert not re.search(pattern, text), pattern
    for name, node in aws["available_node_types"].items():
        assert node["node_config"]["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::"), name


def test_aws_ports_are_closed_to_the_world(aws):
    text = (CLUSTER / "aws.yaml").read_text()
    assert "0.0.0.0/0" not in text
    # Without SecurityGroupIds, Ray creates a group that opens SSH to 0.0.0.0/0.
    for name, node in aws["available_node_types"].items():
        assert node["node_config"]["SecurityGroupIds"], name
    head_start = " ".join(aws["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    for commands in (aws["head_start_ray_commands"], aws["worker_start_ray_commands"]):
        assert "RAY_AUTH_MODE=token" in " ".join(commands)
    assert aws["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


def _wheel_mount(aws: dict) -> tuple[str, str]:
    """(remote, local) of the one ray_fer wheel that aws.yaml mounts."""
    (mount,) = [(remote, local) for remote, local in aws["file_mounts"].items()
                if remote.endswith(".whl")]
    return mount


def test_aws_nodes_install_the_wheel_of_the_checkout_and_the_pinned_ray(aws):
    remote, local = _wheel_mount(prepare_config(aws))
    assert local.startswith("dist/ray_fer-") and Path(local).name == Path(remote).name
    setup = aws["setup_commands"]
    assert remote in setup[0] and f'"ray[default,tune,train,data]=={ray.__version__}"' in setup[0]
    # A wheel rebuilt from changed code keeps its version: it must replace the installed one.
    assert setup[1].split() == ["python", "-m", "pip", "install", "--quiet", "--no-deps",
                                "--force-reinstall", remote]
    assert "ray_fer==" not in " ".join(setup)  # ray_fer is on no package index


def _kind(docs: list[dict], kind: str) -> dict:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def _containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


def _dockerfile() -> tuple[list[str], list[tuple[str, str]]]:
    """cluster/Dockerfile's ARG defaults and FROM lines, and its COPY (source, destination)
    pairs."""
    lines = (CLUSTER / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
    words = [line.split() for line in lines if line.strip() and not line.startswith("#")]
    bases = [w[1] for w in words if w[0] in ("ARG", "FROM")]
    copies = [(w[1], w[2]) for w in words if w[0] == "COPY"]
    return bases, copies


def test_kuberay_pods_run_the_image_of_the_checkout_on_the_pinned_ray(kuberay):
    spec = _kind(kuberay, "RayCluster")["spec"]
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    head = _containers(spec["headGroupSpec"])[0]["image"]
    gpu, cpu = (_containers(groups[name])[0]["image"] for name in ("gpu", "cpu"))
    assert "/ray-fer:" in head and cpu == head and gpu == head + "-gpu"
    assert not head.endswith(":latest")
    bases, _ = _dockerfile()
    assert bases[0] == f"BASE=rayproject/ray:{ray.__version__}-py311"
    assert f"BASE=rayproject/ray:{ray.__version__}-py311-gpu" in (CLUSTER / "Dockerfile"
                                                                   ).read_text()
    job = _kind(kuberay, "RayJob")["spec"]
    assert "runtimeEnvYAML" not in job  # no pip install of ray_fer, which no index has


def test_kuberay_cluster_has_what_the_autoscaler_needs(kuberay):
    spec = _kind(kuberay, "RayCluster")["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["rayVersion"] == ray.__version__
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"gpu", "cpu"}
    for group in groups.values():
        assert group["minReplicas"] == 0 < group["maxReplicas"]
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert isinstance(group["rayStartParams"], dict)
    gpu = _containers(groups["gpu"])[0]["resources"]
    assert gpu["limits"]["nvidia.com/gpu"] == gpu["requests"]["nvidia.com/gpu"] == "1"
    assert spec["authOptions"]["mode"] == "token"


def test_kuberay_pods_use_an_irsa_service_account_not_keys(kuberay):
    account = _kind(kuberay, "ServiceAccount")
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith(
        "arn:aws:iam::")
    spec = _kind(kuberay, "RayCluster")["spec"]
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        assert group["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]
        for container in _containers(group):
            names = {e["name"] for e in container.get("env", [])}
            assert not names & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    text = (CLUSTER / "kuberay.yaml").read_text()
    for pattern in SECRET_PATTERNS:
        assert not re.search(pattern, text), pattern


def test_kuberay_job_runs_the_search_on_the_cluster(kuberay):
    job = _kind(kuberay, "RayJob")["spec"]
    assert job["clusterSelector"] == {"ray.io/cluster": _kind(kuberay, "RayCluster")[
        "metadata"]["name"]}
    assert job["entrypoint"].startswith("python -m ray_fer.tune caf")
    assert "--storage s3://" in job["entrypoint"]


def _offline() -> dict[str, str]:
    """This environment, with pip kept off the network (no index is reachable here)."""
    return dict(os.environ) | {"PIP_NO_INDEX": "1"}


def _build_command() -> list[str]:
    """The wheel build command of cluster/README.md (the line after <!-- build:wheel -->)."""
    lines = (CLUSTER / "README.md").read_text().splitlines()
    start = lines.index("<!-- build:wheel -->")
    assert lines[start + 1] == "```bash"
    return shlex.split(lines[start + 2])


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A copy of the checkout (its files that git tracks or would track) after the
    README's build step."""
    repo = CLUSTER.parent
    listed = subprocess.run(["git", "-C", str(repo), "ls-files", "-co", "--exclude-standard"],
                            capture_output=True, text=True, check=True).stdout.splitlines()
    copy = tmp_path_factory.mktemp("checkout")
    for name in listed:
        source, target = repo / name, copy / name
        if source.is_symlink():  # ray_fer/search_spaces -> ../search_spaces
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(source.readlink())
        elif source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    command = _build_command()
    assert command[:3] == ["python", "-m", "pip"]
    # Offline here: the venv's setuptools builds it instead of one pip would download.
    done = subprocess.run([sys.executable, *command[1:], "--no-build-isolation"], cwd=copy,
                          capture_output=True, text=True, timeout=300, check=False,
                          env=_offline())
    assert done.returncode == 0, done.stderr[-2000:]
    return copy


@pytest.mark.slow
def test_the_wheel_aws_yaml_installs_exists_after_the_build_step(aws, built):
    _, local = _wheel_mount(prepare_config(aws))
    wheel = built / local
    assert wheel.is_file(), sorted(p.name for p in (built / "dist").iterdir())
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    modules = {p.relative_to(built).as_posix() for p in (built / "ray_fer").rglob("*.py")}
    assert modules <= names, sorted(modules - names)[:5]  # the whole package, as checked out
    spaces = {f"ray_fer/search_spaces/{p.name}" for p in (built / "search_spaces").glob("*.yaml")}
    assert spaces and spaces <= names, sorted(spaces - names)  # and every search space


@pytest.mark.slow
def test_an_installed_wheel_finds_its_search_spaces_from_any_folder(aws, built, tmp_path):
    """Not editable, run outside the checkout: ``python -m ray_fer.tune caf`` must find
    ``caf.yaml`` in what pip installed."""
    _, local = _wheel_mount(prepare_config(aws))
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index",
                           "--target", str(site), str(built / local)],
                          capture_output=True, text=True, timeout=300, env=_offline())
    assert done.returncode == 0, done.stderr[-2000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    found = subprocess.run(
        [sys.executable, "-c", "import ray_fer, ray_fer.tune as t; "
                               "print(ray_fer.__file__); print(t.default_space_path('caf'))"],
        cwd=elsewhere, capture_output=True, text=True, timeout=300,
        env=_offline() | {"PYTHONPATH": str(site)})
    assert found.returncode == 0, found.stderr[-2000:]
    package, space = map(Path, found.stdout.split())
    assert package.is_relative_to(site) and space == site / "ray_fer/search_spaces/caf.yaml"
    assert space.read_text() == (CLUSTER.parent / "search_spaces" / "caf.yaml").read_text()


@pytest.mark.slow
def test_what_the_kuberay_image_copies_exists_after_the_build_step(kuberay, built):
    _, copies = _dockerfile()
    assert [source for source, _ in copies] == ["dist/ray_fer-0.1.0-py3-none-any.whl"]
    wheel = built / copies[0][0]
    assert wheel.is_file()
    # The job names its method; the wheel the image installs ships its search space.
    entrypoint = shlex.split(_kind(kuberay, "RayJob")["spec"]["entrypoint"])
    assert "--space" not in entrypoint
    with zipfile.ZipFile(wheel) as archive:
        assert f"ray_fer/search_spaces/{entrypoint[3]}.yaml" in archive.namelist()


def test_cluster_readme_keeps_submitting_the_checkout_as_working_dir():
    readme = (CLUSTER / "README.md").read_text()
    assert "ray job submit --working-dir . -- \\" in readme
