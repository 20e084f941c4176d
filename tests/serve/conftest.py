"""Fixtures for the service tests: generated media, the real tiny model + u2netp, settings, a client.

Nothing here is mocked: `LocalWorkers` runs the real pipeline stages in-process for the Starlette tests;
the Ray tests (test_e2e.py, tests/hostile) share one cluster per session (`ray_cluster`, tests/conftest.py).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from serve_app.settings import Settings
from tests.conftest import free_port  # noqa: F401  (tests import it from here)


def assert_error(response, status: int, code: str | None = None) -> dict:
    """Every error answers the one envelope {"error": {"code", "message"}} with the given status."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


TERMINAL = {"succeeded", "failed", "cancelled"}


def wait_terminal(client, job_id: str, timeout_s: float = 120.0, poll_s: float = 0.1) -> dict:
    """Poll the status route (TestClient or httpx.Client) until the job reaches a terminal state."""
    deadline = time.monotonic() + timeout_s
    doc: dict = {}
    while time.monotonic() < deadline:
        doc = client.get(f"/reconstruct/status/{job_id}").json()
        if doc["state"] in TERMINAL:
            return doc
        time.sleep(poll_s)
    raise AssertionError(f"job {job_id} did not finish in {timeout_s}s: {doc}")


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def ring_video(media_dir) -> Path:
    """A 2 s, 160x120 ring video: small enough to keep end-to-end tests fast."""
    from tests.media import make_ring_video

    return make_ring_video(media_dir / "ring.mp4", width=160, height=120, fps=12, duration_s=2.0).path


@pytest.fixture(scope="session")
def corrupt_video(ring_video, media_dir) -> Path:
    """An mp4 header followed by garbage: detected as video, fails to decode."""
    data = ring_video.read_bytes()
    path = media_dir / "corrupt.mp4"
    path.write_bytes(data[:48] + bytes(range(256)) * 40)
    return path


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    from triposr import load_model

    return load_model(str(tiny_model_dir), device="cpu")


@pytest.fixture(scope="session")
def remover(rembg_dir):
    from pipeline.matting import BackgroundRemover

    return BackgroundRemover("u2netp", rembg_dir, download=False)


@pytest.fixture
def settings(tmp_path, tiny_model_dir, rembg_dir) -> Settings:
    inputs = tmp_path / "inputs"
    outputs = tmp_path / "outputs"
    inputs.mkdir()
    outputs.mkdir()
    return Settings().merged(
        {
            "data_dir": str(tmp_path / "data"),
            "model_source": str(tiny_model_dir),
            "model_device": "cpu",
            "rembg_model": "u2netp",
            "rembg_dir": str(rembg_dir),
            "input_roots": [str(inputs)],
            "output_roots": [str(outputs)],
            "upload_limit_bytes": 2_000_000,
            "default_mc_resolution": 32,
            "default_num_frames": 2,
        }
    )


@pytest.fixture
def make_client(tiny_model, remover):
    """Build a TestClient over the real in-process pipeline for given settings (lifespan runs)."""
    from starlette.testclient import TestClient

    from serve_app.ingress import build_app
    from serve_app.orchestrator import LocalWorkers

    clients = []

    def make(settings: Settings) -> TestClient:
        client = TestClient(
            build_app(settings, LocalWorkers(tiny_model, remover)), raise_server_exceptions=False
        )
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client, settings):
    return make_client(settings)
