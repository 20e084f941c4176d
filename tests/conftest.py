"""Shared fixtures. Paths to the tiny TripoSR fixture and the provisioned rembg model live here."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
TINY_MODEL_DIR = FIXTURES / "tiny"


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """Upstream-format folder (config.yaml + model.ckpt + vit/config.json) of the tiny parity model."""
    return TINY_MODEL_DIR


@pytest.fixture(scope="session")
def rembg_dir() -> Path:
    """Folder holding the real rembg `u2netp.onnx`, provisioned once (see scripts/fetch_test_models.py)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from fetch_test_models import DEFAULT_DEST, fetch_u2netp
    finally:
        sys.path.pop(0)
    return fetch_u2netp(DEFAULT_DEST).parent


@pytest.fixture(scope="session")
def ring_video(tmp_path_factory):
    """A 4 s, 24 fps, 320x240 H.264 mp4 of the turning ring (tests/media.py), generated once per session.

    Returns tests.media.RingVideo (path, size, fps, frame count, ring bbox); treat the file as read-only.
    """
    from tests.media import make_ring_video

    return make_ring_video(tmp_path_factory.mktemp("media") / "ring.mp4")


_RAY_AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN")


def pytest_configure(config):
    """Every Ray the tests start (ray.init, `ray start`, `triposr-serve start` subprocesses) uses a token made
    here: nothing is read from or written to ~/.ray, so the suite runs the same on a machine that never ran
    Ray. Set before collection: Ray reads the auth mode once, when a test module first imports it."""
    import os
    import secrets
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="ray-auth-"))
    path = folder / "auth_token"
    path.write_text(secrets.token_hex(32))
    path.chmod(0o600)
    config._saved_ray_auth = {k: os.environ.get(k) for k in _RAY_AUTH_VARS}
    config._ray_auth_dir = folder
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(path))
    os.environ.pop("RAY_AUTH_TOKEN", None)


def pytest_unconfigure(config):
    import os
    import shutil

    for key, value in getattr(config, "_saved_ray_auth", {}).items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    shutil.rmtree(getattr(config, "_ray_auth_dir", ""), ignore_errors=True)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_cluster():
    """One small local Ray cluster for the session: a logical GPU so fractional-GPU replicas schedule on CPU.

    Shared by tests/serve and tests/hostile; yields the Prometheus metrics port. Ray's footprint is bounded:
    6 logical CPUs (for the 5 replicas; on a 2-core machine they mostly wait on each other), a 256 MB object
    store, no dashboard UI, metrics reported every second.
    """
    import os

    import ray
    from ray import serve

    from serve_app.exposure import PROXY_CALLBACK, PROXY_CALLBACK_ENV

    # As `triposr-serve start` does: the proxy Ray starts drops the headers that change Serve's limits.
    os.environ.setdefault(PROXY_CALLBACK_ENV, PROXY_CALLBACK)
    metrics_port = free_port()
    ray.init(
        num_cpus=6,
        num_gpus=1,
        object_store_memory=256 * 1024**2,
        include_dashboard=False,
        _metrics_export_port=metrics_port,
        _system_config={"metrics_report_interval_ms": 1000},
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
        log_to_driver=False,
    )
    serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
    try:
        yield metrics_port
    finally:
        serve.shutdown()
        ray.shutdown()
