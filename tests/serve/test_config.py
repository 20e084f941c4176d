"""serve_config.yaml is a valid, current Serve deploy config that matches the app (no Ray cluster needed)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import yaml

from serve_app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "serve_config.yaml"

# Keys Serve renamed or dropped; a config still using them would be silently misread or warn.
DEPRECATED_KEYS = {
    "max_concurrent_queries",  # -> max_ongoing_requests
    "target_num_ongoing_requests_per_replica",  # -> target_ongoing_requests
    "target_num_ongoing_requests",
    "metrics_interval_s",
    "smoothing_factor",  # -> upscale_/downscale_smoothing_factor
    "location",  # http_options.location -> proxy_location
    "num_replicas_auto",
}


def _walk_keys(node, path=()):
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*path, key)
            yield from _walk_keys(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk_keys(value, (*path, str(i)))


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def test_config_parses_with_serve_schema_without_warnings(raw):
    from ray.serve.schema import ServeDeploySchema

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        schema = ServeDeploySchema.model_validate(raw)
    assert schema.applications[0].import_path == "serve_app:app"


def test_config_uses_no_deprecated_keys(raw):
    used = [".".join(p) for p in _walk_keys(raw) if p[-1] in DEPRECATED_KEYS]
    assert used == []


def test_config_names_exactly_the_app_deployments(raw):
    names = {d["name"] for d in raw["applications"][0]["deployments"]}
    assert names == {"Ingress", "Preprocess", "Reconstruct", "Export"}


def test_reconstruct_can_form_a_full_batch(raw):
    (rec,) = [d for d in raw["applications"][0]["deployments"] if d["name"] == "Reconstruct"]
    assert rec["max_ongoing_requests"] >= rec["user_config"]["max_batch_size"]
    assert rec["autoscaling_config"]["target_ongoing_requests"] <= rec["max_ongoing_requests"]
    assert 0 < rec["ray_actor_options"]["num_gpus"] <= 1


def test_config_args_are_valid_builder_args_and_settings(raw):
    from serve_app.application import AppArgs

    args = AppArgs.model_validate(raw["applications"][0]["args"])
    settings = Settings().merged(args.model_dump(exclude_none=True))
    assert settings.max_running_jobs >= 1


def test_no_deploy_config_arms_the_test_fault_hook():
    """The poison-frame hook (deployments/faults.py) needs TRIPOSR_TEST_FAULTS; no deploy config sets it."""
    root = Path(__file__).resolve().parents[2]
    for path in (root / "serve_config.yaml", root / "deploy" / "rayservice.yaml", root / "cluster.yaml",
                 root / "Dockerfile"):  # fmt: skip
        assert "TRIPOSR_TEST_FAULTS" not in path.read_text(), path
