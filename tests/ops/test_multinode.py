"""The service on a three-node local Ray cluster whose worker nodes cannot see the ingress's disk.

Head: Ingress (and the data dir). Node A: Preprocess + Export. Node B: Reconstruct on a logical GPU. Each
worker node runs in its own mount namespace with a tmpfs over /tmp (where the data dir and the service's temp
files live), so a worker touching the ingress's files would fail loudly (tests/ops/servecluster.py).
"""

from __future__ import annotations

import time

import httpx
import pytest
import trimesh

from tests.media import make_ring_video, make_zip, png_bytes, ring_image
from tests.ops.raycluster import can_hide_paths
from tests.ops.servecluster import cluster_service, cpu_seconds, sees
from tests.serve.conftest import TERMINAL
from tests.serve.conftest import wait_terminal as _wait_terminal

pytestmark = [
    pytest.mark.ray,
    pytest.mark.skipif(not can_hide_paths(), reason="needs root for unshare --mount + tmpfs"),
]


def wait_terminal(client: httpx.Client, job_id: str, timeout_s: float = 240.0) -> dict:
    return _wait_terminal(client, job_id, timeout_s=timeout_s, poll_s=0.3)


@pytest.fixture(scope="module")
def cluster(tiny_model_dir, rembg_dir):
    args = {
        "model_source": str(tiny_model_dir), "model_device": "cpu", "rembg_model": "u2netp",
        "rembg_dir": str(rembg_dir), "default_mc_resolution": 32, "default_num_frames": 2,
        "default_merge": "best", "upload_limit_bytes": 4_000_000,
    }  # fmt: skip
    with cluster_service(args) as service:
        yield service


@pytest.mark.timeout(900)
def test_video_photos_and_zip_jobs_succeed_on_workers_that_cannot_see_the_data_dir(cluster, tmp_path):
    video = make_ring_video(tmp_path / "ring.mp4", width=160, height=120, fps=12, duration_s=2.0).path
    photos = [png_bytes(ring_image(160, 120, angle=a)) for a in (0.0, 1.2, 2.4)]
    archive = make_zip(tmp_path / "photos.zip", {f"p{i}.png": p for i, p in enumerate(photos)})
    uploads = {
        "video": [("video", ("ring.mp4", video.read_bytes(), "video/mp4"))],
        "images": [("images", (f"p{i}.png", p, "image/png")) for i, p in enumerate(photos)],
        "archive": [("archive", ("photos.zip", archive.read_bytes(), "application/zip"))],
    }
    with httpx.Client(base_url=cluster.url, timeout=60) as client:
        ids = {}
        for kind, files in uploads.items():
            response = client.post("/reconstruct", files=files)
            assert response.status_code == 202, response.text
            ids[kind] = response.json()["job_id"]
        docs = {kind: wait_terminal(client, job_id) for kind, job_id in ids.items()}
        assert {k: d["state"] for k, d in docs.items()} == dict.fromkeys(uploads, "succeeded"), docs
        for job_id in ids.values():
            glb = client.get(f"/reconstruct/result/{job_id}")
            assert glb.status_code == 200
            scene = trimesh.load(trimesh.util.wrap_as_stream(glb.content), file_type="glb")
            assert sum(len(g.faces) for g in scene.geometry.values()) > 0

    # Every worker replica ran in a namespace without the data dir; the ingress sees it and wrote the results.
    ingress = cluster.replica_pids("Ingress")
    workers = {name: cluster.replica_pids(name) for name in ("Preprocess", "Reconstruct", "Export")}
    assert ingress and all(workers.values()), workers
    assert all(sees(pid, cluster.data_dir) for pid in ingress)
    for name, pids in workers.items():
        for pid in pids:
            assert not sees(pid, cluster.data_dir), (name, pid)
            assert not sees(pid, cluster.base / "inputs"), (name, pid)
    for job_id in ids.values():
        assert (cluster.data_dir / "jobs" / job_id / "result.glb").is_file()


@pytest.mark.timeout(600)
def test_cancelling_a_running_job_frees_the_reconstruct_replica_within_5_s(cluster, tmp_path):
    """8 frames at mc_resolution 320 keep the tiny model busy ~20 CPU s; a DELETE stops it between frames."""
    video = make_ring_video(tmp_path / "ring8.mp4", width=160, height=120, fps=12, duration_s=4.0).path
    (pid,) = cluster.replica_pids("Reconstruct")
    with httpx.Client(base_url=cluster.url, timeout=60) as client:
        response = client.post(
            "/reconstruct", files={"video": ("ring8.mp4", video.read_bytes(), "video/mp4")},
            data={"num_frames": "8", "mc_resolution": "320", "remove_background": "false"},
        )  # fmt: skip
        job_id = response.json()["job_id"]
        deadline = time.monotonic() + 180
        while (doc := client.get(f"/reconstruct/status/{job_id}").json())["state"] != "reconstructing":
            assert doc["state"] not in TERMINAL and time.monotonic() < deadline, doc
            time.sleep(0.1)
        busy_from = cpu_seconds(pid)
        while cpu_seconds(pid) - busy_from < 1.0:  # the forward pass and the first meshes are under way
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert client.delete(f"/jobs/{job_id}").status_code in (200, 202)
        cancelled_at = time.monotonic()
        assert wait_terminal(client, job_id)["state"] == "cancelled"
        time.sleep(max(0.0, cancelled_at + 5.0 - time.monotonic()))
        idle_from = cpu_seconds(pid)
        time.sleep(2.0)
        used = cpu_seconds(pid) - idle_from
        done = client.get(f"/reconstruct/status/{job_id}").json()
    assert cluster.replica_pids("Reconstruct") == [pid]  # the same replica, not a restart
    assert used < 0.3, (
        f"replica still used {used:.2f} CPU s in 2 s, 5 s after the cancel ({done['progress']})"
    )
