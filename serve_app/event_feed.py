"""One job-store poll per job, however many SSE/WebSocket clients follow it.

Every stream used to query SQLite every 0.25 s on its own: 100 streams on 4 jobs made 400 queries a second,
each a thread hop. `EventFeed.since(job_id, after)` serves every stream of a job from one cached event list
that is refreshed at most once per `poll_s` (a per-job lock keeps concurrent streams from stampeding);
finished jobs' lists are dropped when their last reader is done. A commit of this process's job store wakes
the job's readers at once (`notify`, a store listener), so a stream tells of a finished job without waiting
for the next poll; the poll remains for writes of other ingress replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Job:
    events: list[dict[str, Any]] = field(default_factory=list)
    fetched_at: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    readers: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)  # replaced by a fresh one at each wake


class EventFeed:
    def __init__(self, events_since: Callable[[str, int], list[dict[str, Any]]], poll_s: float) -> None:
        self._events_since = events_since  # the store's sync read, run in a thread
        self._poll_s = poll_s
        self._jobs: dict[str, _Job] = {}
        self._loop = asyncio.get_running_loop()  # built in the app's lifespan; notify() comes from threads

    def notify(self, job_id: str) -> None:
        """Thread-safe: events of `job_id` were committed here; its readers fetch them now."""
        self._loop.call_soon_threadsafe(self._wake, job_id)

    def _wake(self, job_id: str) -> None:
        job = self._jobs.get(job_id)
        if job is not None:
            job.fetched_at = 0.0
            job.changed.set()
            job.changed = asyncio.Event()

    def changed(self, job_id: str) -> asyncio.Event:
        """Set at the next wake of `job_id`; take it before reading `since`, then `wait` on it."""
        return self._jobs.setdefault(job_id, _Job()).changed

    async def wait(self, changed: asyncio.Event) -> None:
        """Until `changed` is set or one poll interval has passed."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), self._poll_s)

    async def since(self, job_id: str, after: int) -> list[dict[str, Any]]:
        """Events of `job_id` with seq > `after`, at most `poll_s` old."""
        job = self._jobs.setdefault(job_id, _Job())
        async with job.lock:
            if time.monotonic() - job.fetched_at >= self._poll_s:
                last = job.events[-1]["seq"] if job.events else 0
                job.events += await asyncio.to_thread(self._events_since, job_id, last)
                job.fetched_at = time.monotonic()
        return [e for e in job.events if e["seq"] > after]

    def opened(self, job_id: str) -> None:
        self._jobs.setdefault(job_id, _Job()).readers += 1

    def closed(self, job_id: str) -> None:
        job = self._jobs.get(job_id)
        if job is not None:
            job.readers -= 1
            if job.readers <= 0:
                del self._jobs[job_id]
