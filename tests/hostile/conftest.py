"""A real local Serve app (tiny TripoSR, u2netp) for the hostile-client tests, shared by the package.

Deployed like tests/serve/test_e2e.py (tests/serveapp.py) with a token, small limits and an
output root for the planted `.part` symlink test; `replica_pids()` (tests/hostile/replicas.py) shows that no
replica restarted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.hostile.replicas import replica_pids  # noqa: F401  (re-exported for the tests)
from tests.serveapp import deploy_app

APP = "triposr"
TOKEN = "hostile-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Live:
    url: str
    client: httpx.Client  # carries the token
    base: Path  # inputs/, outputs/, data/ live here
    args: dict


def deploy(args: dict) -> str:
    return deploy_app(APP, args, deployments=[{"name": "Ingress", "max_queued_requests": 50}])


@pytest.fixture(scope="package")
def live(ray_cluster, tmp_path_factory, tiny_model_dir, rembg_dir):
    base = tmp_path_factory.mktemp("hostile")
    for name in ("inputs", "outputs"):
        (base / name).mkdir()
    args = {
        "data_dir": str(base / "data"),
        "model_source": str(tiny_model_dir),
        "model_device": "cpu",
        "rembg_model": "u2netp",
        "rembg_dir": str(rembg_dir),
        "input_roots": [str(base / "inputs")],
        "output_roots": [str(base / "outputs")],
        "upload_limit_bytes": 4_000_000,
        "default_mc_resolution": 32,
        "default_num_frames": 2,
        "api_token": TOKEN,
        "orphan_upload_after_s": 5.0,
        "sweep_interval_s": 1.0,
    }
    url = deploy(args)
    with httpx.Client(base_url=url, timeout=60, headers=AUTH) as client:
        yield Live(url, client, base, args)
    from ray import serve

    serve.delete(APP)


@pytest.fixture(scope="package")
def hostile_media(tmp_path_factory):
    from tests.hostile.media import (
        make_huge_header_avi,
        make_many_member_zip,
        make_zip64_claiming,
        make_zip_bomb,
    )

    d = tmp_path_factory.mktemp("hostile-media")
    return {
        "huge_avi": make_huge_header_avi(d / "huge.avi", 16000, 16000),
        "huger_avi": make_huge_header_avi(d / "huger.avi", 100_000, 100_000),
        "million_zip": make_zip64_claiming(d / "million.zip", 1_000_000),
        "many_zip": make_many_member_zip(d / "many.zip", 20_000),
        "bomb_zip": make_zip_bomb(d / "bomb.zip"),
    }


@pytest.fixture(scope="package")
def good_video(tmp_path_factory) -> Path:
    """The good job's input: a 2 s, 160x120 ring video (as in tests/serve)."""
    from tests.media import make_ring_video

    path = tmp_path_factory.mktemp("hostile-good") / "ring.mp4"
    return make_ring_video(path, width=160, height=120, fps=12, duration_s=2.0).path
