"""Compare jobs in the service: staging a `POST /compare` request, the job's one stage, its result parts.

`POST /compare` takes JSON `{"reference": JOB_ID, "candidate": JOB_ID, "object_size_m", "threshold_mm"}`
(both jobs `succeeded`) or multipart with two mesh files in the fields `reference` and `candidate`. Either way
the two meshes are staged in the compare job's folder (`input/reference.<ext>`, `input/candidate.<ext>`;
hard links when the source jobs' results share the disk), so retention of the source jobs cannot break it.

The stage (`run_compare`) reads the two files, hands their bytes to the workers' `compare` (the Export
deployment's CPU replicas, or in-process), and writes `result.glb`, `report.json` and `chart.png` atomically
into the job folder: the ingress stays the only writer of the data dir, and the comparison never runs on it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.atomic import write_atomic
from pipeline.params import CompareParams
from serve_app import errors as se
from serve_app.jobs import Job, JobKind, JobState
from serve_app.request_body import parse_json_body

if TYPE_CHECKING:
    from starlette.requests import Request

    from serve_app.orchestrator import Orchestrator

MESH_FIELDS = ("reference", "candidate")
MAX_COMPARE_JSON_BYTES = 16 * 1024
PARTS = {"report": ("report.json", "application/json"), "chart": ("chart.png", "image/png")}


async def stage_request(request: Request, job_dir: Path, store: Any, settings: Any) -> CompareParams:
    """Validate a POST /compare body and stage both meshes under `job_dir/input`; returns the parameters."""
    from serve_app.uploads import receive_multipart

    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    input_dir = job_dir / "input"
    if content_type == "application/json":
        data = await _json_body(request)
        params = _params(data)
        for name in MESH_FIELDS:
            job_id = getattr(params, name)
            if job_id is None:
                raise se.MissingInput(f"{name!r} (a job id) is required")
            source = await asyncio.to_thread(_finished_result, store, job_id, name)
            await asyncio.to_thread(_stage_file, source, input_dir / f"{name}{source.suffix}")
        return params
    if content_type == "multipart/form-data":
        upload = await receive_multipart(
            request, input_dir, limit_bytes=settings.upload_limit_bytes, max_files=2, file_fields=MESH_FIELDS
        )
        params = _params({k: v for k, v in upload.fields.items()})
        if params.reference is not None or params.candidate is not None:
            raise se.BadRequest("multipart requests upload 'reference' and 'candidate' as files")
        by_field = {f.field: f for f in upload.files}
        for name in MESH_FIELDS:
            saved = by_field.get(name)
            if saved is None:
                raise se.MissingInput(f"no {name!r} file: upload two meshes (GLB, OBJ or PLY)")
            if saved.size == 0:
                raise se.EmptyFile(f"uploaded file {saved.filename!r} ({name}) is empty")
            kind = await asyncio.to_thread(_sniff, saved.path)
            if kind is None:
                raise se.UnsupportedMedia(f"{name} ({saved.filename!r}) is not a GLB, OBJ or PLY mesh")
            await asyncio.to_thread(os.replace, saved.path, input_dir / f"{name}.{kind}")
        return params
    raise se.UnsupportedMedia(
        f"Content-Type {content_type or '(none)'!r} is not accepted; send application/json (two job ids) or "
        "multipart/form-data (two mesh files)"
    )


async def _json_body(request: Request) -> dict[str, Any]:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_COMPARE_JSON_BYTES:
            raise se.PayloadTooLarge(f"JSON body larger than {MAX_COMPARE_JSON_BYTES} bytes")
    data = parse_json_body(bytes(body))  # strict and bounded (deep nesting, NaN, duplicate keys: 400)
    if not isinstance(data, dict):
        raise se.MalformedJSON("the JSON body must be an object")
    return data


def _sniff(path: Path) -> str | None:
    from pipeline.compare_export import mesh_kind

    with path.open("rb") as f:
        return mesh_kind(f.read(65536))


def _params(data: dict[str, Any]) -> CompareParams:
    from pipeline.errors import InvalidParameter

    try:
        return CompareParams.from_mapping(data)
    except InvalidParameter as exc:
        raise se.InvalidParameter(str(exc)) from None


def _finished_result(store: Any, job_id: str, name: str) -> Path:
    """The result file of a succeeded reconstruction job, or the matching 404/409/410/422."""
    from serve_app.ingress import JOB_ID_RE

    if not isinstance(job_id, str) or not JOB_ID_RE.match(job_id):
        raise se.JobNotFound(f"{name}: no job with id {job_id!r}")
    job = store.get(job_id)
    if job.kind != JobKind.RECONSTRUCT:
        raise se.InvalidParameter(f"{name}: job {job_id} is a {job.kind.value} job, not a reconstruction")
    if job.state != JobState.SUCCEEDED:
        raise se.JobNotFinished(f"{name}: job {job_id} is {job.state.value}, not succeeded")
    if job.files_removed_at is not None or not job.result_path or not Path(job.result_path).is_file():
        raise se.ResultExpired(f"{name}: the result of job {job_id} was removed after the retention period")
    return Path(job.result_path)


def _stage_file(source: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, dest)
    except OSError:  # another filesystem, or links not allowed
        shutil.copyfile(source, dest)


async def run_compare(orchestrator: Orchestrator, job: Job, timings: dict[str, float]) -> None:
    """The compare job's one stage (state `comparing`): meshes -> workers.compare -> files + report."""
    assert isinstance(job.params, CompareParams)
    job_dir = orchestrator.job_dir(job.id)
    inputs = {name: _staged(job_dir / "input", name) for name in MESH_FIELDS}
    reference, candidate = await asyncio.to_thread(lambda: [inputs[n].read_bytes() for n in MESH_FIELDS])
    started = time.perf_counter()
    out = await orchestrator.workers.compare(job.id, reference, candidate, job.params)
    timings["compare"] = round(time.perf_counter() - started, 4)
    orchestrator.metrics.stage("compare", timings["compare"])
    report = out["report"]
    await asyncio.to_thread(write_atomic, job_dir / "report.json", json.dumps(report, indent=1).encode())
    await asyncio.to_thread(write_atomic, job_dir / "chart.png", out["chart"])
    await asyncio.to_thread(write_atomic, job_dir / "result.glb", out["glb"])
    timings["total"] = round(timings.get("queue_wait", 0.0) + timings["compare"], 4)
    summary = {
        "compare": {
            "units": report["units"], "noise_floor": report["noise_floor"], "alignment": {
                k: report["alignment"][k] for k in ("rms", "scale", "axis", "turn_deg", "turn_determined")
            },
            "loss": report["loss"], "gain": report["gain"], "bands": report["bands"],
        }
    }  # fmt: skip
    await asyncio.to_thread(
        orchestrator.store.transition, job.id, JobState.SUCCEEDED, expect=JobState.COMPARING,
        owned_by=orchestrator.owner, result_path=str(job_dir / "result.glb"), report=summary, timings=timings,
    )  # fmt: skip


def _staged(folder: Path, name: str) -> Path:
    matches = sorted(folder.glob(f"{name}.*"))
    if not matches:
        raise RuntimeError(f"compare input {name} is missing")
    return matches[0]


def result_part(job: Job, part: str, jobs_dir: Path) -> tuple[Path | None, Any, str]:
    """(file, or None with an inline JSON body, media type) of `?part=` of a succeeded job."""
    if part not in PARTS:
        raise se.InvalidParameter(f"part: {part!r} is not one of {', '.join(PARTS)}")
    name, media = PARTS[part]
    path = jobs_dir / job.id / name
    if job.kind == JobKind.RECONSTRUCT:
        if part != "report":
            raise se.InvalidParameter(f"part: {part!r} exists for compare jobs only")
        return (path, None, media) if path.is_file() else (None, job.report, media)
    if not path.is_file():
        raise se.ResultExpired(f"the {part} of job {job.id} was removed after the retention period")
    return path, None, media
