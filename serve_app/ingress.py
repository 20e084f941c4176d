"""The HTTP API (Starlette): submit, status, result, events (SSE + WebSocket), job list, cancel, health.

`build_app(settings, workers)` returns a plain Starlette app; Serve runs it on the ingress replica
(serve_app/app.py), unit tests run it in-process with TestClient. Route functions only validate, store the
input, create the job row and wake the orchestrator; running jobs lives in serve_app/orchestrator.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import logging
import re
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from pipeline.params import JobParams, describe_params
from serve_app import errors as se
from serve_app.event_feed import EventFeed
from serve_app.frame_images import frame_image_path
from serve_app.jobs import (
    TERMINAL,
    ClientQuotaExceeded,
    Job,
    JobKind,
    JobState,
    JobStore,
    QueueFull,
    new_job_id,
)
from serve_app.metrics import ServiceMetrics
from serve_app.openapi import openapi_route
from serve_app.orchestrator import Orchestrator, Workers
from serve_app.request_body import parse_json_body
from serve_app.settings import Settings
from serve_app.uploads import FILE_FIELDS, receive_multipart, resolve_under, sweep_orphan_uploads
from serve_app.web import web_routes

logger = logging.getLogger(__name__)

JOB_ID_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
IDEMPOTENCY_KEY_RE = re.compile(r"^[\x21-\x7e]{1,255}$")  # printable ASCII, no spaces
MAX_JSON_BYTES = 64 * 1024
LAST_EVENT_ID_RE = re.compile(r"^[0-9]{1,18}$")  # fits SQLite's INTEGER
PATH_FIELDS = ("source", "preprocessing_output_dir", "output_glb_path")
EVENT_POLL_S = 0.25
KEEPALIVE_S = 15.0
MEDIA_TYPES = {"glb": "model/gltf-binary", "obj": "model/obj", "ply": "application/ply"}


class Service:
    """What the routes share: settings, store, orchestrator, metrics."""

    def __init__(self, settings: Settings, workers: Workers, metrics: ServiceMetrics | None = None) -> None:
        self.settings = settings
        self.workers = workers
        self.metrics = metrics or ServiceMetrics()
        self.store: JobStore | None = None
        self.feed: EventFeed | None = None
        self.orchestrator: Orchestrator | None = None
        self.arriving = 0  # submissions of this replica whose upload is still being read (see _admission)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.store = await asyncio.to_thread(JobStore, self.settings.db_path)
        self.feed = EventFeed(self.store.events_since, EVENT_POLL_S)
        self.store.add_listener(self.feed.notify)
        self.orchestrator = Orchestrator(self.store, self.settings, self.workers, self.metrics)
        await self.orchestrator.start()
        sweeper = asyncio.create_task(self._sweep_orphan_uploads())
        try:
            yield
        finally:
            sweeper.cancel()
            await asyncio.gather(sweeper, return_exceptions=True)
            await self.orchestrator.stop()

    async def _sweep_orphan_uploads(self) -> None:
        """Every sweep interval: remove job folders that never became a job (killed uploads, crashes)."""
        while True:
            try:
                await asyncio.to_thread(
                    sweep_orphan_uploads, self.settings.jobs_dir, self.jobs.exists,
                    self.settings.orphan_upload_after_s,
                )  # fmt: skip
            except Exception:
                logger.exception("orphaned upload sweep failed; retrying next interval")
            await asyncio.sleep(self.settings.sweep_interval_s)

    @property
    def jobs(self) -> JobStore:
        if self.store is None:
            raise se.NotReady("the service is starting")
        return self.store

    @property
    def events_feed(self) -> EventFeed:
        if self.feed is None:
            raise se.NotReady("the service is starting")
        return self.feed

    @property
    def runner(self) -> Orchestrator:
        if self.orchestrator is None:
            raise se.NotReady("the service is starting")
        return self.orchestrator

    # -- helpers -------------------------------------------------------------------------------------------
    def authorize(self, headers: Any) -> None:
        if not self.is_authorized(headers):
            raise se.Unauthorized("missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    def is_authorized(self, headers: Any) -> bool:
        token = self.settings.api_token
        if token is None:
            return True
        given = headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            value.strip().encode("utf-8", "replace"), token.encode()
        )

    def client_of(self, request: Request) -> str:
        """The submitter's address for the per-client queue limit (a trusted proxy's header if set)."""
        header = self.settings.client_address_header
        if header:
            forwarded = request.headers.get(header, "").split(",")[0].strip()
            if forwarded:
                return forwarded[:64]
        return request.client.host if request.client else "unknown"

    def check_disk(self) -> None:
        """507 when the data dir's disk has less than `min_free_disk_bytes` free (checked before storing)."""
        usage = shutil.disk_usage(self.settings.data_dir)
        if usage.free < self.settings.min_free_disk_bytes:
            raise se.InsufficientStorage(
                "the service is low on disk space and accepts no new jobs now; retry later",
                headers={"Retry-After": "300"},
            )

    async def get_job(self, job_id: str) -> Job:
        if not JOB_ID_RE.match(job_id):
            raise se.JobNotFound(f"no job with id {job_id!r}")
        return await asyncio.to_thread(self.jobs.get, job_id)

    @staticmethod
    def urls(request: Request | WebSocket, job_id: str) -> dict[str, str]:
        root = request.scope.get("root_path", "").rstrip("/")
        return {
            "status_url": f"{root}/reconstruct/status/{job_id}",
            "result_url": f"{root}/reconstruct/result/{job_id}",
            "events_url": f"{root}/reconstruct/events/{job_id}",
            "ws_url": f"{root}/reconstruct/ws/{job_id}",
        }

    def detect_all(self, paths: list[Path]) -> list[str]:
        """Kind of each input from its bytes, headers checked against the limits (runs in a thread)."""
        from pipeline.frames import VideoLimits
        from pipeline.inputs import ArchiveLimits, detect_kind

        s = self.settings
        video = VideoLimits(s.max_video_pixels, s.max_video_duration_s, s.max_video_frames)
        archive = ArchiveLimits(max_members=s.max_archive_members)
        return [str(detect_kind(p, video_limits=video, archive_limits=archive).value) for p in paths]

    def params_from(self, raw: dict[str, Any]) -> JobParams:
        merged = {**self.settings.defaults.to_dict(), **{k: v for k, v in raw.items() if v is not None}}
        unknown = sorted(set(raw) - set(self.settings.defaults.to_dict()))
        if unknown:  # JobParams names the field too, but this message lists the whole API
            known = sorted([*self.settings.defaults.to_dict(), *PATH_FIELDS])
            raise se.InvalidParameter(f"{unknown[0]}: unknown parameter (known: {', '.join(known)})")
        return JobParams.from_mapping(merged)

    # -- routes --------------------------------------------------------------------------------------------
    async def submit(self, request: Request) -> Response:
        self.authorize(request.headers)
        key = request.headers.get("idempotency-key")
        if key is not None:
            if not IDEMPOTENCY_KEY_RE.match(key):
                raise se.BadRequest("Idempotency-Key must be 1-255 printable ASCII characters without spaces")
            existing = await asyncio.to_thread(self.jobs.find_by_idempotency_key, key)
            if existing is not None:
                return self._accepted(request, existing, replayed=True)
        async with self._admission():
            return await self._submit(request, key)

    async def _submit(self, request: Request, key: str | None) -> Response:
        client = self.client_of(request)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        job_id = new_job_id()
        job_dir = self.settings.jobs_dir / job_id
        try:
            if content_type == "multipart/form-data":
                input_path, kind, params, output = await self._from_multipart(request, job_dir)
            elif content_type == "application/json":
                input_path, kind, params, output = await self._from_json(request)
            else:
                raise se.UnsupportedMedia(
                    f"Content-Type {content_type or '(none)'!r} is not accepted; send multipart/form-data "
                    "(video, images or archive) or application/json (source)"
                )
            job, created = await self._create(
                params, job_id=job_id, input_path=str(input_path), input_kind=kind,
                output_path=None if output is None else str(output), idempotency_key=key, client=client,
            )  # fmt: skip
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, job_dir, True)
            raise
        if not created:  # lost a race with a retry carrying the same key
            await asyncio.to_thread(shutil.rmtree, job_dir, True)
        self.runner.wake()
        return self._accepted(request, job, replayed=not created)

    @contextlib.asynccontextmanager
    async def _admission(self) -> AsyncIterator[None]:
        """Refuse a new job before its upload is read: a worker deployment is down (503 not_ready; a job
        would only wait for job_timeout_s), the queue is full counting the uploads still arriving here
        (503 overloaded; 100 uploads at once against a limit of 20 get 80 quick answers, not 80 uploads read
        and then refused), or the disk is nearly full (507). The limits are checked again in `_create`."""
        failed = [p.public for p in await self.workers.unavailable() if p.failed]
        if failed:
            raise se.NotReady(f"the service cannot take jobs: {'; '.join(failed)}")
        counts = await asyncio.to_thread(self.jobs.counts)
        queued, limit = counts[JobState.QUEUED.value], self.settings.max_queued_jobs
        if queued + self.arriving >= limit:
            arriving = f" and {self.arriving} arriving" if self.arriving else ""
            raise se.Overloaded(
                f"{queued} jobs are queued{arriving} (limit {limit}); retry later",
                headers={"Retry-After": "30"},
            )
        await asyncio.to_thread(self.check_disk)
        self.arriving += 1
        try:
            yield
        finally:
            self.arriving -= 1

    async def _create(self, params: Any, **fields: Any) -> Any:
        """`JobStore.create` with the queue limits checked inside its transaction, mapped to 503 / 429."""
        try:
            return await asyncio.to_thread(
                functools.partial(self.jobs.create, params, **fields,
                                  client_limit=self.settings.max_queued_jobs_per_client,
                                  queue_limit=self.settings.max_queued_jobs)
            )  # fmt: skip
        except QueueFull as exc:  # filled up while this upload streamed in
            raise se.Overloaded(
                f"{exc.queued} jobs are queued (limit {exc.limit}); retry later",
                headers={"Retry-After": "30"},
            ) from None
        except ClientQuotaExceeded as exc:
            raise se.TooManyJobs(
                f"you have {exc.queued} queued jobs (limit {exc.limit} per client); wait for some to start",
                headers={"Retry-After": "30"},
            ) from None

    def _accepted(self, request: Request, job: Job, *, replayed: bool) -> JSONResponse:
        urls = self.urls(request, job.id)
        headers = {"Location": urls["status_url"]}
        if replayed:
            headers["Idempotent-Replayed"] = "true"
        return JSONResponse(
            {"job_id": job.id, "state": job.state.value, **urls}, status_code=202, headers=headers
        )

    async def _from_multipart(
        self, request: Request, job_dir: Path
    ) -> tuple[Path, str, JobParams, Path | None]:
        input_dir = job_dir / "input"
        upload = await receive_multipart(
            request, input_dir, limit_bytes=self.settings.upload_limit_bytes,
            max_files=self.settings.max_upload_files,
        )  # fmt: skip
        self.metrics.upload_bytes_total.inc(upload.total_bytes)
        fields = dict(upload.fields)
        output_raw = fields.pop("output_glb_path", None)
        for name in ("source", "preprocessing_output_dir"):
            if name in fields:
                raise se.BadRequest(f"{name!r} is for JSON requests; a multipart request uploads the input")
        params = self.params_from(fields)
        if not upload.files:
            raise se.MissingInput(f"no input file: upload one of the fields {', '.join(FILE_FIELDS)}")
        for saved in upload.files:
            if saved.size == 0:
                raise se.EmptyFile(f"uploaded file {saved.filename!r} ({saved.field}) is empty")
        kinds = {f.field for f in upload.files}
        if len(kinds) > 1 or (len(upload.files) > 1 and kinds != {"images"}):
            raise se.BadRequest("send one video, one archive, or one or more images — not a mix")
        detected = await asyncio.to_thread(self.detect_all, [f.path for f in upload.files])
        if len(upload.files) == 1:
            input_path, kind = upload.files[0].path, detected[0]
        else:
            if set(detected) != {"image"}:
                raise se.UnsupportedMedia("several files were uploaded but not all of them are images")
            input_path, kind = input_dir, "images"
        output = await asyncio.to_thread(self._output_path, output_raw)
        return input_path, kind, params, output

    async def _from_json(self, request: Request) -> tuple[Path, str, JobParams, Path | None]:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_JSON_BYTES:
                raise se.PayloadTooLarge(f"JSON body larger than {MAX_JSON_BYTES} bytes")
        data = parse_json_body(bytes(body))
        if not isinstance(data, dict):
            raise se.MalformedJSON("the JSON body must be an object")
        source = data.pop("source", None)
        alias = data.pop("preprocessing_output_dir", None)
        if source is not None and alias is not None and source != alias:
            raise se.BadRequest("give either 'source' or 'preprocessing_output_dir', not two different paths")
        source = source if source is not None else alias
        output_raw = data.pop("output_glb_path", None)
        params = self.params_from(data)
        if source is None:
            raise se.MissingInput("JSON requests need 'source' (or 'preprocessing_output_dir')")
        path = await asyncio.to_thread(
            resolve_under, source, self.settings.input_roots, what="source", must_exist=True
        )
        kind = "images" if path.is_dir() else (await asyncio.to_thread(self.detect_all, [path]))[0]
        return path, kind, params, await asyncio.to_thread(self._output_path, output_raw)

    def _output_path(self, raw: Any) -> Path | None:
        if raw is None or raw == "":
            return None
        path = resolve_under(raw, self.settings.output_roots, what="output_glb_path", must_exist=False)
        try:
            is_dir = path.is_dir()
        except OSError as exc:
            raise se.InvalidInput(f"output_glb_path {raw!r} cannot be used: {exc.strerror}") from None
        if is_dir:
            raise se.InvalidInput(f"output_glb_path {raw!r} is a folder; give a file path")
        return path

    async def compare(self, request: Request) -> Response:
        """POST /compare: two job ids (JSON) or two mesh files (multipart) -> a queued compare job, 202."""
        from serve_app.compare_jobs import stage_request

        self.authorize(request.headers)
        async with self._admission():
            return await self._compare(request, stage_request)

    async def _compare(self, request: Request, stage_request: Any) -> Response:
        job_id = new_job_id()
        job_dir = self.settings.jobs_dir / job_id
        try:
            params = await stage_request(request, job_dir, self.jobs, self.settings)
            job, _ = await self._create(
                params, kind=JobKind.COMPARE, job_id=job_id, input_path=str(job_dir / "input"),
                input_kind="meshes", client=self.client_of(request),
            )  # fmt: skip
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, job_dir, True)
            raise
        self.runner.wake()
        return self._accepted(request, job, replayed=False)

    async def status(self, request: Request) -> Response:
        self.authorize(request.headers)
        job = await self.get_job(request.path_params["job_id"])
        doc = job.public(request.scope.get("root_path", "").rstrip("/"))
        doc["cancel_requested"] = job.cancel_requested
        return JSONResponse(doc)

    async def result(self, request: Request) -> Response:
        self.authorize(request.headers)
        job = await self.get_job(request.path_params["job_id"])
        if job.state == JobState.SUCCEEDED:
            if job.files_removed_at is not None or not job.result_path or not Path(job.result_path).is_file():
                raise se.ResultExpired(f"the result of job {job.id} was removed after the retention period")
            part = request.query_params.get("part")
            if part is not None:
                from serve_app.compare_jobs import result_part

                path, inline, media = result_part(job, part, self.settings.jobs_dir)
                if path is None:
                    return JSONResponse(inline)
                return FileResponse(
                    path, media_type=media, headers={"Cache-Control": "private, max-age=3600"}
                )
            fmt = "glb" if job.kind == JobKind.COMPARE else job.params.format.value
            return FileResponse(
                job.result_path, media_type=MEDIA_TYPES[fmt], filename=f"{job.id}.{fmt}",
                headers={"Cache-Control": "private, max-age=3600"},
            )  # fmt: skip
        if job.state == JobState.FAILED:
            raise se.JobFailed(f"job {job.id} failed ({job.error_code}): {job.error_message}")
        if job.state == JobState.CANCELLED:
            raise se.JobFailed(f"job {job.id} was cancelled")
        raise se.JobNotFinished(f"job {job.id} is {job.state.value} ({job.progress:.0%}); try again later")

    async def frame_image(self, request: Request) -> Response:
        """JPEG preview of the n-th entry of the job's per-frame report (stored after preprocessing)."""
        self.authorize(request.headers)
        job = await self.get_job(request.path_params["job_id"])
        raw = request.path_params["n"]
        count = len(job.frames or [])
        if not raw.isdigit() or int(raw) >= count:
            raise se.NotFound(f"job {job.id} has no frame {raw!r} (its report has {count} entries)")
        if job.files_removed_at is not None:
            raise se.ResultExpired(f"the files of job {job.id} were removed after the retention period")
        path = frame_image_path(self.settings.jobs_dir / job.id, int(raw))
        if not path.is_file():
            raise se.NotFound(f"frame {raw} of job {job.id} has no preview image")
        return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    async def params(self, request: Request) -> Response:
        """Every job parameter with its type, range, this service's default and a line of help."""
        self.authorize(request.headers)
        return JSONResponse({"params": describe_params(self.settings.defaults)})

    async def events(self, request: Request) -> Response:
        self.authorize(request.headers)
        job = await self.get_job(request.path_params["job_id"])
        after = last_event_id(request.headers.get("last-event-id"))

        async def stream() -> AsyncIterator[str]:
            async for event in self._event_stream(job.id, after):
                if event is None:
                    yield ": keep-alive\n\n"
                else:
                    yield f"id: {event['seq']}\nevent: {event['kind']}\ndata: {json.dumps(event)}\n\n"

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def _event_stream(self, job_id: str, after: int) -> AsyncIterator[dict[str, Any] | None]:
        """Every event after `after` until a terminal state; None now and then as a keep-alive."""
        quiet_since = time.monotonic()
        feed = self.events_feed
        feed.opened(job_id)
        try:
            while True:
                changed = feed.changed(job_id)
                events = await feed.since(job_id, after)
                for event in events:
                    after = event["seq"]
                    yield event
                    if JobState(event["state"]) in TERMINAL:
                        return
                if events:
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since > KEEPALIVE_S:
                    quiet_since = time.monotonic()
                    yield None
                await feed.wait(changed)
        finally:
            feed.closed(job_id)

    async def websocket(self, websocket: WebSocket) -> None:
        try:
            self.authorize(websocket.headers)
            job = await self.get_job(websocket.path_params["job_id"])
        except se.ServiceError as exc:
            await websocket.close(code=1008, reason=f"{exc.code}: {exc.message}"[:120])
            return
        await websocket.accept()
        try:
            async for event in self._event_stream(job.id, 0):
                if event is not None:
                    await websocket.send_json(event)
            await websocket.close(code=1000)
        except WebSocketDisconnect:
            return

    async def list_jobs(self, request: Request) -> Response:
        self.authorize(request.headers)
        query = request.query_params
        states: list[JobState] = []
        for raw in filter(None, (query.get("state") or "").split(",")):
            try:
                states.append(JobState(raw.strip().lower()))
            except ValueError:
                choices = ", ".join(s.value for s in JobState)
                raise se.InvalidParameter(f"state: {raw!r} is not one of {choices}") from None
        limit = _int_query(query.get("limit"), "limit", 50, 1, 500)
        offset = _int_query(query.get("offset"), "offset", 0, 0, 10**9)
        kind = None
        if query.get("kind"):
            try:
                kind = JobKind(query["kind"].strip().lower())
            except ValueError:
                choices = ", ".join(k.value for k in JobKind)
                raise se.InvalidParameter(f"kind: {query['kind']!r} is not one of {choices}") from None
        jobs, total = await asyncio.to_thread(
            self.jobs.list, states=states, limit=limit, offset=offset, kind=kind
        )
        root = request.scope.get("root_path", "").rstrip("/")
        items = []
        for job in jobs:
            doc = job.public(root)
            doc.pop("frames", None)
            doc["frames"] = job.frame_counts()
            items.append(doc)
        next_offset = offset + len(jobs) if offset + len(jobs) < total else None
        return JSONResponse({"jobs": items, "total": total, "limit": limit, "offset": offset,
                             "next_offset": next_offset})  # fmt: skip

    async def cancel(self, request: Request) -> Response:
        self.authorize(request.headers)
        job = await self.get_job(request.path_params["job_id"])
        job = await self.runner.cancel(job.id)
        return JSONResponse(
            {"job_id": job.id, "state": job.state.value, "cancel_requested": job.cancel_requested},
            status_code=200 if job.state.terminal else 202,
        )

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        if self.store is None or self.orchestrator is None or not self.orchestrator.ready:
            raise se.NotReady("the service is starting or stopping")
        problems = await self.workers.unavailable()
        authorized = self.is_authorized(request.headers)
        if problems:  # anonymous probes learn ready or not, nothing more
            detail = "; ".join(p.public for p in problems) if authorized else "a worker deployment is down"
            raise se.NotReady(f"not ready: {detail}")
        if not authorized:
            return JSONResponse({"status": "ready"})
        counts = await asyncio.to_thread(self.store.counts)
        return JSONResponse(
            {"status": "ready", "jobs": counts, "running_here": len(self.orchestrator.running)}
        )


def _int_query(raw: str | None, name: str, default: int, lo: int, hi: int) -> int:
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise se.InvalidParameter(f"{name}: expected an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise se.InvalidParameter(f"{name}: {value} is outside [{lo}, {hi}]")
    return value


def last_event_id(raw: str | None) -> int:
    """The SSE `Last-Event-ID` to resume after: ASCII digits only (`int` would take other scripts' digits)."""
    if raw is None or raw == "":
        return 0
    if not LAST_EVENT_ID_RE.match(raw):
        raise se.BadRequest("Last-Event-ID must be an event id this service sent (1-18 ASCII digits)")
    return int(raw)


def build_app(settings: Settings, workers: Workers, metrics: ServiceMetrics | None = None) -> Starlette:
    """The Starlette app of the HTTP API, explicit routes and one error handler table."""
    service = Service(settings, workers, metrics)
    routes = [
        Route("/reconstruct", service.submit, methods=["POST"]),
        Route("/compare", service.compare, methods=["POST"]),
        Route("/reconstruct/status/{job_id}", service.status, methods=["GET"]),
        Route("/reconstruct/result/{job_id}", service.result, methods=["GET"]),
        Route("/reconstruct/events/{job_id}", service.events, methods=["GET"]),
        Route("/reconstruct/frames/{job_id}/{n}", service.frame_image, methods=["GET"]),
        Route("/params", service.params, methods=["GET"]),
        WebSocketRoute("/reconstruct/ws/{job_id}", service.websocket),
        Route("/jobs", service.list_jobs, methods=["GET"]),
        Route("/jobs/{job_id}", service.status, methods=["GET"]),
        Route("/jobs/{job_id}", service.cancel, methods=["DELETE"]),
        Route("/healthz", service.healthz, methods=["GET"]),
        Route("/readyz", service.readyz, methods=["GET"]),
        *web_routes(),
    ]
    routes.append(openapi_route())
    app = Starlette(routes=routes, exception_handlers=se.exception_handlers(), lifespan=service.lifespan)
    app.state.service = service
    return app
