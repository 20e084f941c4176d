"""What the web page needs from the service, through Starlette's TestClient (real pipeline in-process): the
page and its static files, `GET /params`, and the per-frame previews `GET /reconstruct/frames/{id}/{n}`."""

from __future__ import annotations

import io

from PIL import Image

from tests.serve.conftest import assert_error, wait_terminal


def test_page_and_static_files_are_served_without_a_token(make_client, settings):
    client = make_client(settings.merged({"api_token": "s3cret"}))
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["cache-control"] == "no-cache" and '<base href="/">' in page.text
    assert '<script type="importmap">' in page.text and "static/app.js" in page.text
    app_js = client.get("/static/app.js")
    assert app_js.status_code == 200 and "javascript" in app_js.headers["content-type"]
    three = client.get("/static/vendor/three/three.module.min.js")
    assert three.status_code == 200 and "javascript" in three.headers["content-type"]
    assert "MIT License" in client.get("/static/vendor/three/LICENSE").text
    assert_error(client.get("/static/nope.js"), 404, "not_found")
    assert_error(client.get("/static/../settings.py"), 404)
    assert_error(client.get("/params"), 401, "unauthorized")  # the API behind the page still needs it


def test_params_lists_ranges_and_this_services_defaults(client):
    doc = {p["name"]: p for p in client.get("/params").json()["params"]}
    assert doc["num_frames"]["default"] == 2 and doc["mc_resolution"]["default"] == 32  # settings fixture
    assert (doc["num_frames"]["min"], doc["num_frames"]["max"]) == (1, 32)
    assert doc["format"]["choices"] == ["glb", "obj", "ply"]


def test_every_report_entry_has_a_jpeg_preview(client, ring_video):
    with open(ring_video, "rb") as f:
        response = client.post(
            "/reconstruct", files={"video": ("ring.mp4", f, "video/mp4")}, data={"num_frames": "3"}
        )
    job_id = response.json()["job_id"]
    doc = wait_terminal(client, job_id)
    assert doc["state"] == "succeeded", doc
    report = doc["frames"]["report"]
    for n in range(len(report)):
        image = client.get(f"/reconstruct/frames/{job_id}/{n}")
        assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
        assert max(Image.open(io.BytesIO(image.content)).size) <= 160
    assert_error(client.get(f"/reconstruct/frames/{job_id}/{len(report)}"), 404, "not_found")
    assert_error(client.get(f"/reconstruct/frames/{job_id}/-1"), 404, "not_found")
    assert_error(client.get(f"/reconstruct/frames/{job_id}/x"), 404, "not_found")
    assert_error(client.get("/reconstruct/frames/AAAAAAAAAAAAAAAAAAAAAA/0"), 404, "job_not_found")
