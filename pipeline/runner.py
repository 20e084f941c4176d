"""A whole job in one process, and the per-stage functions the Serve deployments wrap.

The HTTP path (deployments/) and this in-process path call the same stage functions, so the CLI's local mode
and the benchmark measure the same work the service does: preprocess -> one batched encode + per-frame mesh
extraction -> fuse -> export. No Ray here.

Per-frame meshes travel between stages as small `.npz` files (vertices, faces, vertex colours) in the job
folder: results as paths, so a mesh never rides through the ingress.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.atomic import write_with
from pipeline.params import JobParams

if TYPE_CHECKING:
    import trimesh

    from pipeline.matting import BackgroundRemover
    from pipeline.preprocess import Preprocessed
    from triposr import TripoSR

logger = logging.getLogger(__name__)


def preprocess_stage(input_path: Path, params: JobParams, remover: BackgroundRemover | None) -> Preprocessed:
    """Frames chosen from the input: uint8 (N, 512, 512, 3) RGB plus a report for every candidate."""
    from pipeline.preprocess import preprocess_input

    return preprocess_input(
        Path(input_path),
        num_frames=params.num_frames,
        foreground_ratio=params.foreground_ratio,
        remove_background=params.remove_background,
        remover=remover if params.remove_background else None,
        strict=params.strict,
    )


def preprocess_payload(
    input_path: Path, params: JobParams, remover: BackgroundRemover | None
) -> dict[str, Any]:
    """`preprocess_stage` packed as the message a job's orchestrator receives (from a replica or in-process):
    {frames: uint8 (N, 512, 512, 3), scores: [N], reports: [dict], kind: str, warnings: [{code, message}],
    thumbnails: [JPEG bytes | None] per report}."""
    result = preprocess_stage(input_path, params, remover)
    return {
        "frames": result.frames,
        "scores": [float(s) for s in result.scores],
        "reports": [r.to_dict() for r in result.reports],
        "kind": str(getattr(result.kind, "value", result.kind)),
        "warnings": list(result.warnings),
        "thumbnails": result.thumbnails,
    }


def reconstruct_frames(
    model: TripoSR, frames: Sequence[np.ndarray], resolutions: Sequence[int]
) -> list[trimesh.Trimesh]:
    """One batched encode of every frame, then one marching-cubes mesh per frame at its own resolution."""
    import torch

    with torch.inference_mode():
        codes = model.encode(list(frames))  # (B, 3, C, H, W)
        return [model.extract_mesh(codes[i], resolution=int(r)) for i, r in enumerate(resolutions)]


def merge_stage(
    meshes: Sequence[trimesh.Trimesh],
    scores: Sequence[float] | None,
    params: JobParams,
    result_path: Path,
    *,
    metadata: dict[str, Any] | None = None,
    job_id: str | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Fuse (or pick/collect) the per-frame meshes and write the result; returns (path, fusion report)."""
    from pipeline.export import export_result
    from pipeline.fusion import fuse_meshes

    fused = fuse_meshes(list(meshes), strategy=params.merge, scores=scores, job_id=job_id)
    path = export_result(
        fused,
        Path(result_path),
        format=params.format,
        metadata=metadata,
        object_size_m=params.object_size_m,
        target_faces=params.target_faces,
    )
    return Path(path), dict(fused.report)


def merge_files(
    mesh_paths: Sequence[str | Path],
    scores: Sequence[float] | None,
    params: JobParams,
    result_path: Path,
    *,
    metadata: dict[str, Any] | None = None,
    job_id: str | None = None,
) -> dict[str, Any]:
    """`merge_stage` over per-frame mesh files (the export deployment's work): {result_path, report}."""
    meshes = [load_mesh(Path(p)) for p in mesh_paths]
    path, report = merge_stage(meshes, scores, params, Path(result_path), metadata=metadata, job_id=job_id)
    return {"result_path": str(path), "report": report}


def save_mesh(mesh: trimesh.Trimesh, path: Path) -> Path:
    """Write a per-frame mesh as npz (exact arrays, empty meshes allowed); atomic via rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    colors = getattr(mesh.visual, "vertex_colors", None)
    arrays = {"vertices": np.asarray(mesh.vertices, np.float32), "faces": np.asarray(mesh.faces, np.int64)}
    if colors is not None and len(colors) == len(mesh.vertices):
        arrays["colors"] = np.asarray(colors, np.uint8)
    return write_with(path, lambda f: np.savez(f, **arrays))


def load_mesh(path: Path) -> trimesh.Trimesh:
    import trimesh

    with np.load(Path(path)) as data:
        colors = data["colors"] if "colors" in data.files else None
        return trimesh.Trimesh(data["vertices"], data["faces"], vertex_colors=colors, process=False)


def result_name(params: JobParams) -> str:
    return f"result.{params.format.value}"


def run_pipeline(
    input_path: Path,
    output_path: Path,
    params: JobParams,
    *,
    model: TripoSR,
    remover: BackgroundRemover | None,
) -> dict[str, Any]:
    """Run one job start to finish in this process; returns its report (frames, fusion, timings in s)."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    pre = preprocess_stage(Path(input_path), params, remover)
    timings["preprocess"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    meshes = reconstruct_frames(model, pre.frames, [params.mc_resolution] * len(pre.frames))
    timings["reconstruct"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    path, fusion = merge_stage(
        meshes, pre.scores, params, Path(output_path),
        metadata={"params": params.to_dict(), "warnings": pre.warnings},
    )  # fmt: skip
    timings["merge"] = time.perf_counter() - t2
    timings["total"] = time.perf_counter() - t0
    logger.info("pipeline done: %d frames -> %s in %.2fs", len(pre.frames), path, timings["total"])
    return {
        "result_path": str(path),
        "kind": pre.kind,
        "frames": [r.to_dict() for r in pre.reports],
        "fusion": fusion,
        "timings": timings,
        "warnings": pre.warnings,
    }
