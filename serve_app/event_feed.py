"""One job-store poll per job, however many SSE/WebSocket clients follow it.

Every stream used to query SQLite every 0.25 s on its own: 100 streams on 4 jobs made 400 queries a second,
each a thread hop. `EventFeed.since(job_id, after)` serves every stream of a job from one cached event list
that is refreshed at most once per `poll_s` (a per-job lock keeps concurrent streams from stampeding);
finished jobs' lists are dropped when their last reader is done.
"""

from __future__ import annotations

import asyncio
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


class EventFeed:
    def __init__(self, events_since: Callable[[str, int], list[dict[str, Any]]], poll_s: float) -> None:
        self._events_since = events_since  # the store's sync read, run in a thread
        self._poll_s = poll_s
        self._jobs: dict[str, _Job] = {}

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
