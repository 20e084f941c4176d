"""Export deployment - CPU: fuse the per-frame meshes of one job into the result file's bytes; also compares
two reconstructions (`compare`).

Meshes arrive as the compact arrays of `pipeline.meshcodec` and the result leaves as bytes plus the fusion
report: this replica touches no shared disk; the ingress writes the job folder. A comparison takes and returns
values too (two mesh files' bytes in; heat-map GLB, report and chart PNG out): it is the same kind of CPU mesh
work as fusion, so it shares these replicas.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ray import serve

from pipeline.meshcodec import MeshArrays
from pipeline.params import CompareParams, JobParams
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

    async def compare(
        self, job_id: str, reference: bytes, candidate: bytes, params: dict[str, Any]
    ) -> dict[str, Any]:
        """Returns {glb: bytes, report: dict, chart: bytes} (`pipeline.compare_export.compare_payload`)."""
        from pipeline.compare_export import compare_payload

        options = CompareParams.from_mapping(params)
        logger.info("compare job_id=%s bytes=%d+%d", job_id, len(reference), len(candidate))
        return await asyncio.to_thread(
            compare_payload, reference, candidate, object_size_m=options.object_size_m,
            threshold_mm=options.threshold_mm,
        )  # fmt: skip
