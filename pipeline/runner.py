"""A whole job in one process, and the per-stage functions the Serve deployments wrap.

The HTTP path (deployments/) and this in-process path call the same stage functions, so the CLI's local mode
and the benchmark measure the same work the service does: preprocess -> one batched encode + per-frame mesh
extraction -> fuse -> export. No Ray here.

Values travel, paths stay home: the input arrives as bytes (`preprocess_files`), per-frame meshes travel as
the compact arrays of `pipeline.meshcodec`, and the result leaves as bytes (`merge_arrays`); only the caller
that owns a disk (the ingress, the CLI, a batch writer) writes files, through `pipeline.atomic.write_atomic`.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.atomic import write_atomic
from pipeline.errors import InvalidInput
from pipeline.meshcodec import MeshArrays, decode_mesh
from pipeline.params import JobParams

if TYPE_CHECKING:
    import trimesh

    from pipeline.matting import BackgroundRemover
    from pipeline.preprocess import Preprocessed
    from triposr import TripoSR

logger = logging.getLogger(__name__)


def preprocess_stage(
    input_path: Path,
    params: JobParams,
    remover: BackgroundRemover | None,
    should_stop: Callable[[], bool] | None = None,
) -> Preprocessed:
    """Frames chosen from the input: uint8 (N, 512, 512, 3) RGB plus a report for every candidate."""
    from pipeline.preprocess import preprocess_input

    return preprocess_input(
        Path(input_path),
        num_frames=params.num_frames,
        foreground_ratio=params.foreground_ratio,
        remove_background=params.remove_background,
        remover=remover if params.remove_background else None,
        strict=params.strict,
        should_stop=should_stop,
    )


def preprocess_payload(
    input_path: Path,
    params: JobParams,
    remover: BackgroundRemover | None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """`preprocess_stage` packed as the message a job's driver receives (from a replica or in-process):
    {frames: uint8 (N, 512, 512, 3), scores: [N], reports: [dict], kind: str, warnings: [{code, message}],
    thumbnails: [JPEG bytes | None] per report}."""
    result = preprocess_stage(input_path, params, remover, should_stop)
    return {
        "frames": np.ascontiguousarray(result.frames, np.uint8),
        "scores": [float(s) for s in result.scores],
        "reports": [r.to_dict() for r in result.reports],
        "kind": str(getattr(result.kind, "value", result.kind)),
        "warnings": list(result.warnings),
        "thumbnails": result.thumbnails,
    }


InputFiles = list[tuple[str, bytes]]  # (file name, content): one video / image / zip, or several images


def preprocess_files(
    files: InputFiles,
    params: JobParams,
    remover: BackgroundRemover | None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """`preprocess_payload` over input bytes (what travels to a replica instead of a path into another
    node's disk): written into a private temp folder that is gone when this returns."""
    if not files:
        raise InvalidInput("no input file")
    with tempfile.TemporaryDirectory(prefix="triposr-in-") as tmp:
        folder = Path(tmp)
        for i, (name, data) in enumerate(files):
            (folder / f"{i:04d}_{Path(name).name or 'input'}").write_bytes(data)
        paths = sorted(folder.iterdir())
        return preprocess_payload(paths[0] if len(paths) == 1 else folder, params, remover, should_stop)


def reconstruct_frames(
    model: TripoSR,
    frames: Sequence[np.ndarray],
    resolutions: Sequence[int],
    *,
    skip: Callable[[int], bool] | None = None,
) -> list[trimesh.Trimesh | None]:
    """One batched encode of every frame, then one marching-cubes mesh per frame at its own resolution (the
    frames' density queries batched together).

    `skip(i)` is asked before the encode and again before the meshes: a cancelled request's frame gets None,
    so a cancelled job stops using the device.
    """
    import torch

    skip = skip or (lambda i: False)
    live = [i for i in range(len(frames)) if not skip(i)]
    out: list[trimesh.Trimesh | None] = [None] * len(frames)
    if not live:
        return out
    with torch.inference_mode():
        codes = model.encode([frames[i] for i in live])  # (B, 3, C, H, W)
        keep = [k for k, i in enumerate(live) if not skip(i)]
        meshes = model.extract_meshes([codes[k] for k in keep], [int(resolutions[live[k]]) for k in keep])
    for k, mesh in zip(keep, meshes, strict=True):
        out[live[k]] = mesh
    return out


def merge_stage(
    meshes: Sequence[trimesh.Trimesh],
    scores: Sequence[float] | None,
    params: JobParams,
    *,
    metadata: dict[str, Any] | None = None,
    job_id: str | None = None,
) -> tuple[bytes, dict[str, Any]]:
    """Fuse (or pick/collect) the per-frame meshes; returns (result file bytes, fusion report)."""
    from pipeline.export import export_bytes
    from pipeline.fusion import fuse_meshes

    fused = fuse_meshes(list(meshes), strategy=params.merge, scores=scores, job_id=job_id)
    data = export_bytes(
        fused, format=params.format, metadata=metadata, object_size_m=params.object_size_m,
        target_faces=params.target_faces,
    )  # fmt: skip
    return data, dict(fused.report)


def merge_arrays(
    meshes: Sequence[MeshArrays],
    scores: Sequence[float] | None,
    params: JobParams,
    *,
    metadata: dict[str, Any] | None = None,
    job_id: str | None = None,
) -> dict[str, Any]:
    """`merge_stage` over encoded per-frame meshes (the export deployment's work): {data: bytes, report}."""
    data, report = merge_stage(
        [decode_mesh(m) for m in meshes], scores, params, metadata=metadata, job_id=job_id
    )
    return {"data": data, "report": report}


def job_report(
    job_id: str | None,
    *,
    frames: list[dict[str, Any]],
    fusion: dict[str, Any],
    timings: dict[str, float],
    params: JobParams,
    warnings: list[dict[str, str]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The one report shape, beside every result (service job folder, batch output, CLI)."""
    return {
        "job_id": job_id, "params": params.to_dict(), "frames": frames, "warnings": list(warnings or []),
        "fusion": fusion, "timings": {k: round(float(v), 4) for k, v in timings.items()}, **extra,
    }  # fmt: skip


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
    """Run one job start to finish in this process; writes the result atomically, returns its report."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    pre = preprocess_payload(Path(input_path), params, remover)
    timings["preprocess"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    meshes = reconstruct_frames(model, list(pre["frames"]), [params.mc_resolution] * len(pre["frames"]))
    timings["reconstruct"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    data, fusion = merge_stage(
        [m for m in meshes if m is not None], pre["scores"], params,
        metadata={"params": params.to_dict(), "warnings": pre["warnings"]},
    )  # fmt: skip
    write_atomic(Path(output_path), data)
    timings["merge"] = time.perf_counter() - t2
    timings["total"] = time.perf_counter() - t0
    logger.info("pipeline done: %d frames -> %s in %.2fs", len(pre["frames"]), output_path, timings["total"])
    return job_report(
        None, frames=pre["reports"], fusion=fusion, timings=timings, params=params,
        warnings=pre["warnings"], result_path=str(output_path), kind=pre["kind"],
    )  # fmt: skip
