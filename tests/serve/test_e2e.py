"""The whole service on a real local Ray cluster over real HTTP: tiny TripoSR, rembg u2netp, generated videos.

One app is deployed for the module; tests run in file order and the last one restarts the app.
"""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import httpx
import pytest
import trimesh

from serve_app.settings import Settings
from tests.serve.conftest import assert_error
from tests.serve.conftest import wait_terminal as _wait_terminal
from tests.serveapp import deploy_app

pytestmark = pytest.mark.ray

APP = "triposr"
# Deployed the way `serve deploy serve_config.yaml` does (import path, typed args, per-deployment overrides):
# only then can a user_config change be applied live, without restarting the replica. A long batch wait
# (6 s; a full batch of 8 frames goes at once) lets frames of jobs preprocessed in parallel meet in one
# forward pass even on a loaded 2-core CI machine.
DEPLOYMENTS = [
    {"name": "Reconstruct", "user_config": {"max_batch_size": 8, "batch_wait_timeout_s": 6.0}},
    {"name": "Preprocess", "num_replicas": 2},
]


def deploy(args: dict, deployments: list[dict] = DEPLOYMENTS) -> str:
    return deploy_app(APP, args, deployments=deployments)


@pytest.fixture(scope="module")
def service(ray_cluster, tmp_path_factory, tiny_model_dir, rembg_dir):
    base = tmp_path_factory.mktemp("e2e")
    (base / "inputs").mkdir()
    args = {
        "data_dir": str(base / "data"),
        "model_source": str(tiny_model_dir),
        "model_device": "cpu",
        "rembg_model": "u2netp",
        "rembg_dir": str(rembg_dir),
        "input_roots": [str(base / "inputs")],
        "upload_limit_bytes": 2_000_000,
        "default_mc_resolution": 32,
        "default_num_frames": 2,
        "orphan_after_s": 5.0,
    }
    settings = Settings().merged(args)
    url = deploy(args)
    with httpx.Client(base_url=url, timeout=60) as client:
        yield client, settings, args
    from ray import serve

    serve.delete(APP)


def submit(client: httpx.Client, video: Path, **fields) -> str:
    with video.open("rb") as f:
        response = client.post("/reconstruct", files={"video": (video.name, f, "video/mp4")}, data=fields)
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


def wait_terminal(client: httpx.Client, job_id: str) -> dict:
    return _wait_terminal(client, job_id, timeout_s=180.0, poll_s=0.2)


def test_video_job_over_http_succeeds_with_stages_progress_and_sse(service, ring_video):
    client, *_ = service
    job_id = submit(client, ring_video)
    states, progress = [], []
    with client.stream("GET", f"/reconstruct/events/{job_id}") as events:
        assert events.headers["content-type"].startswith("text/event-stream")
        for line in events.iter_lines():
            if line.startswith("data: "):
                event = json.loads(line[6:])
                if not states or states[-1] != event["state"]:
                    states.append(event["state"])
                progress.append(event["progress"])
    assert states == ["queued", "preprocessing", "reconstructing", "merging", "succeeded"]
    assert progress == sorted(progress) and progress[-1] == 1.0

    doc = client.get(f"/reconstruct/status/{job_id}").json()
    assert doc["state"] == "succeeded" and doc["stage"] == "merge" and doc["progress"] == 1.0
    assert doc["frames"]["selected"] == 2
    assert all({"index", "chosen", "reason", "sharpness"} <= set(r) for r in doc["frames"]["report"])
    assert {"queue_wait", "preprocess", "reconstruct", "merge"} <= set(doc["timings"])
    assert doc["report"]["fusion"]

    glb = client.get(doc["result_url"])
    assert glb.status_code == 200 and glb.headers["content-type"] == "model/gltf-binary"
    scene = trimesh.load(io.BytesIO(glb.content), file_type="glb")
    assert sum(len(g.faces) for g in scene.geometry.values()) > 0


def test_concurrent_jobs_all_finish_and_share_gpu_batches(service, ring_video):
    from ray import serve

    client, settings, *_ = service
    before = serve.get_deployment_handle("Reconstruct", app_name=APP).batch_stats.remote().result()
    ids: list[str] = []
    threads = [threading.Thread(target=lambda: ids.append(submit(client, ring_video))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    docs = [wait_terminal(client, job_id) for job_id in ids]
    assert [d["state"] for d in docs] == ["succeeded"] * 4, [d["error"] for d in docs]
    for doc in docs:  # only the ingress wrote the job folder: input, frame previews, result and its report
        assert doc["frames"]["selected"] == 2
        files = sorted(p.name for p in (settings.jobs_dir / doc["job_id"]).iterdir())
        assert files == ["frames", "input", "report.json", "result.glb"], files
    after = serve.get_deployment_handle("Reconstruct", app_name=APP).batch_stats.remote().result()
    assert after["frames"] - before["frames"] == 8
    assert after["multi_job_batches"] > before["multi_job_batches"], after["recent"]
    ours = set(ids)
    assert any(len(ours & set(b["jobs"])) > 1 for b in after["recent"]), after["recent"]


def test_cancel_a_running_job(service, ring_video):
    client, *_ = service
    job_id = submit(client, ring_video, num_frames="6", mc_resolution="64")
    deadline = time.monotonic() + 60
    while client.get(f"/reconstruct/status/{job_id}").json()["state"] == "queued":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    response = client.delete(f"/jobs/{job_id}")
    assert response.status_code in (200, 202), response.text
    assert wait_terminal(client, job_id)["state"] == "cancelled"
    assert_error(client.get(f"/reconstruct/result/{job_id}"), 409, "job_failed")


def test_bad_input_over_http_is_json_4xx_and_service_keeps_serving(service, ring_video, corrupt_video):
    client, *_ = service
    good = submit(client, ring_video)  # runs while the bad requests arrive

    def post(**kwargs):
        return client.post("/reconstruct", **kwargs)

    multipart = {"content-type": "multipart/form-data"}
    cases = [
        (post(files={"num_frames": (None, "2")}), 400, "missing_input"),
        (post(files={"video": ("a.mp4", b"")}), 400, "empty_file"),
        (post(files={"video": ("a.mp4", b"plain text, not a video" * 8)}), 415, "unsupported_media"),
        (post(files={"video": ("c.mp4", corrupt_video.read_bytes())}), 422, "video_decode_error"),
        (post(files={"video": ("b.mp4", b"\0" * 2_100_000)}), 413, "payload_too_large"),
        (client.get("/reconstruct/status/AAAAAAAAAAAAAAAAAAAAAA"), 404, "job_not_found"),
        (post(files={"video": ("a.mp4", b"x")}, data={"num_frames": "99"}), 422, "invalid_parameter"),
        (post(files={"video": ("a.mp4", b"x")}, data={"mc_resolution": "hi"}), 422, "invalid_parameter"),
        (post(json={"source": "/etc/passwd"}), 403, "forbidden_path"),
        (post(json={"source": "../inputs/x.mp4"}), 403, "forbidden_path"),
        (post(content=b"--x\r\nbroken", headers=multipart), 400, "malformed_multipart"),
        (post(content=b"{nope", headers={"content-type": "application/json"}), 400, "malformed_json"),
    ]
    for response, status, code in cases:
        assert_error(response, status, code)
    assert wait_terminal(client, good)["state"] == "succeeded"
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200


def test_compare_two_jobs_over_http_gives_a_heatmap_glb_with_its_report(service, ring_video):
    import pygltflib

    client, *_ = service
    first, second = submit(client, ring_video), submit(client, ring_video)
    assert [wait_terminal(client, j)["state"] for j in (first, second)] == ["succeeded"] * 2

    def compare(reference: str, candidate: str) -> dict:
        response = client.post("/compare", json={"reference": reference, "candidate": candidate})
        assert response.status_code == 202, response.text
        return wait_terminal(client, response.json()["job_id"])

    doc = compare(first, second)
    # The tiny model's two reconstructions are crude blobs: they may align, or be refused as different
    # objects; either way the job ends cleanly. A job compared with itself must align.
    assert doc["kind"] == "compare"
    if doc["state"] == "failed":
        assert doc["error"]["code"] == "not_comparable", doc["error"]
        doc = compare(first, first)
    assert doc["state"] == "succeeded", doc["error"]
    glb = client.get(doc["result_url"])
    assert glb.status_code == 200 and glb.headers["content-type"] == "model/gltf-binary"
    gltf = pygltflib.GLTF2.load_from_bytes(glb.content)
    assert len(gltf.nodes) == 2 and gltf.nodes[1].extras["hidden"] is True
    extras = gltf.scenes[0].extras["triposr_compare"]
    assert {"units", "alignment", "noise_floor", "distance", "loss", "gain", "colour_scale"} <= set(extras)
    report = client.get(doc["result_url"], params={"part": "report"}).json()
    assert report["noise_floor"] == extras["noise_floor"]
    chart = client.get(doc["result_url"], params={"part": "chart"})
    assert chart.headers["content-type"] == "image/png" and chart.content[:4] == b"\x89PNG"
    kinds = {j["job_id"]: j["kind"] for j in client.get("/jobs", params={"kind": "compare"}).json()["jobs"]}
    assert kinds.get(doc["job_id"]) == "compare" and first not in kinds


def test_reconstruct_batching_reconfigures_without_restart(service):
    from ray import serve

    *_, args = service
    handle = serve.get_deployment_handle("Reconstruct", app_name=APP)
    before = handle.batch_stats.remote().result()
    config = {"max_batch_size": 4, "batch_wait_timeout_s": 0.5}
    deploy(args, [{"name": "Reconstruct", "user_config": config}, DEPLOYMENTS[1]])
    deadline = time.monotonic() + 60
    while (after := handle.batch_stats.remote().result())["config"] != config:
        assert time.monotonic() < deadline, after["config"]
        time.sleep(0.2)
    assert after["pid"] == before["pid"] and after["batches"] == before["batches"]  # same live replica
    deploy(args)


def test_custom_metrics_are_exported_with_sensible_values(service, ray_cluster):
    """Read Prometheus text from Ray's metrics endpoint (not our code's counters)."""
    port = ray_cluster
    wanted = {
        "ray_triposr_jobs_total": lambda v: v >= 5,
        "ray_triposr_stage_seconds_count": lambda v: v >= 4 * 5,
        "ray_triposr_frames_per_job_count": lambda v: v >= 5,
        "ray_triposr_frames_per_job_sum": lambda v: v >= 5,
        "ray_triposr_reconstruct_batch_size_count": lambda v: v >= 1,
        "ray_triposr_reconstruct_batch_size_sum": lambda v: v >= 1,
        "ray_triposr_upload_bytes_total": lambda v: v > 100_000,
        "ray_triposr_jobs_queued": lambda v: v >= 0,
        "ray_triposr_jobs_running": lambda v: v >= 0,
    }
    deadline = time.monotonic() + 60
    while True:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        found = _sum_metrics(text, wanted)
        ok = {name: name in found and check(found[name]) for name, check in wanted.items()}
        if all(ok.values()) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert all(ok.values()), found
    frames = found["ray_triposr_frames_per_job_sum"] / found["ray_triposr_frames_per_job_count"]
    assert 1 <= frames <= 6  # jobs asked for 2 frames (the cancelled one for 6)
    batch = (
        found["ray_triposr_reconstruct_batch_size_sum"] / found["ray_triposr_reconstruct_batch_size_count"]
    )
    assert 1 <= batch <= 8  # max_batch_size is 8
    assert 'state="succeeded"' in text and 'state="cancelled"' in text
    for stage in ("queue_wait", "preprocess", "reconstruct", "merge"):
        assert f'stage="{stage}"' in text


def _sum_metrics(text: str, names) -> dict[str, float]:
    """Sum each metric over all its label sets (replicas, states, stages)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in names:
            out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def test_app_restart_keeps_every_job_and_finishes_queued_ones(service, ring_video):
    from ray import serve

    client, _, args = service
    before = {j["job_id"]: j["state"] for j in client.get("/jobs", params={"limit": 500}).json()["jobs"]}
    pending = [submit(client, ring_video) for _ in range(3)]
    serve.delete(APP)  # the ingress re-queues what it was running; nothing is lost
    url = deploy(args)
    with httpx.Client(base_url=url, timeout=60) as fresh:
        after = {j["job_id"]: j["state"] for j in fresh.get("/jobs", params={"limit": 500}).json()["jobs"]}
        assert set(before) | set(pending) == set(after)
        assert all(after[j] == s for j, s in before.items())  # finished jobs unchanged
        docs = [wait_terminal(fresh, job_id) for job_id in pending]
    assert [d["state"] for d in docs] == ["succeeded"] * 3, [d["error"] for d in docs]
