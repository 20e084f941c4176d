"""Bounded, ordered thread parallelism for CPU stages whose per-item work releases the GIL (numpy, scipy's
KD-trees and ndimage, PyMCubes): results come back in input order, so sums over them are computed in the same
order as a sequential loop and give the same numbers."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

MAX_WORKERS = 8  # beyond this the per-frame stages of one job stop gaining (8 frames by default)


def cpu_workers() -> int:
    """Threads for one CPU stage: the CPUs this process may run on (its affinity, which Ray sets per
    worker), at most MAX_WORKERS."""
    try:
        available = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        available = os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, available))


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """`map(fn, items)` on up to `workers` threads, yielding in input order. At most `workers` items are in
    flight or waiting to be consumed, so memory stays bounded by the worker count, not the item count.
    `workers` <= 1 runs in the calling thread."""
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cpu-stage") as pool:
        pending: deque[Future[R]] = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
