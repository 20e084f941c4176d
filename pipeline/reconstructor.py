"""Frames -> per-frame meshes for a long-lived model holder (the Reconstruct replica), with the device held
only for device work, so one batch's encode and density queries run while CPU threads mesh the previous one.

Per batch: [device] encode + density queries of all frames (shared decoder calls) -> [CPU pool] marching
cubes per frame -> [device] colour queries of all frames -> [CPU pool] mesh objects. Concurrent callers (one
thread per in-flight batch) share one device lock and one bounded CPU pool. No Ray here.

Every model call runs on one thread of the reconstructor's own (`on_device`), whichever thread asks. On the
CPU this keeps one OpenMP team: libgomp counts the threads of all teams in the process, and with more than
there are cores it stops spinning at barriers, so the forward's threads sleep and wake at each of its
thousands of barriers. Measured with the full-size model on 2 cores: warm-up on the main thread and frames
on an executor thread (a Serve replica's natural layout) took 11.4-12.9 s per frame with 21k thread sleeps,
the same work on one thread 9.8-10.2 s with 13. On a GPU, one thread issuing all kernels is the usual layout.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

if TYPE_CHECKING:
    import trimesh

    from triposr import TripoSR


T = TypeVar("T")


def _never(i: int) -> bool:
    return False


class Reconstructor:
    """Thread-safe `reconstruct(frames, resolutions) -> [trimesh.Trimesh]` over one model.

    `device_lock` is re-entrant: holding it around a whole `reconstruct` call gives the unpipelined order
    (the benchmark's "before"), and a health probe can take it without waiting behind CPU work.

    overlap: None (default) overlaps only when the model is not on the CPU. On a CPU-only replica the
    "device" is the same cores the pool uses: measured on the 2-core dev box (benchmarks/bench_replica.py,
    tiny model, mesh@128, shared machine) overlapping gave 0.62x the frames/s at the same CPU seconds.
    """

    def __init__(self, model: TripoSR, cpu_workers: int, overlap: bool | None = None) -> None:
        self.model = model
        self.overlap = model.device.type != "cpu" if overlap is None else bool(overlap)
        self.device_lock = threading.RLock()
        self._pool = ThreadPoolExecutor(max_workers=max(1, int(cpu_workers)), thread_name_prefix="mesh-cpu")
        self._device = ThreadPoolExecutor(max_workers=1, thread_name_prefix="device")
        self._device_thread: int | None = None
        self._stats_lock = threading.Lock()
        self._device_s = 0.0
        self._batches = 0
        self._frames = 0

    def reconstruct(
        self,
        frames: Sequence[np.ndarray],
        resolutions: Sequence[int],
        skip: Callable[[int], bool] | None = None,
    ) -> list[trimesh.Trimesh | None]:
        """uint8 (H, W, 3) RGB frames -> one mesh per frame (TripoSR native frame, RGBA vertex colours), each
        at its own marching-cubes resolution. The same meshes as `pipeline.runner.reconstruct_frames`.

        `skip(i)` is asked between the steps: frame i, once skipped (its request was cancelled), does no more
        work and gets None, so a cancelled job stops using the device."""
        if not self.overlap:
            with self.device_lock:
                return self._reconstruct(frames, resolutions, skip or _never)
        return self._reconstruct(frames, resolutions, skip or _never)

    def _reconstruct(
        self, frames: Sequence[np.ndarray], resolutions: Sequence[int], skip: Callable[[int], bool]
    ) -> list[trimesh.Trimesh | None]:
        import torch

        from triposr.model import surface_mesh

        out: list[trimesh.Trimesh | None] = [None] * len(frames)
        live = [i for i in range(len(frames)) if not skip(i)]
        if not live:
            return out
        with torch.inference_mode():
            codes = self._device_work(self.model.encode, [frames[i] for i in live])  # (B, 3, C, H, W)
            keep = [k for k, i in enumerate(live) if not skip(i)]
            if not keep:
                return out
            volumes = self._device_work(  # a frame cancelled meanwhile stops refining at the next round
                self.model.extract_volumes,
                [codes[k] for k in keep], [int(resolutions[live[k]]) for k in keep],
                skip=lambda j: skip(live[keep[j]]),
            )  # fmt: skip
            alive = [j for j, k in enumerate(keep) if not skip(live[k])]
            surfaces = dict(zip(alive, self._pool.map(lambda j: volumes[j].surface(), alive), strict=True))
            kept = [j for j in alive if not skip(live[keep[j]])]
            if not kept:
                return out
            colors = self._device_work(
                self.model.vertex_colors, [codes[keep[j]] for j in kept], [surfaces[j].vertices for j in kept]
            )
            meshes = list(self._pool.map(surface_mesh, [surfaces[j] for j in kept], colors))
        for j, mesh in zip(kept, meshes, strict=True):
            out[live[keep[j]]] = mesh
        with self._stats_lock:
            self._batches += 1
            self._frames += len(meshes)
        return out

    def stats(self) -> dict[str, Any]:
        """Batches and frames done, and seconds the device lock was held for device work."""
        with self._stats_lock:
            return {"batches": self._batches, "frames": self._frames, "device_s": round(self._device_s, 3)}

    def on_device(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """fn(*args, **kwargs) on the thread that does all of this model's work (see the module docstring);
        for callers beside `reconstruct` (a warm-up, a health probe)."""
        if threading.get_ident() == self._device_thread:
            return fn(*args, **kwargs)
        return self._device.submit(self._on_device_thread, fn, args, kwargs).result()

    def _on_device_thread(self, fn: Callable[..., T], args: tuple, kwargs: dict[str, Any]) -> T:
        self._device_thread = threading.get_ident()
        return fn(*args, **kwargs)

    def _device_work(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`on_device` under the device lock, its time added to the device seconds."""
        with self.device_lock:
            start = time.perf_counter()
            try:
                return self.on_device(fn, *args, **kwargs)
            finally:
                with self._stats_lock:
                    self._device_s += time.perf_counter() - start

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._device.shutdown(wait=True)
