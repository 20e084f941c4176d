"""The SQLite job store: migrations, transitions, idempotency, recovery, retention (no Ray)."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from pipeline.params import JobParams
from serve_app.errors import JobAlreadyFinished, JobNotFound, StoreUnavailable
from serve_app.jobs import MIGRATIONS, InvalidTransition, JobState, JobStore, LostOwnership


@pytest.fixture
def store(tmp_path):
    s = JobStore(tmp_path / "jobs.sqlite3")
    yield s
    s.close()


def test_open_applies_migrations_and_uses_wal(store, tmp_path):
    assert store.schema_version() == len(MIGRATIONS)
    conn = sqlite3.connect(tmp_path / "jobs.sqlite3")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_reopen_adopts_existing_database_and_keeps_rows(store, tmp_path):
    job, _ = store.create(JobParams(num_frames=3))
    store.close()
    again = JobStore(tmp_path / "jobs.sqlite3")
    assert again.get(job.id).params.num_frames == 3
    assert again.schema_version() == len(MIGRATIONS)


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(RuntimeError, match="newer"):
        JobStore(path)


def test_job_ids_are_long_and_random(store):
    ids = {store.create(JobParams())[0].id for _ in range(20)}
    assert len(ids) == 20
    assert all(len(i) >= 22 for i in ids)


def test_full_lifecycle_records_events_in_order(store):
    job, _ = store.create(JobParams())
    claimed = store.claim_next("me")
    assert claimed.id == job.id and claimed.state == JobState.PREPROCESSING and claimed.attempts == 1
    store.transition(job.id, JobState.RECONSTRUCTING, progress=0.2)
    store.transition(job.id, JobState.MERGING)
    done = store.transition(job.id, JobState.SUCCEEDED, result_path="/x.glb")
    assert done.progress == 1.0 and done.finished_at is not None and done.owner is None
    store.update(job.id, progress=0.5, event="progress", message="frame 1/2")
    events = store.events_since(job.id)
    states = [e["state"] for e in events if e["kind"] == "state"]
    assert states == ["queued", "preprocessing", "reconstructing", "merging", "succeeded"]
    assert [e["kind"] for e in events].count("progress") == 1


@pytest.mark.parametrize(
    ("path", "bad"),
    [
        ([], JobState.MERGING),
        ([JobState.PREPROCESSING], JobState.SUCCEEDED),
        ([JobState.PREPROCESSING, JobState.FAILED], JobState.QUEUED),
    ],
)
def test_transition_table_rejects_illegal_moves(store, path, bad):
    job, _ = store.create(JobParams())
    for state in path:
        store.transition(job.id, state)
    with pytest.raises(InvalidTransition):
        store.transition(job.id, bad)


def test_unknown_job_raises_job_not_found(store):
    with pytest.raises(JobNotFound):
        store.get("nope")


def test_idempotency_key_returns_the_same_job(store):
    first, created = store.create(JobParams(), idempotency_key="k1")
    second, created_again = store.create(JobParams(num_frames=2), idempotency_key="k1")
    assert created and not created_again and first.id == second.id


def test_claim_is_exclusive_between_threads(store):
    for _ in range(10):
        store.create(JobParams())
    claimed: list[str] = []

    def worker(owner: str) -> None:
        while (job := store.claim_next(owner)) is not None:
            claimed.append(job.id)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(claimed) == 10 == len(set(claimed))


def test_cancel_queued_job_is_immediate_and_idempotent(store):
    job, _ = store.create(JobParams())
    assert store.request_cancel(job.id).state == JobState.CANCELLED
    assert store.request_cancel(job.id).state == JobState.CANCELLED


def test_cancel_running_job_sets_flag_and_finished_job_refuses(store):
    job, _ = store.create(JobParams())
    store.claim_next("me")
    flagged = store.request_cancel(job.id)
    assert flagged.state == JobState.PREPROCESSING and flagged.cancel_requested
    store.transition(job.id, JobState.FAILED)
    with pytest.raises(JobAlreadyFinished):
        store.request_cancel(job.id)


def test_orphaned_job_is_requeued_then_failed_after_max_attempts(store):
    job, _ = store.create(JobParams())
    store.claim_next("dead-owner")
    assert store.recover_orphans(stale_before=time.time() + 1, max_attempts=2) == 1
    assert store.get(job.id).state == JobState.QUEUED
    store.claim_next("dead-again")
    store.recover_orphans(stale_before=time.time() + 1, max_attempts=2)
    failed = store.get(job.id)
    assert failed.state == JobState.FAILED and failed.error_code == "interrupted"


def test_live_heartbeat_protects_a_running_job(store):
    job, _ = store.create(JobParams())
    store.claim_next("alive")
    assert store.heartbeat("alive", [job.id]) == set()
    assert store.recover_orphans(stale_before=time.time() - 60, max_attempts=2) == 0
    assert store.get(job.id).state == JobState.PREPROCESSING


def test_expired_lists_only_old_terminal_jobs_with_files(store):
    old, _ = store.create(JobParams())
    store.transition(old.id, JobState.CANCELLED)
    fresh, _ = store.create(JobParams())
    assert [j.id for j in store.expired(finished_before=time.time() + 1)] == [old.id]
    store.update(old.id, files_removed_at=time.time())
    assert store.expired(finished_before=time.time() + 1) == []
    assert fresh.state == JobState.QUEUED


def test_list_filters_by_state_and_paginates(store):
    ids = [store.create(JobParams())[0].id for _ in range(5)]
    store.transition(ids[0], JobState.CANCELLED)
    page, total = store.list(states=[JobState.QUEUED], limit=2, offset=0)
    assert total == 4 and len(page) == 2
    page2, _ = store.list(states=[JobState.QUEUED], limit=2, offset=2)
    assert not {j.id for j in page} & {j.id for j in page2}


def test_old_schema_is_migrated_in_place_keeping_rows(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript(MIGRATIONS[0] + "; PRAGMA user_version = 1;")
    conn.execute(
        "INSERT INTO jobs (id, state, stage, params, created_at, updated_at) "
        "VALUES ('old', 'queued', 'queue', '{}', 1, 1)"
    )
    conn.execute(
        "INSERT INTO job_events (job_id, state, stage, progress, at) VALUES ('old', 'queued', 'queue', 0, 1)"
    )
    conn.commit()
    conn.close()
    store = JobStore(path)
    assert store.schema_version() == len(MIGRATIONS) >= 2
    assert store.get("old").state == JobState.QUEUED
    assert store.events_since("old")[0]["kind"] == "state"


def test_heartbeat_reports_jobs_the_runner_no_longer_owns(store):
    mine, _ = store.create(JobParams())
    store.claim_next("me")
    other, _ = store.create(JobParams())
    store.claim_next("someone-else")
    assert store.heartbeat("me", [mine.id, other.id]) == {other.id}
    store.transition(mine.id, JobState.FAILED, owned_by="me")
    assert store.heartbeat("me", [mine.id]) == set()  # ended by its runner: not lost, just done


def test_recovered_job_cannot_be_written_by_its_old_owner(store):
    job, _ = store.create(JobParams())
    store.claim_next("paused-owner")
    assert store.recover_orphans(stale_before=time.time() + 1, max_attempts=3) == 1
    store.claim_next("new-owner")
    with pytest.raises(LostOwnership):
        store.transition(job.id, JobState.RECONSTRUCTING, owned_by="paused-owner")
    with pytest.raises(LostOwnership):
        store.update(job.id, owned_by="paused-owner", progress=0.5)
    assert store.heartbeat("paused-owner", [job.id]) == {job.id}
    done = store.transition(job.id, JobState.RECONSTRUCTING, owned_by="new-owner")
    assert done.owner == "new-owner" and done.attempts == 2


def test_recovery_and_claims_never_give_one_job_to_two_owners(tmp_path):
    """Two stores on one file (two ingress replicas) race to recover and claim the same orphans."""

    first, second = JobStore(tmp_path / "j.sqlite3"), JobStore(tmp_path / "j.sqlite3")
    ids = [first.create(JobParams())[0].id for _ in range(6)]
    for _ in ids:
        first.claim_next("dead")
    cut = time.time() + 0.01  # the dead owner's heartbeats are older; the live claims below are newer
    time.sleep(0.02)
    claims: list[tuple[str, str]] = []

    def replica(store: JobStore, owner: str) -> None:
        store.recover_orphans(stale_before=cut, max_attempts=3)
        while (job := store.claim_next(owner)) is not None:
            claims.append((owner, job.id))

    threads = [threading.Thread(target=replica, args=(s, o)) for s, o in ((first, "a"), (second, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(job_id for _, job_id in claims) == sorted(ids)
    assert all(first.get(job_id).owner == owner for owner, job_id in claims)


def test_sqlite_errors_leave_the_store_as_store_unavailable(tmp_path):
    store = JobStore(tmp_path / "j.sqlite3")
    blocker = sqlite3.connect(tmp_path / "j.sqlite3", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another process holding the write lock past the timeout
    store._conn().execute("PRAGMA busy_timeout = 100")
    try:
        with pytest.raises(StoreUnavailable):
            store.create(JobParams())
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
