"""POST /compare and compare jobs through Starlette's TestClient, no Ray: the real comparison runs in-process.

Meshes: synthetic tyres (tests/tyres.py), coarser than the algorithm tests' (8 mm) to keep uploads small.
"""

from __future__ import annotations

import io
import json
import sqlite3

import numpy as np
import pygltflib
import pytest

from serve_app.jobs import MIGRATIONS, InvalidTransition, JobKind, JobState, JobStore
from tests import tyres
from tests.serve.conftest import assert_error, wait_terminal


@pytest.fixture(scope="module")
def tyre_files():
    """(reference GLB bytes, candidate PLY bytes): one tyre, two TripoSR-like runs, 3 mm off 60-120 deg."""
    reference, _ = tyres.triposr_like(tyres.racing_tyre(spacing_m=0.008), seed=11, move=False)
    worn = tyres.racing_tyre(spacing_m=0.008, wear=tyres.sector_wear(0.003, 60.0, 120.0))
    candidate, _ = tyres.triposr_like(worn, seed=12)
    return reference.export(file_type="glb"), candidate.export(file_type="ply")


@pytest.fixture
def compare_client(make_client, settings):
    return make_client(settings.merged({"upload_limit_bytes": 64_000_000}))


def post_files(client, reference: bytes, candidate: bytes, **fields):
    files = {"reference": ("ref.glb", reference), "candidate": ("cand.ply", candidate)}
    return client.post("/compare", files=files, data=fields)


def test_multipart_compare_job_gives_heatmap_report_and_chart(compare_client, tyre_files):
    client = compare_client
    response = post_files(client, *tyre_files, object_size_m="0.72", threshold_mm="1.0")
    assert response.status_code == 202, response.text
    body = response.json()
    assert set(body) >= {"job_id", "state", "status_url", "result_url", "events_url", "ws_url"}
    doc = wait_terminal(client, body["job_id"], timeout_s=300)
    assert doc["state"] == "succeeded", doc["error"]
    assert doc["kind"] == "compare" and doc["stage"] == "compare"
    assert doc["params"]["object_size_m"] == 0.72 and "compare" in doc["timings"]

    events = client.get(body["events_url"])
    states = [json.loads(x[6:])["state"] for x in events.text.splitlines() if x.startswith("data: ")]
    assert states == ["queued", "comparing", "succeeded"]

    glb = client.get(body["result_url"])
    assert glb.status_code == 200 and glb.headers["content-type"] == "model/gltf-binary"
    gltf = pygltflib.GLTF2.load_from_bytes(glb.content)
    assert len(gltf.nodes) == 2 and gltf.nodes[1].extras == {"role": "candidate", "hidden": True}
    extras = gltf.scenes[0].extras["triposr_compare"]
    assert extras["units"] == "mm" and extras["colour_scale"]["white_within"] == extras["noise_floor"]

    report = client.get(body["result_url"], params={"part": "report"})
    assert report.status_code == 200 and report.headers["content-type"] == "application/json"
    report = report.json()
    fields = {
        "units",
        "alignment",
        "noise_floor",
        "distance",
        "loss",
        "gain",
        "sectors",
        "bands",
        "colour_scale",
    }
    assert set(report) >= fields
    worn = [s["mean_loss"] for s in report["sectors"][6:12]]
    assert min(worn) > 2.0, worn  # coarse 8 mm meshes: the worn sectors still stand out
    assert max(s["mean_loss"] for s in report["sectors"][14:34]) < 0.6

    chart = client.get(body["result_url"], params={"part": "chart"})
    assert chart.status_code == 200 and chart.headers["content-type"] == "image/png"
    assert chart.content[:8] == b"\x89PNG\r\n\x1a\n"

    listed = client.get("/jobs", params={"kind": "compare"}).json()
    assert [j["job_id"] for j in listed["jobs"]] == [body["job_id"]] and listed["jobs"][0][
        "kind"
    ] == "compare"
    assert client.get("/jobs", params={"kind": "reconstruct"}).json()["total"] == 0


def test_compare_of_a_mirror_image_fails_not_comparable(compare_client, tyre_files):
    mirrored, _ = tyres.triposr_like(tyres.racing_tyre(spacing_m=0.008, mirrored=True), seed=13)
    response = post_files(compare_client, tyre_files[0], mirrored.export(file_type="ply"))
    assert response.status_code == 202, response.text
    doc = wait_terminal(compare_client, response.json()["job_id"], timeout_s=300)
    assert doc["state"] == "failed" and doc["error"]["code"] == "not_comparable", doc["error"]
    assert_error(
        compare_client.get(doc["result_url"] or f"/reconstruct/result/{doc['job_id']}"), 409, "job_failed"
    )


def test_bad_compare_requests_are_json_4xx(compare_client, tyre_files, ring_video):
    client = compare_client
    reference, candidate = tyre_files
    running = client.post("/reconstruct", files={"video": ("r.mp4", ring_video.read_bytes(), "video/mp4")})
    running_id = running.json()["job_id"]
    unknown = "A" * 22
    cases = [
        (client.post("/compare", json={"reference": unknown, "candidate": unknown}), 404, "job_not_found"),
        (client.post("/compare", json={"reference": running_id, "candidate": running_id}), 409,
         "job_not_finished"),
        (client.post("/compare", json={"reference": unknown}), 404, "job_not_found"),
        (client.post("/compare", json={"candidate": unknown}), 400, "missing_input"),
        (client.post("/compare", json={"reference": unknown, "candidate": unknown, "threshold_mm": -1}), 422,
         "invalid_parameter"),
        (client.post("/compare", json={"reference": unknown, "candidate": unknown, "colour": 1}), 422,
         "invalid_parameter"),
        (client.post("/compare", content=b"x", headers={"content-type": "text/plain"}), 415,
         "unsupported_media"),
        (client.post("/compare", files={"reference": ("a.glb", reference)}), 400, "missing_input"),
        (post_files(client, b"not a mesh at all" * 10, candidate), 415, "unsupported_media"),
        (post_files(client, reference, b""), 400, "empty_file"),
        (client.post("/compare", files={"video": ("a.glb", reference)}), 400, "invalid_input"),
        (client.get(f"/reconstruct/result/{running_id}", params={"part": "chart"}), 409, "job_not_finished"),
        (client.get("/jobs", params={"kind": "nope"}), 422, "invalid_parameter"),
    ]  # fmt: skip
    for response, status, code in cases:
        assert_error(response, status, code)
    assert wait_terminal(client, running_id)["state"] == "succeeded"
    assert_error(client.get(f"/reconstruct/result/{running_id}", params={"part": "chart"}), 422)
    assert (
        client.get(f"/reconstruct/result/{running_id}", params={"part": "report"}).json()["job_id"]
        == running_id
    )


def test_compare_of_a_job_with_itself_shows_no_change(compare_client, ring_video):
    client = compare_client
    job_id = client.post(
        "/reconstruct", files={"video": ("r.mp4", ring_video.read_bytes(), "video/mp4")}
    ).json()["job_id"]
    assert wait_terminal(client, job_id)["state"] == "succeeded"
    response = client.post("/compare", json={"reference": job_id, "candidate": job_id})
    assert response.status_code == 202, response.text
    doc = wait_terminal(client, response.json()["job_id"], timeout_s=300)
    assert doc["state"] == "succeeded", doc["error"]
    report = client.get(doc["result_url"], params={"part": "report"}).json()
    # the tiny model meshes at mc 32 (edges ~5% of the size): curvature between samples reads as ~0.1-0.5%
    assert report["units"] == "fraction" and report["loss"]["max"] < 0.01
    assert report["alignment"]["scale"] == pytest.approx(1.0, abs=1e-3)
    kinds = {j["job_id"]: j["kind"] for j in client.get("/jobs").json()["jobs"]}
    assert kinds[job_id] == "reconstruct" and kinds[doc["job_id"]] == "compare"


def test_store_migrates_and_compare_jobs_follow_their_own_transitions(tmp_path):
    path = tmp_path / "jobs.db"
    conn = sqlite3.connect(path)  # a store written before job kinds existed
    for statement in ";".join(MIGRATIONS[:3]).split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 3")
    conn.execute(
        "INSERT INTO jobs (id, state, stage, params, created_at, updated_at) "
        "VALUES ('old', 'succeeded', 'merge', '{}', 1, 1)"
    )
    conn.commit()
    conn.close()
    store = JobStore(path)
    assert store.schema_version() == len(MIGRATIONS)
    assert store.get("old").kind == JobKind.RECONSTRUCT
    from pipeline.params import CompareParams

    job, _ = store.create(CompareParams(threshold_mm=0.5), kind=JobKind.COMPARE)
    claimed = store.claim_next("me")
    assert claimed.id == job.id and claimed.state == JobState.COMPARING and claimed.stage == "compare"
    assert claimed.params.threshold_mm == 0.5
    with pytest.raises(InvalidTransition):
        store.transition(job.id, JobState.MERGING)
    assert store.transition(job.id, JobState.SUCCEEDED).state == JobState.SUCCEEDED
    assert [j.id for j in store.list(kind=JobKind.COMPARE)[0]] == [job.id]
    assert np.isclose(store.get(job.id).progress, 1.0)


def test_heatmap_glb_round_trips_through_pygltflib(tyre_files):
    from pipeline.compare_export import compare_payload

    out = compare_payload(*tyre_files, object_size_m=0.72)
    gltf = pygltflib.GLTF2.load_from_bytes(out["glb"])
    assert gltf.nodes[0].extras == {"role": "reference"} and gltf.nodes[1].extras["hidden"] is True
    assert gltf.meshes[0].primitives[0].attributes.COLOR_0 is not None
    assert gltf.scenes[0].extras["triposr_compare"]["glb"]["units"] == "m"
    import trimesh

    scene = trimesh.load(io.BytesIO(out["glb"]), file_type="glb")
    extent = max(float(np.ptp(g.vertices, axis=0).max()) for g in scene.geometry.values())
    assert extent == pytest.approx(0.72, rel=0.02)  # metres in the file
