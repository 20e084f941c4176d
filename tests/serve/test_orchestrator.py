"""Orchestrator edge cases that HTTP timing cannot reach deterministically."""

from __future__ import annotations

import asyncio

from pipeline.params import JobParams
from serve_app.jobs import JobState, JobStore
from serve_app.orchestrator import LocalWorkers, Orchestrator


def test_job_cancelled_before_its_task_starts_still_ends_cancelled(settings, tiny_model, remover, ring_video):
    """A DELETE between the dispatcher's claim and the task's first step must not strand the job."""

    async def scenario() -> JobState:
        store = JobStore(settings.db_path)
        orchestrator = Orchestrator(store, settings, LocalWorkers(tiny_model, remover))
        job, _ = store.create(JobParams(num_frames=2, mc_resolution=32), input_path=str(ring_video),
                              input_kind="video")  # fmt: skip
        claimed = store.claim_next(orchestrator.owner)
        assert claimed is not None and claimed.state == JobState.PREPROCESSING
        store.request_cancel(job.id)
        orchestrator._spawn(claimed)
        orchestrator.running[job.id].cancel()  # before run_job's first step: its handler never runs
        for _ in range(200):
            await asyncio.sleep(0.05)
            state = store.get(job.id).state
            if state.terminal:
                return state
        return store.get(job.id).state

    assert asyncio.run(scenario()) == JobState.CANCELLED
