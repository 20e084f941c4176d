"""Limits checked before work is spent: disk space, per-client queue, orphaned uploads, header-only probes."""

from __future__ import annotations

import os
import time
import zipfile

import pytest

from pipeline.errors import UnsafeArchive, VideoTooLarge
from pipeline.frames import VideoLimits
from pipeline.inputs import ArchiveLimits, check_archive, detect_kind
from pipeline.params import JobParams
from serve_app.jobs import ClientQuotaExceeded, JobStore
from serve_app.uploads import sweep_orphan_uploads
from tests.serve.conftest import assert_error


def test_submission_is_refused_with_507_when_the_data_disk_is_nearly_full(make_client, settings, ring_video):
    client = make_client(settings.merged({"min_free_disk_bytes": 10**18}))
    with ring_video.open("rb") as f:
        response = client.post("/reconstruct", files={"video": ("ring.mp4", f, "video/mp4")})
    assert_error(response, 507, "insufficient_storage")
    assert response.headers["retry-after"]
    assert not settings.jobs_dir.exists() or not any(settings.jobs_dir.iterdir())  # nothing stored


def test_queued_jobs_per_client_are_capped_inside_the_write(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    for _ in range(2):
        store.create(JobParams(), client="10.0.0.1", client_limit=2)
    with pytest.raises(ClientQuotaExceeded) as caught:
        store.create(JobParams(), client="10.0.0.1", client_limit=2)
    assert caught.value.queued == 2
    store.create(JobParams(), client="10.0.0.2", client_limit=2)  # another client is not affected


def test_orphaned_upload_folders_are_swept_and_job_folders_kept(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    job, _ = store.create(JobParams())
    jobs_dir = tmp_path / "jobs"
    for name in (job.id, "orphan", "fresh-orphan"):
        (jobs_dir / name / "input").mkdir(parents=True)
    old = time.time() - 7200
    for name in (job.id, "orphan"):
        os.utime(jobs_dir / name, (old, old))
    assert sweep_orphan_uploads(jobs_dir, store.exists, older_than_s=3600) == ["orphan"]
    assert sorted(p.name for p in jobs_dir.iterdir()) == sorted([job.id, "fresh-orphan"])


def test_video_header_announcing_too_many_pixels_is_refused_before_decoding(huge_avi):
    with pytest.raises(VideoTooLarge, match="16000x16000"):
        detect_kind(huge_avi, video_limits=VideoLimits())


def test_video_longer_than_the_limit_is_refused_from_its_header(ring_video):
    with pytest.raises(VideoTooLarge, match="max_video_duration_s"):
        detect_kind(ring_video, video_limits=VideoLimits(max_duration_s=1.0))


def test_zip_member_count_is_read_from_the_end_record_before_the_directory(tmp_path):
    path = tmp_path / "many.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(20):
            zf.writestr(f"{i}.txt", b"")
    with pytest.raises(UnsafeArchive, match="declares 20 members"):
        check_archive(path, ArchiveLimits(max_members=10))


def test_zip64_end_record_claiming_a_million_members_is_refused(million_zip):
    with pytest.raises(UnsafeArchive, match="declares 1000000 members"):
        check_archive(million_zip)


@pytest.fixture
def huge_avi(tmp_path):
    from tests.hostile.media import make_huge_header_avi

    return make_huge_header_avi(tmp_path / "huge.avi", 16000, 16000)


@pytest.fixture
def million_zip(tmp_path):
    from tests.hostile.media import make_zip64_claiming

    return make_zip64_claiming(tmp_path / "million.zip", 1_000_000)


def test_uploads_still_arriving_count_against_the_queue_limit(tiny_model, remover, settings):
    """With max_queued_jobs 2 and two uploads still streaming in, a third submission gets its 503 at once,
    before its body is read; once those uploads are done (here: cut off), submissions are taken again."""
    import socket
    import threading

    import httpx
    import uvicorn

    from serve_app.ingress import build_app
    from serve_app.orchestrator import LocalWorkers
    from tests.conftest import free_port

    port = free_port()
    app = build_app(settings.merged({"max_queued_jobs": 2}), LocalWorkers(tiny_model, remover))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
            time.sleep(0.05)
        head = (
            f"POST /reconstruct HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Content-Type: multipart/form-data; boundary=bnd\r\nContent-Length: 1000000\r\n\r\n"
            '--bnd\r\nContent-Disposition: form-data; name="video"; filename="v.mp4"\r\n\r\n'
        ).encode()
        drips = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(2)]
        for sock in drips:
            sock.sendall(head + b"x" * 1024)  # and then nothing more for now: the upload is still arriving
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            deadline = time.monotonic() + 10
            while True:
                t0 = time.perf_counter()
                response = client.post(
                    "/reconstruct", files={"video": ("v.mp4", b"y" * 1_500_000, "video/mp4")}
                )
                if response.status_code == 503 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)  # the drips' requests may not have reached the handler yet
            error = assert_error(response, 503, "overloaded")
            assert "2 arriving" in error["message"] and response.headers["retry-after"]
            assert time.perf_counter() - t0 < 2.0
            for sock in drips:
                sock.close()
            deadline = time.monotonic() + 10
            while client.get("/healthz").status_code == 200 and server.started:
                response = client.post(
                    "/reconstruct", files={"video": ("v.mp4", b"not a video", "video/mp4")}
                )
                if response.status_code != 503 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert response.status_code != 503, response.text  # counted out again once the uploads ended
    finally:
        server.should_exit = True
        thread.join(timeout=15)
