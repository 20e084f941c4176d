"""Reconstruct deployment - GPU (fractional), batched TripoSR forward + per-frame mesh extraction.

The model is loaded once per replica from `Settings.model_source`. `@serve.batch` packs frames from every job
into one `encode` call; batch size and wait are `user_config` knobs (`reconfigure`), changed without a
restart. When the replica holds a fraction of a GPU, torch's caching allocator is capped to that fraction so
two replicas sharing a card cannot starve each other. `batch_stats()` reports which jobs each batch held
(proof of cross-job batching).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray import serve

from pipeline.runner import reconstruct_frames, save_mesh
from serve_app.metrics import batch_size_histogram
from serve_app.settings import Settings

logger = logging.getLogger(__name__)

DEFAULT_BATCH = {"max_batch_size": 8, "batch_wait_timeout_s": 0.05}


@serve.deployment(
    ray_actor_options={"num_cpus": 1, "num_gpus": 0.5},
    max_ongoing_requests=32,  # >= max_batch_size * max_concurrent_batches, so a full batch can form
    user_config=DEFAULT_BATCH,
    health_check_period_s=30,
)
class Reconstruct:
    def __init__(self, settings: Settings) -> None:
        import torch

        from triposr import load_model

        assigned = ray.get_runtime_context().get_assigned_resources()
        gpu_share = float(assigned.get("GPU", 0.0))
        torch.set_num_threads(settings.torch_threads or max(1, math.ceil(assigned.get("CPU", 1))))
        self.model = load_model(
            settings.model_source, device=settings.model_device, half=settings.model_half,
            chunk_size=settings.chunk_size,
        )  # fmt: skip
        if self.model.device.type == "cuda" and 0 < gpu_share < 1:
            torch.cuda.set_per_process_memory_fraction(gpu_share, self.model.device)
        self._lock = threading.Lock()  # one forward on the device at a time (batches + health probe)
        self._batches: collections.deque[dict[str, Any]] = collections.deque(maxlen=1000)
        self._batch_hist = batch_size_histogram()
        # Warm-up encode: first-call costs leave the request path, and its scene code feeds the health probe.
        grey = np.full((64, 64, 3), 128, np.uint8)
        with torch.inference_mode():
            self._probe_code = self.model.encode([grey])[0]
        logger.info("reconstruct replica ready: device=%s gpu_share=%.2f", self.model.device, gpu_share)

    def reconfigure(self, config: dict[str, Any]) -> None:
        cfg = {**DEFAULT_BATCH, **(config or {})}
        self._batched.set_max_batch_size(int(cfg["max_batch_size"]))
        self._batched.set_batch_wait_timeout_s(float(cfg["batch_wait_timeout_s"]))
        self._batch_config = cfg
        logger.info(
            "batching: max_batch_size=%s wait=%ss", cfg["max_batch_size"], cfg["batch_wait_timeout_s"]
        )

    async def __call__(
        self, job_id: str, frame: np.ndarray, mesh_path: str, mc_resolution: int
    ) -> dict[str, Any]:
        """One frame -> its mesh written to `mesh_path`; returns {mesh_path, vertices, faces, batch_size}."""
        return await self._batched(job_id, frame, mesh_path, mc_resolution)

    @serve.batch(max_batch_size=DEFAULT_BATCH["max_batch_size"], batch_wait_timeout_s=0.05)
    async def _batched(
        self, job_ids: list[str], frames: list[np.ndarray], mesh_paths: list[str], resolutions: list[int]
    ) -> list[dict[str, Any]]:
        jobs = collections.Counter(job_ids)
        self._batches.append({"size": len(frames), "jobs": dict(jobs)})
        self._batch_hist.observe(len(frames))
        logger.info("batch of %d frames from %d job(s): %s", len(frames), len(jobs), dict(jobs))
        return await asyncio.to_thread(self._run, frames, mesh_paths, resolutions, len(frames))

    def _run(
        self, frames: list[np.ndarray], mesh_paths: list[str], resolutions: list[int], batch_size: int
    ) -> list[dict[str, Any]]:
        with self._lock:
            meshes = reconstruct_frames(self.model, frames, resolutions)
        out = []
        for mesh, path in zip(meshes, mesh_paths, strict=True):
            save_mesh(mesh, Path(path))
            out.append({"mesh_path": path, "vertices": len(mesh.vertices), "faces": len(mesh.faces),
                        "batch_size": batch_size})  # fmt: skip
        return out

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
            with torch.inference_mode():
                out = self.model.query(points, self._probe_code)
            if not torch.isfinite(out["density"]).all():
                raise RuntimeError("model health probe returned non-finite density")
        finally:
            self._lock.release()
