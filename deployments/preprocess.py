"""Preprocess deployment - CPU: decode the input, pick frames, remove backgrounds, frame the object.

The input arrives as bytes through Ray (no path into another node's disk) and is unpacked into this replica's
own temp folder. One rembg session per replica, made in `__init__`. `num_gpus` is 0, so Ray hides every GPU
from this actor: onnxruntime and torch stay on CPU even on GPU nodes. Frames leave as one uint8 array
(N, 512, 512, 3) through the object store. A cancelled request stops between frames (`run_stoppable`).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import ray
from ray import serve

from deployments.cancel import run_stoppable
from deployments.options import PreprocessOptions
from pipeline.params import JobParams
from pipeline.runner import InputFiles, preprocess_files

logger = logging.getLogger(__name__)


@serve.deployment(
    ray_actor_options={"num_cpus": 1, "num_gpus": 0},
    max_ongoing_requests=2,  # each request is CPU-bound; more would only queue inside the replica
)
class Preprocess:
    def __init__(self, options: PreprocessOptions) -> None:
        from pipeline.matting import BackgroundRemover

        # onnxruntime would take every core of the node; keep to this replica's CPU share
        assigned = ray.get_runtime_context().get_assigned_resources()
        self.remover = BackgroundRemover(
            model_name=options.rembg_model,
            model_dir=options.rembg_dir,
            num_threads=options.rembg_threads or max(1, math.ceil(assigned.get("CPU", 1))),
        )

    async def __call__(self, job_id: str, files: InputFiles, params: dict[str, Any]) -> dict[str, Any]:
        """Returns {frames: uint8 (N, 512, 512, 3), scores: [N], reports: [dict], kind: str}."""
        job_params = JobParams.from_mapping(params)
        size = sum(len(data) for _, data in files)
        logger.info("preprocess job_id=%s files=%d bytes=%d", job_id, len(files), size)
        return await run_stoppable(preprocess_files, files, job_params, self.remover)
