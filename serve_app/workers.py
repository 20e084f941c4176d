"""The stage interface every job driver runs against (`Workers`), its engines, and the retry policy around it.

- `ServeWorkers`: the three deployments through Serve handles. Values travel, paths stay home: the input goes
  out as bytes, frames and per-frame meshes as numpy arrays (object store), the result comes back as bytes.
  A cancelled caller cancels the Serve request (`DeploymentResponse.cancel()`), which reaches the replica as
  asyncio cancellation and stops its thread work between frames (deployments/cancel.py).
- `LocalWorkers`: the same stage functions in this process (Starlette tests, small hosts).
- `RetryingWorkers`: a stage call lost to a dead or unreachable replica is retried with backoff, on whatever
  replica Serve routes it to. Retries go through one lane per stage (one retried call in flight at a time,
  per ingress replica) and a reconstruct retry runs its frame unbatched (`Reconstruct.single`): a frame that
  kills its replica dies alone on the retry, so frames of other jobs lost with it are lost at most once.
  After `attempts` lost calls the job fails with `worker_crashed` and a sentence for the user; the Ray error
  (pid, IP, actor id) stays in the log.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from pipeline.meshcodec import MeshArrays
from pipeline.params import CompareParams, JobParams
from pipeline.runner import InputFiles
from serve_app.capacity import WORKER_DEPLOYMENTS
from serve_app.errors import WorkerCrashed
from serve_app.health import DeploymentProblem, deployment_problems

logger = logging.getLogger(__name__)

T = TypeVar("T")


STATUS_TTL_S = 2.0  # how stale the ingress's view of the worker deployments may be


class Workers(Protocol):
    async def unavailable(self) -> list[DeploymentProblem]:
        """Worker deployments that cannot take work now (for /readyz and submissions)."""

    async def compare(
        self, job_id: str, reference: bytes, candidate: bytes, params: CompareParams
    ) -> dict[str, Any]:
        """Two mesh files' bytes -> {glb: bytes, report: dict, chart: bytes} (a compare job's one stage)."""

    async def preprocess(self, job_id: str, files: InputFiles, params: JobParams) -> dict[str, Any]:
        """-> {frames: uint8 (N, 512, 512, 3), scores: [N], reports: [dict], kind: str}"""

    async def reconstruct(
        self, job_id: str, frame: Any, mc_resolution: int, *, alone: bool = False
    ) -> MeshArrays:
        """One frame uint8 (512, 512, 3) -> its mesh (pipeline.meshcodec arrays)."""

    async def export(
        self, job_id: str, meshes: list[MeshArrays], scores: list[float] | None, params: JobParams,
        metadata: dict[str, Any],
    ) -> dict[str, Any]:  # fmt: skip
        """-> {data: bytes (the result file), report: dict (fusion report)}"""


async def _serve_call(response: Any) -> Any:
    """Await a DeploymentResponse; if the awaiting task is cancelled, cancel the request on the replica too
    (awaiting alone does not: Serve's `__await__` only re-raises)."""
    try:
        return await response
    except asyncio.CancelledError:
        response.cancel()
        raise


class ServeWorkers:
    """Stage calls through Serve deployment handles."""

    def __init__(self, preprocess: Any, reconstruct: Any, export: Any) -> None:
        self._preprocess, self._reconstruct, self._export = preprocess, reconstruct, export
        self._problems: tuple[float, list[DeploymentProblem]] = (-STATUS_TTL_S, [])
        self._refresh = asyncio.Lock()

    async def unavailable(self) -> list[DeploymentProblem]:
        """Worker deployments that are not running now, from Serve's status (read at most every 2 s, by one
        caller: a burst of submissions waits for one controller call instead of each making its own)."""
        async with self._refresh:
            at, problems = self._problems
            if time.monotonic() - at >= STATUS_TTL_S:
                problems = await asyncio.to_thread(_serve_problems)
                self._problems = (time.monotonic(), problems)
        return problems

    async def compare(
        self, job_id: str, reference: bytes, candidate: bytes, params: CompareParams
    ) -> dict[str, Any]:
        # on the Export deployment's CPU replicas: the same kind of mesh work as fusion, no new deployment
        return await _serve_call(self._export.compare.remote(job_id, reference, candidate, params.to_dict()))

    async def preprocess(self, job_id: str, files: InputFiles, params: JobParams) -> dict[str, Any]:
        return await _serve_call(self._preprocess.remote(job_id, files, params.to_dict()))

    async def reconstruct(
        self, job_id: str, frame: Any, mc_resolution: int, *, alone: bool = False
    ) -> MeshArrays:
        handle = self._reconstruct.single if alone else self._reconstruct
        return await _serve_call(handle.remote(job_id, frame, mc_resolution))

    async def export(
        self, job_id: str, meshes: list[MeshArrays], scores: list[float] | None, params: JobParams,
        metadata: dict[str, Any],
    ) -> dict[str, Any]:  # fmt: skip
        return await _serve_call(self._export.remote(job_id, meshes, scores, params.to_dict(), metadata))


def _serve_problems() -> list[DeploymentProblem]:
    from ray import serve

    app_name = serve.get_replica_context().app_name
    return deployment_problems(serve.status().applications.get(app_name), WORKER_DEPLOYMENTS)


class LocalWorkers:
    """The same stage functions in this process, one frame at a time behind a lock."""

    def __init__(self, model: Any, remover: Any) -> None:
        self.model, self.remover = model, remover
        self._lock = asyncio.Lock()

    async def unavailable(self) -> list[DeploymentProblem]:
        return []  # built in this process: running, or it would not exist

    async def compare(
        self, job_id: str, reference: bytes, candidate: bytes, params: CompareParams
    ) -> dict[str, Any]:
        from pipeline.compare_export import compare_payload

        return await asyncio.to_thread(
            compare_payload, reference, candidate, object_size_m=params.object_size_m,
            threshold_mm=params.threshold_mm,
        )  # fmt: skip

    async def preprocess(self, job_id: str, files: InputFiles, params: JobParams) -> dict[str, Any]:
        from deployments.cancel import run_stoppable
        from pipeline.runner import preprocess_files

        return await run_stoppable(preprocess_files, files, params, self.remover)

    async def reconstruct(
        self, job_id: str, frame: Any, mc_resolution: int, *, alone: bool = False
    ) -> MeshArrays:
        from pipeline.meshcodec import encode_mesh
        from pipeline.runner import reconstruct_frames

        async with self._lock:
            (mesh,) = await asyncio.to_thread(reconstruct_frames, self.model, [frame], [mc_resolution])
        assert mesh is not None  # nothing skips frames here
        return encode_mesh(mesh)

    async def export(
        self, job_id: str, meshes: list[MeshArrays], scores: list[float] | None, params: JobParams,
        metadata: dict[str, Any],
    ) -> dict[str, Any]:  # fmt: skip
        from pipeline.runner import merge_arrays

        return await asyncio.to_thread(merge_arrays, meshes, scores, params, metadata=metadata, job_id=job_id)


def is_lost_call(exc: BaseException) -> bool:
    """Whether `exc` (or what it wraps) says the call's replica or node went away, not that the work failed.

    Ray 2.60 raises ActorDiedError / ActorUnavailableError (both RayActorError) for a replica killed or cut
    off mid-call, WorkerCrashedError / NodeDiedError / LocalRayletDiedError when its process or node is lost,
    ObjectLostError (OwnerDiedError...) when an argument or result died with it, Serve's
    ReplicaUnavailableError when the chosen replica is gone, and a RayServeException whose cause is an
    ActorDiedError when an upstream dependency died (serve/_private/router.py).
    """
    from ray import exceptions as rex
    from ray.serve.exceptions import ReplicaUnavailableError

    lost = (rex.RayActorError, rex.WorkerCrashedError, rex.NodeDiedError, rex.LocalRayletDiedError,
            rex.ObjectLostError, ReplicaUnavailableError)  # fmt: skip
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, lost):
            return True
        if isinstance(current, rex.RayTaskError) and not isinstance(current, lost):
            cause = getattr(current, "cause", None)
            current = cause if isinstance(cause, BaseException) else current.__cause__
        else:
            current = current.__cause__
    return False


@dataclass(frozen=True)
class RetryPolicy:
    """At most `attempts` tries per stage call, sleeping base * 2^(n-1) (capped, with jitter) in between."""

    attempts: int = 3
    base_delay_s: float = 0.5
    max_delay_s: float = 8.0

    def delay_s(self, failed_attempts: int) -> float:
        return min(self.max_delay_s, self.base_delay_s * 2 ** (failed_attempts - 1)) * random.uniform(0.5, 1)


OnRetry = Callable[[str, str, int], Awaitable[None]]  # (job_id, stage, failed attempt number)

STAGE_WORDS = {
    "preprocess": "frame preparation", "reconstruct": "3D reconstruction", "export": "mesh fusion",
    "compare": "mesh comparison",
}  # fmt: skip


class RetryingWorkers:
    """`Workers` whose calls survive lost replicas (see the module docstring)."""

    def __init__(self, workers: Workers, policy: RetryPolicy, on_retry: OnRetry | None = None) -> None:
        self.workers, self.policy, self.on_retry = workers, policy, on_retry
        self._lanes: dict[str, asyncio.Semaphore] = {}

    async def unavailable(self) -> list[DeploymentProblem]:
        return await self.workers.unavailable()

    async def _call(self, job_id: str, stage: str, call: Callable[[int], Awaitable[T]]) -> T:
        for attempt in range(1, self.policy.attempts + 1):
            try:
                if attempt == 1:
                    return await call(attempt)
                async with self._lanes.setdefault(stage, asyncio.Semaphore(1)):
                    return await call(attempt)
            except Exception as exc:
                if not is_lost_call(exc):
                    raise
                logger.warning(
                    "job_id=%s %s call lost (attempt %d/%d): %r",
                    job_id, stage, attempt, self.policy.attempts, exc,
                )  # fmt: skip
                if attempt == self.policy.attempts:
                    raise WorkerCrashed(
                        f"the {STAGE_WORDS.get(stage, stage)} worker stopped {attempt} times while working "
                        "on this job, so it was given up: its input probably crashes the worker (try other "
                        "photos or another video); if the service was being restarted, submit it again"
                    ) from None
                if self.on_retry is not None:
                    await self.on_retry(job_id, stage, attempt)
                await asyncio.sleep(self.policy.delay_s(attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    async def compare(
        self, job_id: str, reference: bytes, candidate: bytes, params: CompareParams
    ) -> dict[str, Any]:
        return await self._call(
            job_id, "compare", lambda n: self.workers.compare(job_id, reference, candidate, params)
        )

    async def preprocess(self, job_id: str, files: InputFiles, params: JobParams) -> dict[str, Any]:
        return await self._call(
            job_id, "preprocess", lambda n: self.workers.preprocess(job_id, files, params)
        )

    async def reconstruct(
        self, job_id: str, frame: Any, mc_resolution: int, *, alone: bool = False
    ) -> MeshArrays:
        return await self._call(
            job_id, "reconstruct",
            lambda n: self.workers.reconstruct(job_id, frame, mc_resolution, alone=alone or n > 1),
        )  # fmt: skip

    async def export(
        self, job_id: str, meshes: list[MeshArrays], scores: list[float] | None, params: JobParams,
        metadata: dict[str, Any],
    ) -> dict[str, Any]:  # fmt: skip
        return await self._call(
            job_id, "export", lambda n: self.workers.export(job_id, meshes, scores, params, metadata)
        )
