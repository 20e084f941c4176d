"""Stop a replica's thread work when its request is cancelled.

Serve turns `DeploymentResponse.cancel()` (the driver calls it when a job is cancelled or times out) into
asyncio cancellation of the replica's request task, but work handed to `asyncio.to_thread` runs on regardless.
`run_stoppable` hands the work a `should_stop()` it polls between frames; a cancelled request sets it, so the
replica's CPU/GPU is free again within one frame, and its `max_ongoing_requests` slot at once.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def run_stoppable(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(*args, should_stop=..., **kwargs)` in a worker thread; cancelling the caller sets `should_stop`."""
    stop = threading.Event()
    try:
        return await asyncio.to_thread(fn, *args, should_stop=stop.is_set, **kwargs)
    except asyncio.CancelledError:
        stop.set()
        raise


async def await_stoppable(call: Callable[[threading.Event], Any]) -> Any:
    """Await `call(stop)` (a `@serve.batch` method handed the event); cancelling the caller sets `stop`."""
    stop = threading.Event()
    try:
        return await call(stop)
    except asyncio.CancelledError:
        stop.set()
        raise
