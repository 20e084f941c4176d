"""serve_app/event_feed.py with a real job store: a commit in this process wakes the job's streams at once
(no poll wait), nothing else does, and a failing listener never fails the write it follows."""

from __future__ import annotations

import asyncio

import pytest

from pipeline.params import JobParams
from serve_app.event_feed import EventFeed
from serve_app.jobs import JobStore, QueueFull

POLL_S = 60.0  # far beyond every wait below: only a wake-up can end them in time


@pytest.fixture
def store(tmp_path):
    s = JobStore(tmp_path / "jobs.sqlite3")
    yield s
    s.close()


def test_a_committed_event_wakes_the_readers_of_its_job_and_no_other(store):
    job, _ = store.create(JobParams())
    other, _ = store.create(JobParams())

    async def main() -> None:
        feed = EventFeed(store.events_since, POLL_S)
        store.add_listener(feed.notify)
        for j in (job, other):
            feed.opened(j.id)
        changed, other_changed = feed.changed(job.id), feed.changed(other.id)
        (queued,) = await feed.since(job.id, 0)
        waiting = asyncio.create_task(feed.wait(changed))
        other_waiting = asyncio.create_task(feed.wait(other_changed))
        await asyncio.sleep(0.2)
        assert not waiting.done()  # nothing committed yet: no wake-up

        await asyncio.to_thread(store.request_cancel, job.id)  # a commit from another thread
        await asyncio.wait_for(waiting, 10)
        assert [e["state"] for e in await feed.since(job.id, queued["seq"])] == ["cancelled"]
        assert not other_waiting.done()  # the other job's readers keep waiting for their poll
        other_waiting.cancel()

    asyncio.run(main())


def test_a_rolled_back_write_wakes_no_one_and_a_failing_listener_fails_no_write(store):
    woken: list[str] = []
    store.add_listener(lambda job_id: 1 / 0)  # logged, never raised into the writer
    store.add_listener(woken.append)
    job, _ = store.create(JobParams())
    assert woken == [job.id]
    with pytest.raises(QueueFull):
        store.create(JobParams(), queue_limit=1)
    assert woken == [job.id]
    assert [e["state"] for e in store.events_since(job.id)] == ["queued"]
