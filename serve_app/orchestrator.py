"""Running jobs: one `run_job(job_id)` coroutine per job, a bounded dispatcher, heartbeats, recovery and
retention.

The dispatcher claims queued jobs from the store (atomically, so several ingress replicas may share it) while
fewer than `Settings.max_running_jobs` run here. Each running job heart-beats through its owner id; a job
whose owner went silent for `orphan_after_s` (crash, restart) is re-queued, or failed after `max_attempts`
runs — never left running forever. A graceful stop re-queues this owner's jobs at once.

The stage work itself goes through a `Workers` object: `ServeWorkers` calls the three deployments,
`LocalWorkers` runs the same stage functions in this process (Starlette unit tests, no Ray).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Protocol

from pipeline.atomic import copy_atomic
from pipeline.params import CompareParams, JobParams
from serve_app.capacity import WORKER_DEPLOYMENTS
from serve_app.compare_jobs import run_compare
from serve_app.errors import job_error_from_exception
from serve_app.frame_images import save_frame_images
from serve_app.health import DeploymentProblem, deployment_problems
from serve_app.jobs import InvalidTransition, Job, JobKind, JobState, JobStore
from serve_app.metrics import ServiceMetrics
from serve_app.settings import Settings

logger = logging.getLogger(__name__)

# Share of progress (0..1) at the end of each stage; reconstruction advances per finished frame.
PROGRESS_PREPROCESSED = 0.15
PROGRESS_RECONSTRUCTED = 0.9
STATUS_TTL_S = 2.0  # how stale the ingress's view of the worker deployments may be


class Workers(Protocol):
    async def unavailable(self) -> list[DeploymentProblem]: ...
    async def compare(
        self, job_id: str, reference: bytes, candidate: bytes, params: CompareParams
    ) -> dict[str, Any]: ...
    async def preprocess(self, job_id: str, input_path: str, params: JobParams) -> dict[str, Any]: ...
    async def reconstruct(
        self, job_id: str, frame: Any, mesh_path: str, mc_resolution: int
    ) -> dict[str, Any]: ...
    async def export(
        self, job_id: str, mesh_paths: list[str], scores: list[float] | None, params: JobParams,
        result_path: str,
        metadata: dict[str, Any],
    ) -> dict[str, Any]: ...  # fmt: skip


class ServeWorkers:
    """Stage calls through Serve deployment handles (frames ride the object store as uint8 arrays)."""

    def __init__(self, preprocess: Any, reconstruct: Any, export: Any) -> None:
        self._preprocess, self._reconstruct, self._export = preprocess, reconstruct, export
        self._problems: tuple[float, list[DeploymentProblem]] = (-STATUS_TTL_S, [])

    async def unavailable(self) -> list[DeploymentProblem]:
        """Worker deployments that are not running now, from Serve's status (read at most every 2 s)."""
        at, problems = self._problems
        if time.monotonic() - at >= STATUS_TTL_S:
            problems = await asyncio.to_thread(_serve_problems)
            self._problems = (time.monotonic(), problems)
        return problems

    async def preprocess(self, job_id: str, input_path: str, params: JobParams) -> dict[str, Any]:
        return await self._preprocess.remote(job_id, input_path, params.to_dict())

    async def reconstruct(
        self, job_id: str, frame: Any, mesh_path: str, mc_resolution: int
    ) -> dict[str, Any]:
        return await self._reconstruct.remote(job_id, frame, mesh_path, mc_resolution)

    async def export(
        self, job_id: str, mesh_paths: list[str], scores: list[float] | None, params: JobParams,
        result_path: str,
        metadata: dict[str, Any],
    ) -> dict[str, Any]:  # fmt: skip
        return await self._export.remote(job_id, mesh_paths, scores, params.to_dict(), result_path, metadata)

    async def compare(
        self, job_id: str, reference: bytes, candidate: bytes, params: CompareParams
    ) -> dict[str, Any]:
        # on the Export deployment's CPU replicas: the same kind of mesh work as fusion, no new deployment
        return await self._export.compare.remote(job_id, reference, candidate, params.to_dict())


def _serve_problems() -> list[DeploymentProblem]:
    from ray import serve

    app_name = serve.get_replica_context().app_name
    return deployment_problems(serve.status().applications.get(app_name), WORKER_DEPLOYMENTS)


class LocalWorkers:
    """The same stage functions in this process, one frame at a time behind a lock (tests and small hosts)."""

    def __init__(self, model: Any, remover: Any) -> None:
        self.model, self.remover = model, remover
        self._lock = asyncio.Lock()

    async def unavailable(self) -> list[DeploymentProblem]:
        return []  # built in this process: running, or it would not exist

    async def preprocess(self, job_id: str, input_path: str, params: JobParams) -> dict[str, Any]:
        from pipeline.runner import preprocess_payload

        return await asyncio.to_thread(preprocess_payload, Path(input_path), params, self.remover)

    async def reconstruct(
        self, job_id: str, frame: Any, mesh_path: str, mc_resolution: int
    ) -> dict[str, Any]:
        from pipeline.runner import reconstruct_frames, save_mesh

        async with self._lock:
            (mesh,) = await asyncio.to_thread(reconstruct_frames, self.model, [frame], [mc_resolution])
        await asyncio.to_thread(save_mesh, mesh, Path(mesh_path))
        return {
            "mesh_path": mesh_path,
            "vertices": len(mesh.vertices),
            "faces": len(mesh.faces),
            "batch_size": 1,
        }

    async def export(
        self, job_id: str, mesh_paths: list[str], scores: list[float] | None, params: JobParams,
        result_path: str,
        metadata: dict[str, Any],
    ) -> dict[str, Any]:  # fmt: skip
        from pipeline.runner import merge_files

        return await asyncio.to_thread(
            merge_files, mesh_paths, scores, params, Path(result_path), metadata=metadata, job_id=job_id
        )

    async def compare(
        self, job_id: str, reference: bytes, candidate: bytes, params: CompareParams
    ) -> dict[str, Any]:
        from pipeline.compare_export import compare_payload

        return await asyncio.to_thread(
            compare_payload, reference, candidate, object_size_m=params.object_size_m,
            threshold_mm=params.threshold_mm,
        )  # fmt: skip


class JobCancelled(Exception):
    """Raised inside `run_job` when the job's cancel flag is seen between stages."""


class Orchestrator:
    """Owns the running jobs of one ingress replica."""

    def __init__(
        self, store: JobStore, settings: Settings, workers: Workers, metrics: ServiceMetrics | None = None
    ) -> None:
        self.store, self.settings, self.workers = store, settings, workers
        self.metrics = metrics or ServiceMetrics()
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.running: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._settling: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._last_sweep = 0.0
        self._last_heartbeat = 0.0

    # -- lifecycle -----------------------------------------------------------------------------------------
    async def start(self) -> None:
        self.settings.jobs_dir.mkdir(parents=True, exist_ok=True)
        self._loop_task = asyncio.create_task(self._dispatch_loop(), name="triposr-dispatcher")
        logger.info(
            "orchestrator %s started (max_running_jobs=%d)", self.owner, self.settings.max_running_jobs
        )

    async def stop(self) -> None:
        """Stop dispatching; re-queue this owner's running jobs so the next start runs them at once."""
        self._stopping = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        tasks = list(self.running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        logger.info("orchestrator %s stopped", self.owner)

    def wake(self) -> None:
        self._wake.set()

    @property
    def ready(self) -> bool:
        return self._loop_task is not None and not self._loop_task.done()

    # -- dispatcher ----------------------------------------------------------------------------------------
    async def _dispatch_loop(self) -> None:
        tick = min(1.0, self.settings.orphan_after_s / 4)
        while True:
            try:
                await self._housekeeping()
                while len(self.running) < self.settings.max_running_jobs:
                    job = await asyncio.to_thread(self.store.claim_next, self.owner)
                    if job is None:
                        break
                    self._spawn(job)
                await self._publish_gauges()
            except asyncio.CancelledError:
                raise
            except Exception:  # a store hiccup must not kill the dispatcher; it retries next tick
                logger.exception("dispatcher tick failed")
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=tick)

    def _spawn(self, job: Job) -> None:
        task = asyncio.create_task(self.run_job(job.id), name=f"job-{job.id}")
        self.running[job.id] = task
        task.add_done_callback(lambda t, job_id=job.id: self._finished(job_id, t))

    def _finished(self, job_id: str, task: asyncio.Task[None]) -> None:
        self.running.pop(job_id, None)
        if task.cancelled() and not self._stopping:
            # A task cancelled before its first step never enters run_job's handler (a DELETE right after
            # the dispatcher claimed the job): settle its row here, or it would stay active forever.
            settle = asyncio.get_running_loop().create_task(self._settle_cancelled(job_id))
            self._settling.add(settle)
            settle.add_done_callback(self._settling.discard)
        self.wake()

    async def _settle_cancelled(self, job_id: str) -> None:
        job = await asyncio.to_thread(self.store.get, job_id)
        if job.state.terminal:
            return
        if job.cancel_requested:
            await self._end(job_id, JobState.CANCELLED, dict(job.timings), message="cancelled")
            self.metrics.job_finished(JobState.CANCELLED.value)
        else:
            await self._end(
                job_id, JobState.FAILED, dict(job.timings), code="internal", text="job task was cancelled"
            )
            self.metrics.job_finished(JobState.FAILED.value)

    async def _housekeeping(self) -> None:
        now = time.time()
        if now - self._last_heartbeat >= self.settings.orphan_after_s / 4:
            self._last_heartbeat = now
            if self.running:
                await asyncio.to_thread(self.store.heartbeat, self.owner)
                await self._poll_cancellations()
            await asyncio.to_thread(
                self.store.recover_orphans, stale_before=now - self.settings.orphan_after_s,
                max_attempts=self.settings.max_attempts, exclude_owner=self.owner,
            )  # fmt: skip
        if now - self._last_sweep >= self.settings.sweep_interval_s:
            self._last_sweep = now
            await asyncio.to_thread(self.sweep_retention, now)

    async def _poll_cancellations(self) -> None:
        """Cancel flags set by another replica's DELETE reach the owner here."""
        for job_id, task in list(self.running.items()):
            job = await asyncio.to_thread(self.store.get, job_id)
            if job.cancel_requested and not task.done():
                task.cancel("cancel requested")

    async def _publish_gauges(self) -> None:
        counts = await asyncio.to_thread(self.store.counts)
        self.metrics.queue(counts[JobState.QUEUED.value], len(self.running))

    def sweep_retention(self, now: float | None = None) -> int:
        """Remove folders of jobs finished more than `retention_s` ago; the row records `files_removed_at`."""
        now = time.time() if now is None else now
        removed = 0
        for job in self.store.expired(finished_before=now - self.settings.retention_s):
            shutil.rmtree(self.job_dir(job.id), ignore_errors=True)
            self.store.update(job.id, files_removed_at=now, result_path=None)
            logger.info("job_id=%s files removed after retention", job.id)
            removed += 1
        return removed

    def job_dir(self, job_id: str) -> Path:
        return self.settings.jobs_dir / job_id

    # -- cancel --------------------------------------------------------------------------------------------
    async def cancel(self, job_id: str) -> Job:
        before = await asyncio.to_thread(self.store.get, job_id)
        job = await asyncio.to_thread(self.store.request_cancel, job_id)
        if before.state == JobState.QUEUED and job.state == JobState.CANCELLED:
            self.metrics.job_finished(JobState.CANCELLED.value)  # never reached run_job
        task = self.running.get(job_id)
        if task is not None and not task.done():
            task.cancel("cancel requested")
        return job

    # -- one job -------------------------------------------------------------------------------------------
    async def run_job(self, job_id: str) -> None:
        """Drive one claimed job through every stage; every outcome ends in a committed state."""
        job = await asyncio.to_thread(self.store.get, job_id)
        timings = dict(job.timings)
        timings["queue_wait"] = round(max((job.started_at or time.time()) - job.created_at, 0.0), 4)
        self.metrics.stage("queue_wait", timings["queue_wait"])
        final = JobState.FAILED
        try:
            stages = (
                run_compare(self, job, timings) if job.kind == JobKind.COMPARE else self._stages(job, timings)
            )
            await asyncio.wait_for(stages, timeout=self.settings.job_timeout_s)
            final = JobState.SUCCEEDED
        except asyncio.CancelledError:
            job = await asyncio.to_thread(self.store.get, job_id)
            if job.cancel_requested:
                final = JobState.CANCELLED
                await self._end(job_id, JobState.CANCELLED, timings, message="cancelled")
            elif self._stopping:
                final = JobState.QUEUED
                with contextlib.suppress(InvalidTransition):
                    await asyncio.to_thread(
                        self.store.transition, job_id, JobState.QUEUED, owner=None, progress=0.0,
                        message="re-queued: service stopping",
                    )  # fmt: skip
            else:
                await self._end(
                    job_id, JobState.FAILED, timings, code="internal", text="job task was cancelled"
                )
            if self._stopping:
                raise
        except asyncio.TimeoutError:
            await self._end(
                job_id, JobState.FAILED, timings, code="job_timeout",
                text=f"the job ran longer than job_timeout_s={self.settings.job_timeout_s:g}",
            )  # fmt: skip
        except Exception as exc:
            code, text = job_error_from_exception(exc)
            if code == "internal":
                logger.exception("job_id=%s failed unexpectedly", job_id)
            else:
                logger.info("job_id=%s failed: %s: %s", job_id, code, text)
            await self._end(job_id, JobState.FAILED, timings, code=code, text=text)
        finally:
            if final.terminal:
                self.metrics.job_finished(final.value)

    async def _end(
        self, job_id: str, state: JobState, timings: dict[str, float], *, code: str | None = None,
        text: str | None = None, message: str | None = None,
    ) -> None:  # fmt: skip
        with contextlib.suppress(InvalidTransition):
            await asyncio.to_thread(
                self.store.transition, job_id, state, timings=timings, error_code=code, error_message=text,
                message=message or code,
            )  # fmt: skip

    async def _check_cancel(self, job_id: str) -> None:
        job = await asyncio.to_thread(self.store.get, job_id)
        if job.cancel_requested:
            raise asyncio.CancelledError("cancel requested")

    async def _stages(self, job: Job, timings: dict[str, float]) -> None:
        job_id, params = job.id, job.params
        job_dir = self.job_dir(job_id)
        (job_dir / "meshes").mkdir(parents=True, exist_ok=True)
        if job.input_path is None:
            raise RuntimeError(f"job {job_id} has no input")

        t0 = time.perf_counter()
        pre = await self.workers.preprocess(job_id, job.input_path, params)
        timings["preprocess"] = round(time.perf_counter() - t0, 4)
        self.metrics.stage("preprocess", timings["preprocess"])
        await asyncio.to_thread(save_frame_images, job_dir, pre.get("thumbnails"))
        frames = pre["frames"]
        count = len(frames)
        self.metrics.frames_per_job.observe(count)
        await self._check_cancel(job_id)
        await asyncio.to_thread(
            self.store.transition, job_id, JobState.RECONSTRUCTING, expect=JobState.PREPROCESSING,
            frames=pre["reports"], input_kind=pre["kind"], warnings=pre["warnings"],
            progress=PROGRESS_PREPROCESSED, timings=timings, message=f"{count} frames selected",
        )  # fmt: skip

        t1 = time.perf_counter()
        mesh_paths = [str(job_dir / "meshes" / f"frame_{i:02d}.npz") for i in range(count)]
        calls = [
            asyncio.ensure_future(
                self.workers.reconstruct(job_id, frames[i], mesh_paths[i], params.mc_resolution)
            )
            for i in range(count)
        ]
        del frames, pre["frames"]  # the deployments hold their own references now
        try:
            for done, call in enumerate(asyncio.as_completed(calls), start=1):
                await call
                share = (
                    PROGRESS_PREPROCESSED + (PROGRESS_RECONSTRUCTED - PROGRESS_PREPROCESSED) * done / count
                )
                await asyncio.to_thread(
                    self.store.update,
                    job_id,
                    progress=share,
                    event="progress",
                    message=f"frame {done}/{count}",
                )
        finally:
            for call in calls:
                call.cancel()
        timings["reconstruct"] = round(time.perf_counter() - t1, 4)
        self.metrics.stage("reconstruct", timings["reconstruct"])
        await self._check_cancel(job_id)
        await asyncio.to_thread(
            self.store.transition, job_id, JobState.MERGING, expect=JobState.RECONSTRUCTING,
            progress=PROGRESS_RECONSTRUCTED, timings=timings,
        )  # fmt: skip

        t2 = time.perf_counter()
        result_path = job_dir / f"result.{params.format.value}"
        metadata = {"job_id": job_id, "params": params.to_dict(), "generator": "triposr-serve",
                    "warnings": pre["warnings"]}  # fmt: skip
        out = await self.workers.export(job_id, mesh_paths, pre["scores"], params, str(result_path), metadata)
        if job.output_path:
            await asyncio.to_thread(_copy_atomic, Path(out["result_path"]), Path(job.output_path))
        timings["merge"] = round(time.perf_counter() - t2, 4)
        self.metrics.stage("merge", timings["merge"])
        timings["total"] = round(
            sum(timings[k] for k in ("queue_wait", "preprocess", "reconstruct", "merge")), 4
        )
        report = {"fusion": out["report"]}
        summary = {"job_id": job_id, "timings": timings, "frames": pre["reports"]}
        await asyncio.to_thread(
            (job_dir / "report.json").write_text,
            json.dumps({**summary, "warnings": pre["warnings"], **report}, indent=1),
        )
        await asyncio.to_thread(
            self.store.transition, job_id, JobState.SUCCEEDED, expect=JobState.MERGING,
            result_path=out["result_path"], report=report, timings=timings,
        )  # fmt: skip


def _copy_atomic(src: Path, dest: Path) -> None:
    """Copy into an output root without following a planted link (pipeline.atomic)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    copy_atomic(src, dest)
