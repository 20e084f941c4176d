"""The HTTP API through Starlette's TestClient, no Ray: real pipeline stages run in-process (LocalWorkers)."""

from __future__ import annotations

import io
import json
import shutil
import time

import pytest
import trimesh

from serve_app.jobs import JobState, JobStore
from tests.serve.conftest import assert_error, wait_terminal


def submit_video(client, path, **fields):
    with open(path, "rb") as f:
        return client.post("/reconstruct", files={"video": (path.name, f, "video/mp4")}, data=fields)


def test_health_endpoints_answer(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_video_job_succeeds_and_reports_stages_frames_and_events(client, ring_video):
    response = submit_video(client, ring_video, num_frames="2", mc_resolution="32")
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status_url"] == f"/reconstruct/status/{body['job_id']}"
    doc = wait_terminal(client, body["job_id"])
    assert doc["state"] == "succeeded", doc
    assert doc["progress"] == 1.0 and doc["error"] is None
    assert doc["frames"]["selected"] == 2 and len(doc["frames"]["report"]) >= 2
    assert {"queue_wait", "preprocess", "reconstruct", "merge", "total"} <= set(doc["timings"])
    glb = client.get(f"/reconstruct/result/{body['job_id']}")
    assert glb.status_code == 200 and glb.headers["content-type"] == "model/gltf-binary"
    loaded = trimesh.load(io.BytesIO(glb.content), file_type="glb")
    assert len(loaded.geometry) >= 1

    events = client.get(f"/reconstruct/events/{body['job_id']}")
    states = [json.loads(line[6:])["state"] for line in events.text.splitlines() if line.startswith("data: ")]
    assert [s for i, s in enumerate(states) if i == 0 or states[i - 1] != s] == [
        "queued", "preprocessing", "reconstructing", "merging", "succeeded",
    ]  # fmt: skip

    with client.websocket_connect(f"/reconstruct/ws/{body['job_id']}") as ws:
        messages = []
        while True:
            try:
                messages.append(ws.receive_json())
            except Exception:  # the server closes the socket after the terminal state
                break
    assert messages[-1]["state"] == "succeeded"


def test_idempotency_key_returns_the_same_job(client, ring_video):
    headers = {"Idempotency-Key": "retry-123"}
    with open(ring_video, "rb") as f:
        first = client.post("/reconstruct", files={"video": ("a.mp4", f)}, headers=headers)
    with open(ring_video, "rb") as f:
        second = client.post("/reconstruct", files={"video": ("a.mp4", f)}, headers=headers)
    assert first.status_code == second.status_code == 202
    assert first.json()["job_id"] == second.json()["job_id"]
    assert second.headers["Idempotent-Replayed"] == "true"
    assert client.get("/jobs").json()["total"] == 1
    wait_terminal(client, first.json()["job_id"])


def test_json_source_under_input_root_and_output_path(client, settings, ring_video):
    source = settings.input_roots[0] / "tyre.mp4"
    shutil.copy(ring_video, source)
    target = settings.output_roots[0] / "out" / "tyre.glb"
    response = client.post(
        "/reconstruct",
        json={"preprocessing_output_dir": "tyre.mp4", "output_glb_path": str(target), "mc_resolution": 32},
    )
    assert response.status_code == 202, response.text
    doc = wait_terminal(client, response.json()["job_id"])
    assert doc["state"] == "succeeded", doc
    assert target.is_file() and target.stat().st_size > 0


# -- bad input: every case a JSON 4xx, and the service keeps serving
# --------------------------------------------


def test_no_file_is_400(client):
    assert_error(client.post("/reconstruct", files={"num_frames": (None, "4")}), 400, "missing_input")


def test_empty_file_is_400(client):
    assert_error(client.post("/reconstruct", files={"video": ("a.mp4", b"")}), 400, "empty_file")


def test_wrong_type_is_415(client):
    response = client.post("/reconstruct", files={"video": ("a.mp4", b"hello, this is text" * 10)})
    assert_error(response, 415, "unsupported_media")


def test_corrupt_video_is_422(client, corrupt_video):
    assert_error(submit_video(client, corrupt_video), 422, "video_decode_error")


def test_oversize_upload_is_413(client, settings):
    big = b"\x00" * (settings.upload_limit_bytes + 1024)
    assert_error(client.post("/reconstruct", files={"video": ("big.mp4", big)}), 413, "payload_too_large")
    assert not any(settings.jobs_dir.iterdir()), "a refused upload must leave no files behind"


@pytest.mark.parametrize(
    "route", ["/reconstruct/status/{}", "/reconstruct/result/{}", "/reconstruct/events/{}"]
)
def test_unknown_job_id_is_404(client, route):
    assert_error(client.get(route.format("AAAAAAAAAAAAAAAAAAAAAA")), 404, "job_not_found")
    assert_error(client.get(route.format("../../etc")), 404)


def test_cancel_unknown_job_is_404(client):
    assert_error(client.delete("/jobs/AAAAAAAAAAAAAAAAAAAAAA"), 404, "job_not_found")


def test_result_of_unfinished_job_is_409(client, settings):
    store = JobStore(settings.db_path)
    from pipeline.params import JobParams

    job, _ = store.create(JobParams(), input_path="/nonexistent")
    store.transition(job.id, JobState.CANCELLED)
    assert_error(client.get(f"/reconstruct/result/{job.id}"), 409, "job_failed")
    running, _ = store.create(JobParams(), input_path="/nonexistent")
    store.transition(running.id, JobState.PREPROCESSING, owner="elsewhere", heartbeat_at=time.time() + 3600)
    assert_error(client.get(f"/reconstruct/result/{running.id}"), 409, "job_not_finished")


@pytest.mark.parametrize(
    ("field", "value"),
    [("num_frames", "0"), ("num_frames", "abc"), ("mc_resolution", "4096"), ("merge", "average"),
     ("foreground_ratio", "nan"), ("colour", "red")],
)  # fmt: skip
def test_invalid_parameters_are_422(client, ring_video, field, value):
    error = assert_error(submit_video(client, ring_video, **{field: value}), 422, "invalid_parameter")
    assert field in error["message"]


def test_invalid_json_parameter_types_are_422(client, settings, ring_video):
    shutil.copy(ring_video, settings.input_roots[0] / "v.mp4")
    response = client.post("/reconstruct", json={"source": "v.mp4", "num_frames": True})
    assert_error(response, 422, "invalid_parameter")
    assert_error(client.post("/reconstruct", json={"source": "v.mp4", "mc_resolution": [64]}), 422)


@pytest.mark.parametrize("source", ["/etc/passwd", "../../etc/passwd", "sub/../../x.mp4"])
def test_source_outside_root_or_with_dotdot_is_403(client, source):
    assert_error(client.post("/reconstruct", json={"source": source}), 403, "forbidden_path")


def test_output_path_outside_root_is_403(client, settings, ring_video):
    shutil.copy(ring_video, settings.input_roots[0] / "v.mp4")
    response = client.post("/reconstruct", json={"source": "v.mp4", "output_glb_path": "/tmp/x.glb"})
    assert_error(response, 403, "forbidden_path")


def test_malformed_multipart_is_400(client):
    no_boundary = client.post("/reconstruct", content=b"xx", headers={"content-type": "multipart/form-data"})
    assert_error(no_boundary, 400, "malformed_multipart")
    truncated = b'--XyZ\r\nContent-Disposition: form-data; name="video"; filename="a.mp4"\r\n\r\nabc'
    response = client.post(
        "/reconstruct", content=truncated, headers={"content-type": "multipart/form-data; boundary=XyZ"}
    )
    assert_error(response, 400, "malformed_multipart")


def test_malformed_json_is_400(client):
    headers = {"content-type": "application/json"}
    assert_error(client.post("/reconstruct", content=b"{not json", headers=headers), 400, "malformed_json")
    assert_error(client.post("/reconstruct", content=b"[1, 2]", headers=headers), 400, "malformed_json")


def test_unsupported_content_type_is_415(client):
    response = client.post("/reconstruct", content=b"x", headers={"content-type": "text/plain"})
    assert_error(response, 415, "unsupported_media")


def test_unknown_route_and_wrong_method_use_the_envelope(client):
    assert_error(client.get("/nope"), 404, "not_found")
    assert_error(client.put("/reconstruct"), 405, "method_not_allowed")


def test_service_keeps_serving_after_bad_requests(client, ring_video):
    client.post("/reconstruct", content=b"{", headers={"content-type": "application/json"})
    client.post("/reconstruct", files={"video": ("a.mp4", b"")})
    response = submit_video(client, ring_video, mc_resolution="32")
    assert response.status_code == 202
    assert wait_terminal(client, response.json()["job_id"])["state"] == "succeeded"


# -- auth, back-pressure, listing, cancel, retention, recovery
# --------------------------------------------------


def test_bearer_token_guards_everything_but_health(make_client, settings):
    client = make_client(settings.merged({"api_token": "s3cret"}))
    assert client.get("/healthz").status_code == 200
    assert_error(client.get("/jobs"), 401, "unauthorized")
    assert_error(client.get("/jobs", headers={"Authorization": "Bearer wrong"}), 401)
    assert client.get("/jobs", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_full_queue_answers_503_with_retry_after(make_client, settings, ring_video):
    client = make_client(settings.merged({"max_running_jobs": 1, "max_queued_jobs": 1}))
    statuses = [submit_video(client, ring_video, mc_resolution="32") for _ in range(3)]
    refused = [r for r in statuses if r.status_code == 503]
    assert refused, [r.status_code for r in statuses]
    assert_error(refused[0], 503, "overloaded")
    assert refused[0].headers["Retry-After"]


def test_list_filters_and_paginates(client, ring_video):
    ids = [submit_video(client, ring_video, mc_resolution="32").json()["job_id"] for _ in range(3)]
    page = client.get("/jobs", params={"limit": 2}).json()
    assert page["total"] == 3 and len(page["jobs"]) == 2 and page["next_offset"] == 2
    rest = client.get("/jobs", params={"limit": 2, "offset": 2}).json()
    assert {j["job_id"] for j in page["jobs"] + rest["jobs"]} == set(ids)
    assert_error(client.get("/jobs", params={"state": "bogus"}), 422, "invalid_parameter")
    for job_id in ids:
        wait_terminal(client, job_id)
    assert client.get("/jobs", params={"state": "succeeded"}).json()["total"] == 3


def test_cancel_stops_a_job(make_client, settings, ring_video):
    client = make_client(settings.merged({"max_running_jobs": 1}))
    first = submit_video(client, ring_video, mc_resolution="32").json()["job_id"]
    second = submit_video(client, ring_video, mc_resolution="32").json()["job_id"]
    for job_id in (first, second):
        response = client.delete(f"/jobs/{job_id}")
        assert response.status_code in (200, 202), response.text
    assert wait_terminal(client, first)["state"] == "cancelled"
    assert wait_terminal(client, second)["state"] == "cancelled"
    assert client.delete(f"/jobs/{second}").status_code == 200  # idempotent


def test_retention_sweep_removes_files_and_result_turns_410(client, ring_video):
    job_id = submit_video(client, ring_video, mc_resolution="32").json()["job_id"]
    assert wait_terminal(client, job_id)["state"] == "succeeded"
    orchestrator = client.app.state.service.orchestrator
    assert orchestrator.sweep_retention(now=time.time() + orchestrator.settings.retention_s + 1) == 1
    assert not orchestrator.job_dir(job_id).exists()
    assert client.get(f"/reconstruct/status/{job_id}").json()["files_removed_at"] is not None
    assert_error(client.get(f"/reconstruct/result/{job_id}"), 410, "result_expired")


def test_start_recovers_orphaned_and_queued_jobs(make_client, settings, ring_video):
    from pipeline.params import JobParams

    store = JobStore(settings.db_path)
    params = JobParams(num_frames=2, mc_resolution=32)
    orphan, _ = store.create(params, input_path=str(ring_video), input_kind="video")
    store.claim_next("crashed-replica")  # mid-flight when the service "died"; heartbeat now stale
    store.update(orphan.id, heartbeat_at=time.time() - 3600)
    queued, _ = store.create(params, input_path=str(ring_video), input_kind="video")
    client = make_client(settings.merged({"orphan_after_s": 1.0}))
    assert wait_terminal(client, queued.id)["state"] == "succeeded"
    recovered = wait_terminal(client, orphan.id)
    assert recovered["state"] == "succeeded" and recovered["attempts"] == 2


def test_job_timeout_fails_the_job_with_a_reason(make_client, settings, ring_video):
    client = make_client(settings.merged({"job_timeout_s": 0.2}))
    job_id = submit_video(client, ring_video, mc_resolution="32").json()["job_id"]
    doc = wait_terminal(client, job_id)
    assert doc["state"] == "failed" and doc["error"]["code"] == "job_timeout"
