"""The cluster configs, checked offline: Ray's own schema and validation, then our rules.

No cloud call: ``prepare_config`` only merges the AWS defaults file shipped with Ray.
"""

from __future__ import annotations

import json
import re
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
    assert aws["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}


def test_aws_setup_installs_a_pinned_ray_fer_and_ray(aws):
    setup = " ".join(aws["setup_commands"])
    assert re.search(r"ray_fer(==\d+\.\d+\.\d+| @ git\+\S+@v?\d)", setup), setup
    assert f"=={ray.__version__}" in setup


def _kind(docs: list[dict], kind: str) -> dict:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def _containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


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
    images = [c["image"] for g in [spec["headGroupSpec"], *groups.values()]
              for c in _containers(g)]
    assert all(f":{ray.__version__}-" in image for image in images), images
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
    assert yaml.safe_load(job["runtimeEnvYAML"])["pip"] == ["ray_fer==0.1.0"]
