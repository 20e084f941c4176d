"""Export deployment - CPU: fuse the per-frame meshes of one job into the result file's bytes.

Meshes arrive as the compact arrays of `pipeline.meshcodec` and the result leaves as bytes plus the fusion
report: this replica touches no shared disk; the ingress writes the job folder.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ray import serve

from pipeline.meshcodec import MeshArrays
from pipeline.params import JobParams
from pipeline.runner import merge_arrays

logger = logging.getLogger(__name__)


@serve.deployment(ray_actor_options={"num_cpus": 1, "num_gpus": 0}, max_ongoing_requests=2)
class Export:
    async def __call__(
        self,
        job_id: str,
        meshes: list[MeshArrays],
        scores: list[float] | None,
        params: dict[str, Any],
        metadata: dict[str, Any],
    ) -> dict[str, Any]:
        """Returns {data: bytes (GLB/OBJ/PLY), report: dict}."""
        logger.info("export job_id=%s meshes=%d", job_id, len(meshes))
        job_params = JobParams.from_mapping(params)
        return await asyncio.to_thread(
            merge_arrays, meshes, scores, job_params, metadata=metadata, job_id=job_id
        )
