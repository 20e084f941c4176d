"""Export deployment - CPU: fuse the per-frame meshes of one job and write the result into its job folder;
also compares two reconstructions (`compare`).

Meshes arrive as paths (npz files written by the reconstruct deployment) and the result leaves as a path: no
mesh rides through the ingress. A comparison takes and returns values (two mesh files' bytes in; heat-map GLB,
report and chart PNG out): it is the same kind of CPU mesh work as fusion, so it shares these replicas.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from ray import serve

from pipeline.params import CompareParams, JobParams
from pipeline.runner import merge_files
from serve_app.settings import Settings

logger = logging.getLogger(__name__)


@serve.deployment(ray_actor_options={"num_cpus": 1, "num_gpus": 0}, max_ongoing_requests=2)
class Export:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def __call__(
        self,
        job_id: str,
        mesh_paths: list[str],
        scores: list[float] | None,
        params: dict[str, Any],
        result_path: str,
        metadata: dict[str, Any],
    ) -> dict[str, Any]:
        """Returns {result_path: str, report: dict}."""
        logger.info("export job_id=%s meshes=%d", job_id, len(mesh_paths))
        job_params = JobParams.from_mapping(params)
        return await asyncio.to_thread(
            merge_files, mesh_paths, scores, job_params, Path(result_path), metadata=metadata, job_id=job_id
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
