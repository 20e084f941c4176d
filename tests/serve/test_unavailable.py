"""A worker deployment that cannot start: the ingress says so, instead of taking jobs that would only wait.

The real app on the shared local Ray cluster, deployed with a model source that does not exist and the hub
offline, so every Reconstruct replica fails in its constructor with `ModelNotFoundError`.
"""

from __future__ import annotations

import time

import httpx
import pytest

from tests.serve.conftest import assert_error
from tests.serveapp import deploy_app

pytestmark = pytest.mark.ray

APP = "broken"
SMALL = {"ray_actor_options": {"num_cpus": 0.25, "num_gpus": 0}}


@pytest.fixture(scope="module")
def broken_service(ray_cluster, tmp_path_factory, rembg_dir):
    from ray import serve

    base = tmp_path_factory.mktemp("broken")
    url = deploy_app(
        APP,
        {
            "data_dir": str(base / "data"),
            "model_source": "no-such-org/no-such-model",
            "model_device": "cpu",
            "rembg_model": "u2netp",
            "rembg_dir": str(rembg_dir),
        },
        deployments=[{"name": n, **SMALL} for n in ("Ingress", "Preprocess", "Export", "Reconstruct")],
        route_prefix=f"/{APP}",
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(base / "hf")},
        wait_s=None,  # it never runs: Reconstruct cannot start
    )
    with httpx.Client(base_url=url, timeout=30) as http:
        yield http
    serve.delete(APP)


def _wait_for_reason(http: httpx.Client, text: str, timeout_s: float = 180.0) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            last = http.get("/readyz")
            if text in last.text:
                return last
        except httpx.HTTPError:
            pass  # the ingress itself may still be starting
        time.sleep(1.0)
    raise AssertionError(f"/readyz never said {text!r}: {last.text if last is not None else None}")


def test_readyz_and_submissions_name_the_deployment_that_cannot_start(broken_service, ring_video):
    response = _wait_for_reason(broken_service, "Reconstruct cannot start")
    error = assert_error(response, 503, "not_ready")
    assert (
        "the TripoSR weights are missing or unreadable on the server (ModelNotFoundError)" in error["message"]
    )
    assert "no-such-model" not in error["message"] and "Traceback" not in error["message"]  # no internals

    with ring_video.open("rb") as f:
        submitted = broken_service.post("/reconstruct", files={"video": ("ring.mp4", f, "video/mp4")})
    error = assert_error(submitted, 503, "not_ready")
    assert error["message"].startswith("the service cannot take jobs: Reconstruct cannot start")
    assert broken_service.get("/jobs").json()["total"] == 0  # nothing was queued to wait for job_timeout_s
