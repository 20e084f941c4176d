"""Reconstruct deployment - GPU (fractional), batched TripoSR forward + per-frame mesh extraction.

The model is loaded once per replica from `Settings.model_source`. `@serve.batch` packs frames from every job
into one `encode` call; batch size and wait are `user_config` knobs (`reconfigure`), changed without a
restart. When the replica holds a fraction of a GPU, torch's caching allocator is capped to that fraction so
two replicas sharing a card cannot starve each other. `batch_stats()` reports which jobs each batch held
(proof of cross-job batching).

Each frame's mesh goes back as the compact arrays of `pipeline.meshcodec` (no file, no shared disk). `single`
is the unbatched entry the driver's retries use after a lost call: a frame retried alone cannot take other
jobs' frames down with it if it is what kills the replica. A cancelled request's frame is skipped between
frames of its batch (`await_stoppable`).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import os
import threading
from typing import Any

import numpy as np
import ray
from ray import serve

from deployments import faults
from deployments.cancel import await_stoppable
from deployments.metrics import batch_size_histogram
from deployments.options import ReconstructOptions
from pipeline.meshcodec import MeshArrays, encode_mesh
from pipeline.reconstructor import Reconstructor
from triposr.host_memory import MALLOC_ENV

logger = logging.getLogger(__name__)

DEFAULT_BATCH = {"max_batch_size": 8, "batch_wait_timeout_s": 0.05}


@serve.deployment(
    # the model's host memory kept for reuse from the process's start (see triposr/host_memory.py)
    ray_actor_options={"num_cpus": 1, "num_gpus": 0.5, "runtime_env": {"env_vars": MALLOC_ENV}},
    max_ongoing_requests=32,  # >= max_batch_size * max_concurrent_batches, so a full batch can form
    user_config=DEFAULT_BATCH,
    health_check_period_s=30,
)
class Reconstruct:
    def __init__(self, options: ReconstructOptions) -> None:
        import torch

        from triposr import load_model

        assigned = ray.get_runtime_context().get_assigned_resources()
        gpu_share = float(assigned.get("GPU", 0.0))
        torch.set_num_threads(options.torch_threads or max(1, math.ceil(assigned.get("CPU", 1))))
        self.model = load_model(
            options.model_source, device=options.model_device, half=options.model_half,
            chunk_size=options.chunk_size,
        )  # fmt: skip
        if self.model.device.type == "cuda" and 0 < gpu_share < 1:
            torch.cuda.set_per_process_memory_fraction(gpu_share, self.model.device)
        # device work (encode, density and colour queries) under one lock; marching cubes and mesh building
        # on a CPU pool of the replica's size, so two batches in flight overlap (max_concurrent_batches=2;
        # a CPU-only replica keeps the whole batch under the lock, see pipeline/reconstructor.py)
        self._recon = Reconstructor(self.model, cpu_workers=max(1, math.ceil(assigned.get("CPU", 1))))
        self._lock = self._recon.device_lock  # the health probe skips while the device is busy
        self._batches: collections.deque[dict[str, Any]] = collections.deque(maxlen=1000)
        self._batch_hist = batch_size_histogram()
        self._faults = faults.armed()  # test-only, see deployments/faults.py
        # Warm-up encode: first-call costs leave the request path, and its scene code feeds the health probe.
        # On the reconstructor's model thread, like every model call (one OpenMP team: see its docstring).
        grey = np.full((64, 64, 3), 128, np.uint8)
        self._probe_code = self._recon.on_device(self.model.encode, [grey])[0]
        logger.info("reconstruct replica ready: device=%s gpu_share=%.2f", self.model.device, gpu_share)

    def reconfigure(self, config: dict[str, Any]) -> None:
        cfg = {**DEFAULT_BATCH, **(config or {})}
        self._batched.set_max_batch_size(int(cfg["max_batch_size"]))
        self._batched.set_batch_wait_timeout_s(float(cfg["batch_wait_timeout_s"]))
        self._batch_config = cfg
        logger.info(
            "batching: max_batch_size=%s wait=%ss", cfg["max_batch_size"], cfg["batch_wait_timeout_s"]
        )

    async def __call__(self, job_id: str, frame: np.ndarray, mc_resolution: int) -> MeshArrays:
        """One frame uint8 (512, 512, 3) -> its mesh as codec arrays; batched with other requests' frames."""
        return await await_stoppable(lambda stop: self._batched(job_id, frame, mc_resolution, stop))

    async def single(self, job_id: str, frame: np.ndarray, mc_resolution: int) -> MeshArrays:
        """The same work without batching (retries after a lost call run a frame on its own)."""
        logger.info("single-frame retry job_id=%s", job_id)
        (out,) = await await_stoppable(
            lambda stop: asyncio.to_thread(self._run, [job_id], [frame], [mc_resolution], [stop])
        )
        return out

    @serve.batch(
        max_batch_size=DEFAULT_BATCH["max_batch_size"], batch_wait_timeout_s=0.05, max_concurrent_batches=2
    )
    async def _batched(
        self,
        job_ids: list[str],
        frames: list[np.ndarray],
        resolutions: list[int],
        stops: list[threading.Event],
    ) -> list[MeshArrays | None]:
        jobs = collections.Counter(job_ids)
        self._batches.append({"size": len(frames), "jobs": dict(jobs)})
        self._batch_hist.observe(len(frames))
        logger.info("batch of %d frames from %d job(s): %s", len(frames), len(jobs), dict(jobs))
        return await asyncio.to_thread(self._run, job_ids, frames, resolutions, stops)

    def _run(
        self,
        job_ids: list[str],
        frames: list[np.ndarray],
        resolutions: list[int],
        stops: list[threading.Event],
    ) -> list[MeshArrays | None]:
        if self._faults:
            faults.exit_on_poison(frames, job_ids)
        # Holds the device only for device work; a cancelled request's frame is dropped between steps.
        meshes = self._recon.reconstruct(frames, resolutions, skip=lambda i: stops[i].is_set())
        # A skipped frame's caller was cancelled and is gone: None is never read.
        return [None if m is None else encode_mesh(m) for m in meshes]

    def batch_stats(self) -> dict[str, Any]:
        """Batches seen by this replica: how many, their sizes, and how many mixed frames of several jobs."""
        batches = list(self._batches)
        return {
            "pid": os.getpid(),  # unchanged across reconfigure: the replica was not restarted
            "config": dict(self._batch_config),
            "batches": len(batches),
            "frames": sum(b["size"] for b in batches),
            "max_size": max((b["size"] for b in batches), default=0),
            "multi_job_batches": sum(1 for b in batches if len(b["jobs"]) > 1),
            "device_busy_s": self._recon.stats()["device_s"],
            "recent": batches[-20:],
        }

    async def check_health(self) -> None:
        """Raise unless the model answers a tiny query; a busy device (batch running) counts as alive."""
        await asyncio.to_thread(self._probe)

    def _probe(self) -> None:
        import torch

        if not self._lock.acquire(blocking=False):
            return
        try:
            points = torch.zeros((8, 3), device=self.model.device)
            out = self._recon.on_device(self.model.query, points, self._probe_code)
            if not torch.isfinite(out["density"]).all():
                raise RuntimeError("model health probe returned non-finite density")
        finally:
            self._lock.release()
