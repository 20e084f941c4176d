"""Deployment files are valid for the tools that read them: Ray's cluster launcher, KubeRay/Serve, the image.

No cloud or Kubernetes access: cluster.yaml goes through the same preparation and JSON-schema validation that
`ray up` runs before it talks to a provider; the RayService's Serve config through Serve's own deploy schema.
"""

from __future__ import annotations

import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import ray
import yaml

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_YAML = ROOT / "cluster.yaml"
RAYSERVICE_YAML = ROOT / "deploy" / "rayservice.yaml"
DOCKERFILE = ROOT / "Dockerfile"


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture(scope="module")
def rayservice() -> dict:
    docs = [d for d in yaml.safe_load_all(RAYSERVICE_YAML.read_text()) if d]
    (service,) = [d for d in docs if d["kind"] == "RayService"]
    return service


def test_cluster_yaml_passes_ray_up_validation(cluster):
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(cluster)  # what `ray up` does first: defaults, merged setup commands
    validate_config(prepared)  # raises jsonschema.ValidationError / ValueError on a bad config


def test_cluster_yaml_check_rejects_an_invalid_node_type():
    """The validator really checks: an unknown key in a node type fails, so the test above means something."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    broken = yaml.safe_load(CLUSTER_YAML.read_text())
    broken["available_node_types"]["gpu_worker"]["num_gpus"] = 1
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))


def test_cluster_has_cpu_head_gpu_and_cpu_worker_types(cluster):
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    workers = {name: t for name, t in types.items() if name != cluster["head_node_type"]}
    assert head["resources"].get("GPU", 0) == 0
    gpu = [t for t in workers.values() if t["resources"].get("GPU", 0) > 0]
    cpu = [t for t in workers.values() if t["resources"].get("GPU", 0) == 0]
    assert len(gpu) == 1 and len(cpu) == 1
    for t in workers.values():
        assert 0 <= t["min_workers"] <= t["max_workers"]
    assert sum(t["min_workers"] for t in workers.values()) <= cluster["max_workers"]


def test_cluster_setup_installs_project_and_caches_weights(cluster):
    setup = " ; ".join(cluster["setup_commands"])
    assert "pip install" in setup and "-e /home/ubuntu/triposr-serve" in setup
    assert "scripts/cache_weights.py" in setup
    mounted = {Path(local) for local in cluster["file_mounts"].values()}
    assert Path(".") in mounted  # the project itself, relative to where `ray up` runs (the repo root)
    assert any("ray start --head" in c for c in cluster["head_start_ray_commands"])
    assert any("ray start --address=$RAY_HEAD_IP" in c for c in cluster["worker_start_ray_commands"])
    # One auth token for every node and the laptop CLI (Ray 2.60 starts clusters with token auth).
    assert cluster["file_mounts"]["/home/ubuntu/.ray/auth_token"] == "~/.ray/auth_token"


def test_ray_version_is_the_same_everywhere(cluster, rayservice):
    """cluster.yaml's pin, the Docker base image and the RayService equal the tested Ray (for job submit)."""
    version = ray.__version__
    pins = re.findall(r"ray\[[^\]]*\]==([\w.]+)", " ".join(cluster["setup_commands"]))
    assert pins == [version]
    assert re.search(rf"^FROM rayproject/ray:{re.escape(version)}-", DOCKERFILE.read_text(), re.M)
    assert rayservice["spec"]["rayClusterConfig"]["rayVersion"] == version


def test_rayservice_serve_config_parses_as_serve_deploy_schema(rayservice):
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        schema = ServeDeploySchema.model_validate(raw)
    (app,) = schema.applications
    assert app.import_path == "serve_app:app"
    assert {d.name for d in app.deployments} == {"Ingress", "Preprocess", "Reconstruct", "Export"}


def test_rayservice_carries_serve_config_yaml_unchanged(rayservice):
    ours = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    assert ours == yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    check = subprocess.run([sys.executable, str(ROOT / "scripts" / "sync_rayservice.py"), "--check"])
    assert check.returncode == 0


def test_rayservice_groups_mirror_cluster_yaml(rayservice, cluster):
    spec = rayservice["spec"]["rayClusterConfig"]
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    gpu_limits = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert gpu_limits["nvidia.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in groups["cpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    for g in groups.values():
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
    # The head pod (the Ingress's) mounts the data folder the Serve config's data_dir points at; worker pods
    # need no shared file system and mount nothing there.
    data_dir = yaml.safe_load(rayservice["spec"]["serveConfigV2"])["applications"][0]["args"]["data_dir"]
    head_mounts = spec["headGroupSpec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert any(m["mountPath"] == data_dir for m in head_mounts)
    for pod in spec["workerGroupSpecs"]:
        mounts = pod["template"]["spec"]["containers"][0].get("volumeMounts", [])
        assert not any(m["mountPath"] == data_dir for m in mounts)


def test_dockerfile_copies_every_package_and_caches_weights():
    text = DOCKERFILE.read_text()
    for package in ("triposr", "pipeline", "serve_app", "deployments", "scripts", "serve_config.yaml"):
        assert re.search(rf"^COPY .*\b{re.escape(package)}\b", text, re.M), package
    assert "pip install --no-cache-dir -e ." in text
    assert "scripts/cache_weights.py" in text
