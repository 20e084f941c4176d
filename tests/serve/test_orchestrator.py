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


class CountingWorkers(LocalWorkers):
    """The real in-process stages, counting the calls a job makes."""

    def __init__(self, model, remover) -> None:
        super().__init__(model, remover)
        self.calls = {"preprocess": 0, "reconstruct": 0, "export": 0}

    async def preprocess(self, *args, **kwargs):
        self.calls["preprocess"] += 1
        return await super().preprocess(*args, **kwargs)

    async def reconstruct(self, *args, **kwargs):
        self.calls["reconstruct"] += 1
        return await super().reconstruct(*args, **kwargs)

    async def export(self, *args, **kwargs):
        self.calls["export"] += 1
        return await super().export(*args, **kwargs)


def test_orphaned_job_resumes_from_its_checkpoints(settings, tiny_model, remover, ring_video):
    """An ingress died after preprocessing and one frame: the next runner redoes neither."""
    from pipeline.meshcodec import encode_mesh
    from pipeline.runner import preprocess_files, reconstruct_frames
    from serve_app.checkpoints import Checkpoints

    settings = settings.merged({"orphan_after_s": 0.4})
    store = JobStore(settings.db_path)
    params = JobParams(num_frames=3, mc_resolution=32)
    job, _ = store.create(params, input_path=str(ring_video), input_kind="video")
    store.claim_next("dead-ingress")
    checkpoints = Checkpoints(settings.jobs_dir / job.id)
    pre = preprocess_files([(ring_video.name, ring_video.read_bytes())], params, remover)
    checkpoints.save_preprocessed(pre)
    (mesh,) = reconstruct_frames(tiny_model, [pre["frames"][1]], [32])
    checkpoints.save_mesh(1, encode_mesh(mesh))
    workers = CountingWorkers(tiny_model, remover)

    async def scenario() -> JobState:
        orchestrator = Orchestrator(store, settings, workers)
        await orchestrator.start()
        try:
            for _ in range(600):
                await asyncio.sleep(0.1)
                if store.get(job.id).state.terminal:
                    break
        finally:
            await orchestrator.stop()
        return store.get(job.id).state

    assert asyncio.run(scenario()) == JobState.SUCCEEDED
    done = store.get(job.id)
    assert done.attempts == 2 and len(pre["frames"]) == 3
    assert workers.calls == {"preprocess": 0, "reconstruct": 2, "export": 1}
    assert (settings.jobs_dir / job.id / "result.glb").is_file()
    assert not checkpoints.dir.exists()  # removed once the job ended
    kinds = [e["kind"] for e in store.events_since(job.id)]
    assert kinds.count("result") == 1
