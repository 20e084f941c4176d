"""Running jobs: one `run_job(job_id)` coroutine per job, a bounded dispatcher, heartbeats, recovery and
retention.

The dispatcher claims queued jobs from the store (atomically, so several ingress replicas may share it) while
fewer than `Settings.max_running_jobs` run here. Each running job heart-beats under its owner id every
`orphan_after_s / 4`; a job whose heartbeat is older than `orphan_after_s` (its ingress died) is re-queued by
any live replica (or failed after `max_attempts` runs) and resumes from its checkpoints (serve_app/
checkpoints.py): preprocessed frames and finished per-frame meshes are not redone. A runner that lost its job
that way sees `LostOwnership` and stops. A graceful stop re-queues this owner's jobs at once.

The stage work goes through `Workers` (serve_app/workers.py), wrapped in `RetryingWorkers` so that a call
lost to a dead replica is retried. Only this process touches the job folder: the input is read here and sent
as bytes, and the result comes back as bytes and is written here, atomically.
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

from pipeline.atomic import write_atomic
from pipeline.runner import InputFiles, job_report
from serve_app.checkpoints import Checkpoints
from serve_app.compare_jobs import run_compare
from serve_app.errors import StoreUnavailable, job_error_from_exception
from serve_app.frame_images import save_frame_images
from serve_app.jobs import InvalidTransition, Job, JobKind, JobState, JobStore, LostOwnership
from serve_app.metrics import ServiceMetrics
from serve_app.settings import Settings
from serve_app.workers import LocalWorkers, RetryingWorkers, RetryPolicy, ServeWorkers, Workers

__all__ = ["LocalWorkers", "Orchestrator", "ServeWorkers", "Workers"]

logger = logging.getLogger(__name__)

# Share of progress (0..1) at the end of each stage; reconstruction advances per finished frame.
PROGRESS_PREPROCESSED = 0.15
PROGRESS_RECONSTRUCTED = 0.9
# Ending a job survives a store outage this long (0.5 s doubling to 8 s, ~1 min), then orphan recovery
# (the job no longer heart-beats) settles it.
END_RETRIES = 10


class Orchestrator:
    """Owns the running jobs of one ingress replica."""

    def __init__(
        self, store: JobStore, settings: Settings, workers: Workers, metrics: ServiceMetrics | None = None
    ) -> None:
        self.store, self.settings = store, settings
        self.metrics = metrics or ServiceMetrics()
        self.workers = RetryingWorkers(
            workers, RetryPolicy(attempts=settings.stage_attempts), on_retry=self._record_retry
        )
        self._retries: dict[str, dict[str, int]] = {}
        self._lost: set[str] = set()  # running here, but taken over by another replica
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
                lost = await asyncio.to_thread(self.store.heartbeat, self.owner, list(self.running))
                for job_id in lost:
                    task = self.running.get(job_id)
                    if task is not None and not task.done():
                        logger.warning(
                            "job_id=%s no longer owned by %s; stopping it here", job_id, self.owner
                        )
                        self._lost.add(job_id)
                        task.cancel("ownership lost")
                await self._poll_cancellations()
            # Our own running jobs heart-beat above, so only jobs nobody runs any more can be stale (ours
            # included: a job whose end could not be written is settled here).
            await asyncio.to_thread(
                self.store.recover_orphans, stale_before=now - self.settings.orphan_after_s,
                max_attempts=self.settings.max_attempts,
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
        self._retries[job_id] = {}
        final = JobState.FAILED
        try:
            stages = (
                run_compare(self, job, timings) if job.kind == JobKind.COMPARE else self._stages(job, timings)
            )
            await asyncio.wait_for(stages, timeout=self.settings.job_timeout_s)
            final = JobState.SUCCEEDED
        except asyncio.CancelledError:
            final = await self._on_cancelled(job_id, timings)
            if self._stopping:
                raise
        except asyncio.TimeoutError:
            await self._end(
                job_id, JobState.FAILED, timings, code="job_timeout",
                text=f"the job ran longer than job_timeout_s={self.settings.job_timeout_s:g}",
            )  # fmt: skip
        except LostOwnership:
            final = JobState.QUEUED  # another replica runs it now; nothing of ours may be written
            logger.warning("job_id=%s taken over by another runner; %s stops", job_id, self.owner)
        except Exception as exc:
            code, text = job_error_from_exception(exc)
            if code == "internal":
                logger.exception("job_id=%s failed unexpectedly", job_id)
            else:
                logger.info("job_id=%s failed: %s: %s", job_id, code, text)
            await self._end(job_id, JobState.FAILED, timings, code=code, text=text)
        finally:
            self._retries.pop(job_id, None)
            self._lost.discard(job_id)
            if final.terminal:
                self.metrics.job_finished(final.value)
                await asyncio.to_thread(Checkpoints(self.job_dir(job_id)).remove)

    async def _on_cancelled(self, job_id: str, timings: dict[str, float]) -> JobState:
        """Settle a job whose task was cancelled: by the user, by a stop, or because it was taken over."""
        if job_id in self._lost:
            return JobState.QUEUED
        job = await asyncio.to_thread(self.store.get, job_id)
        if job.cancel_requested:
            await self._end(job_id, JobState.CANCELLED, timings, message="cancelled")
            return JobState.CANCELLED
        if self._stopping:
            with contextlib.suppress(InvalidTransition):
                await asyncio.to_thread(
                    self.store.transition, job_id, JobState.QUEUED, owned_by=self.owner,
                    message="re-queued: service stopping",
                )  # fmt: skip
            return JobState.QUEUED
        await self._end(job_id, JobState.FAILED, timings, code="internal", text="job task was cancelled")
        return JobState.FAILED

    async def _end(
        self, job_id: str, state: JobState, timings: dict[str, float], *, code: str | None = None,
        text: str | None = None, message: str | None = None,
    ) -> None:  # fmt: skip
        """Write a terminal state; a store outage is retried with backoff, never left unwritten silently."""
        for attempt in range(END_RETRIES):
            try:
                await asyncio.to_thread(
                    self.store.transition, job_id, state, owned_by=self.owner, timings=timings,
                    error_code=code, error_message=text, message=message or code,
                )  # fmt: skip
                return
            except InvalidTransition:
                return  # ended meanwhile, or taken over by another runner
            except StoreUnavailable:
                delay = min(8.0, 0.5 * 2**attempt)
                logger.warning("job_id=%s could not be ended (%s); retrying in %.1fs", job_id, state, delay)
                await asyncio.sleep(delay)
        logger.error("job_id=%s end (%s) not written; orphan recovery will settle it", job_id, state.value)

    async def _record_retry(self, job_id: str, stage: str, attempt: int) -> None:
        counts = self._retries.setdefault(job_id, {})
        counts[stage] = counts.get(stage, 0) + 1
        self.metrics.retried(stage)
        with contextlib.suppress(StoreUnavailable):
            await asyncio.to_thread(
                self.store.update, job_id, owned_by=self.owner, event="retry",
                message=f"{stage} worker lost; retry {attempt}/{self.settings.stage_attempts - 1}",
            )  # fmt: skip

    async def _check_cancel(self, job_id: str) -> None:
        job = await asyncio.to_thread(self.store.get, job_id)
        if job.cancel_requested:
            raise asyncio.CancelledError("cancel requested")

    async def _stages(self, job: Job, timings: dict[str, float]) -> None:
        job_id, params, owner = job.id, job.params, self.owner
        job_dir = self.job_dir(job_id)
        checkpoints = Checkpoints(job_dir)
        if job.input_path is None:
            raise RuntimeError(f"job {job_id} has no input")

        pre = await asyncio.to_thread(checkpoints.load_preprocessed)
        if pre is None:
            t0 = time.perf_counter()
            files = await asyncio.to_thread(read_input, Path(job.input_path))
            pre = await self.workers.preprocess(job_id, files, params)
            del files
            await asyncio.to_thread(save_frame_images, job_dir, pre.pop("thumbnails", None))
            await asyncio.to_thread(checkpoints.save_preprocessed, pre)
            timings["preprocess"] = round(time.perf_counter() - t0, 4)
            self.metrics.stage("preprocess", timings["preprocess"])
        else:
            logger.info("job_id=%s resumes after preprocessing (%d frames)", job_id, len(pre["frames"]))
        frames = pre["frames"]
        count = len(frames)
        self.metrics.frames_per_job.observe(count)
        await self._check_cancel(job_id)
        await asyncio.to_thread(
            self.store.transition, job_id, JobState.RECONSTRUCTING, expect=JobState.PREPROCESSING,
            owned_by=owner, frames=pre["reports"], input_kind=pre["kind"], warnings=pre.get("warnings", []),
            progress=PROGRESS_PREPROCESSED, timings=timings, message=f"{count} frames selected",
        )  # fmt: skip

        t1 = time.perf_counter()
        meshes = await asyncio.to_thread(checkpoints.load_meshes, count)
        if meshes:
            logger.info("job_id=%s resumes with %d/%d frames reconstructed", job_id, len(meshes), count)

        async def one(i: int) -> int:
            mesh = await self.workers.reconstruct(job_id, frames[i], params.mc_resolution)
            await asyncio.to_thread(checkpoints.save_mesh, i, mesh)
            meshes[i] = mesh
            return i

        calls = [asyncio.ensure_future(one(i)) for i in range(count) if i not in meshes]
        try:
            for call in asyncio.as_completed(calls):
                await call
                done = len(meshes)
                share = (
                    PROGRESS_PREPROCESSED + (PROGRESS_RECONSTRUCTED - PROGRESS_PREPROCESSED) * done / count
                )
                await asyncio.to_thread(
                    self.store.update, job_id, owned_by=owner, progress=share, event="progress",
                    message=f"frame {done}/{count}",
                )  # fmt: skip
        finally:
            for call in calls:
                call.cancel()
            await asyncio.gather(*calls, return_exceptions=True)  # their Serve requests are cancelled too
        timings["reconstruct"] = round(timings.get("reconstruct", 0.0) + time.perf_counter() - t1, 4)
        self.metrics.stage("reconstruct", timings["reconstruct"])
        await self._check_cancel(job_id)
        await asyncio.to_thread(
            self.store.transition, job_id, JobState.MERGING, expect=JobState.RECONSTRUCTING,
            owned_by=owner, progress=PROGRESS_RECONSTRUCTED, timings=timings,
        )  # fmt: skip

        t2 = time.perf_counter()
        warnings = pre.get("warnings", [])
        metadata = {"job_id": job_id, "params": params.to_dict(), "generator": "triposr-serve",
                    "warnings": warnings}  # fmt: skip
        out = await self.workers.export(
            job_id, [meshes[i] for i in range(count)], pre["scores"], params, metadata
        )
        timings["merge"] = round(time.perf_counter() - t2, 4)
        self.metrics.stage("merge", timings["merge"])
        timings["total"] = round(
            sum(timings.get(k, 0.0) for k in ("queue_wait", "preprocess", "reconstruct", "merge")), 4
        )
        retries = dict(self._retries.get(job_id, {}))
        report = {"fusion": out["report"], "retries": retries}
        full = job_report(job_id, frames=pre["reports"], fusion=out["report"], timings=timings, params=params,
                          warnings=warnings, retries=retries)  # fmt: skip
        result_path = await asyncio.to_thread(self._write_result, job, out["data"], full)
        await asyncio.to_thread(
            self.store.update, job_id, owned_by=owner, event="result",
            message=f"result written ({len(out['data'])} bytes)",
        )  # fmt: skip
        await asyncio.to_thread(
            self.store.transition, job_id, JobState.SUCCEEDED, expect=JobState.MERGING, owned_by=owner,
            result_path=str(result_path), report=report, timings=timings,
        )  # fmt: skip

    def _write_result(self, job: Job, data: bytes, report: dict) -> Path:
        """The job's files, each atomically: result.<fmt>, report.json, and the requested output copy."""
        job_dir = self.job_dir(job.id)
        path = write_atomic(job_dir / f"result.{job.params.format.value}", data)
        write_atomic(job_dir / "report.json", json.dumps(report, indent=1))
        if job.output_path:
            write_atomic(Path(job.output_path), data)
        return path


def read_input(path: Path) -> InputFiles:
    """The job's input as bytes for the preprocess replica: one file, or every visible file of a folder."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    else:
        files = [path]
    return [(p.name, p.read_bytes()) for p in files]
