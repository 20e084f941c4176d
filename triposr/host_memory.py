"""Keep freed host memory for reuse in a process that runs the model on the CPU.

glibc returns every block over its (dynamic) mmap threshold to the kernel when freed and trims the heap top,
so each forward pass faults its activations in again: ~800k minor page faults and 1.4 s of kernel time per
full-size frame (encode + mesh@128) on a 2-core machine, a tenth of the wall time. Serving the same shapes
again and again, a model process is better off keeping its peak: blocks up to 32 MiB (glibc's ceiling for
this setting) come from the heap, the heap is never trimmed, and it grows in 256 MiB steps. Measured: page
faults per frame 800k -> 0, wall 11.5-12.3 s -> 10.7-11.1 s, the same numbers.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -2, -3, -8
MMAP_THRESHOLD = 32 << 20  # glibc refuses more (HEAP_MAX_SIZE / 2 on 64-bit)
TOP_PAD = 256 << 20
TRIM_THRESHOLD = (1 << 31) - 1  # mallopt takes an int: 2 GiB, in effect never
ARENA_MAX = 1  # threads' own arenas give memory back anyway (a forward on a worker thread faulted 460k pages)

# The same, for a process started to run the model (a Ray replica's runtime_env): glibc reads these at
# start-up, before any thread has made an arena of its own, which mallopt can no longer undo.
MALLOC_ENV = {
    "MALLOC_ARENA_MAX": str(ARENA_MAX),
    "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
    "MALLOC_TOP_PAD_": str(TOP_PAD),
    "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD),
}


def keep_freed_memory() -> bool:
    """Tune this process's glibc allocator as above; False (nothing changed) without glibc's mallopt."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        return False
    settings = (
        (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        (_M_TOP_PAD, TOP_PAD),
        (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        (_M_ARENA_MAX, ARENA_MAX),
    )
    ok = all([mallopt(param, value) for param, value in settings])  # every one tried, even after a refusal
    logger.debug("host allocator keeps freed memory: %s", ok)
    return ok
