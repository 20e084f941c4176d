"""Custom capacity metrics (names fixed in notes/CONTRACTS.md), exported through Ray's metrics agent.

Prometheus shows them with a `ray_` prefix, Serve tags (deployment, replica, application) added by
`ray.serve.metrics`. Without a running Ray (unit tests with Starlette's TestClient, the CLI's local mode)
every call is a no-op, so callers never check.
"""

from __future__ import annotations

import logging

from deployments.metrics import Noop, ray_running

logger = logging.getLogger(__name__)

STAGES = ("queue_wait", "preprocess", "reconstruct", "merge")
SECONDS_BOUNDARIES = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000]
FRAME_BOUNDARIES = [1, 2, 4, 8, 12, 16, 24, 32]


class ServiceMetrics:
    """The ingress-side metrics: job outcomes, stage latency, frames per job, queue gauges, upload bytes."""

    def __init__(self) -> None:
        if not ray_running():
            noop = Noop()
            self.jobs_total = self.stage_seconds = self.frames_per_job = noop
            self.jobs_queued = self.jobs_running = self.upload_bytes_total = noop
            self.stage_retries_total = noop
            return
        from ray.serve import metrics as m

        self.jobs_total = m.Counter(
            "triposr_jobs_total", description="Jobs reaching a terminal state.", tag_keys=("state",)
        )
        self.stage_seconds = m.Histogram(
            "triposr_stage_seconds",
            description="Stage latency in seconds (queue_wait, preprocess, reconstruct, merge).",
            boundaries=SECONDS_BOUNDARIES,
            tag_keys=("stage",),
        )
        self.frames_per_job = m.Histogram(
            "triposr_frames_per_job", description="Frames sent to reconstruction per job.",
            boundaries=FRAME_BOUNDARIES,
        )  # fmt: skip
        self.jobs_queued = m.Gauge("triposr_jobs_queued", description="Jobs waiting in the queue.")
        self.jobs_running = m.Gauge("triposr_jobs_running", description="Jobs being orchestrated now.")
        self.upload_bytes_total = m.Counter(
            "triposr_upload_bytes_total", description="Bytes received in uploads."
        )
        self.stage_retries_total = m.Counter(
            "triposr_stage_retries_total", description="Stage calls retried after a lost replica.",
            tag_keys=("stage",),
        )  # fmt: skip

    def job_finished(self, state: str) -> None:
        self.jobs_total.inc(1, tags={"state": state})

    def stage(self, stage: str, seconds: float) -> None:
        self.stage_seconds.observe(max(seconds, 0.0), tags={"stage": stage})

    def retried(self, stage: str) -> None:
        self.stage_retries_total.inc(1, tags={"stage": stage})

    def queue(self, queued: int, running: int) -> None:
        self.jobs_queued.set(queued)
        self.jobs_running.set(running)
