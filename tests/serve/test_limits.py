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
