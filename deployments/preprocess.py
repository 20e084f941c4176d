"""Preprocess deployment - CPU: decode the input, pick frames, remove backgrounds, frame the object.

One rembg session per replica, made in `__init__`. `num_gpus` is 0, so Ray hides every GPU from this actor
(CUDA_VISIBLE_DEVICES is empty): onnxruntime and torch stay on CPU even on GPU nodes. Frames leave as one
uint8 array (N, 512, 512, 3) through the object store.
"""

from __future__ import annotations

import asyncio
import logging
import math
from pathlib import Path
from typing import Any

import ray
from ray import serve

from pipeline.params import JobParams
from pipeline.runner import preprocess_payload
from serve_app.settings import Settings

logger = logging.getLogger(__name__)


@serve.deployment(
    ray_actor_options={"num_cpus": 1, "num_gpus": 0},
    max_ongoing_requests=2,  # each request is CPU-bound; more would only queue inside the replica
)
class Preprocess:
    def __init__(self, settings: Settings) -> None:
        from pipeline.matting import BackgroundRemover

        # onnxruntime would take every core of the node; keep to this replica's CPU share
        assigned = ray.get_runtime_context().get_assigned_resources()
        self.remover = BackgroundRemover(
            model_name=settings.rembg_model,
            model_dir=settings.rembg_dir,
            num_threads=settings.rembg_threads or max(1, math.ceil(assigned.get("CPU", 1))),
        )

    async def __call__(self, job_id: str, input_path: str, params: dict[str, Any]) -> dict[str, Any]:
        """Returns {frames: uint8 (N, 512, 512, 3), scores: [N], reports: [dict], kind: str}."""
        job_params = JobParams.from_mapping(params)
        logger.info("preprocess job_id=%s input=%s", job_id, Path(input_path).name)
        return await asyncio.to_thread(preprocess_payload, Path(input_path), job_params, self.remover)
